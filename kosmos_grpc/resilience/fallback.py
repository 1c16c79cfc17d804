"""One caller's resilience: fallbacks, then a circuit breaker and retries per target agent."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import grpc

from kosmos_grpc.deadlines import time_left
from kosmos_grpc.errors import ADDRESS, ATTEMPT_TIMEOUT, CAUSE, NOT_RUNNING, REFUSED, CircuitOpen, KosmosError
from kosmos_grpc.resilience.breaker import CircuitBreaker
from kosmos_grpc.resilience.policy import ResiliencePolicy
from kosmos_grpc.telemetry.bursts import BurstLog
from kosmos_grpc.telemetry.metrics import FALLBACKS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeAlias

    #: What hears of a fallback: the agent that failed, how, and the agent tried in its place.
    FellBack: TypeAlias = Callable[[str, KosmosError, str], None]

__all__ = ["Resilience"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Resilience:
    """One caller's resilience: its policy, and a circuit breaker per target agent.

    A call goes to its target through the target's breaker, retried as the target's policy
    says; the breaker counts the call once, however many attempts it took. Each attempt ends
    before the caller's deadline (:meth:`attempt_deadline`), so a stalled target is counted.
    When the target is unavailable, its circuit is open or its attempt timed out, the call
    goes to the next agent of its fallback chain
    (which never loops), counted in ``kosmos_fallbacks_total``; when every agent of the chain
    fails so, the error is the asked agent's, naming each fallback tried. A fallback that answers
    is logged as a WARNING once per burst (then with a count of the others, at most every 30 s on ``clock``).
    """

    def __init__(
        self,
        policy: ResiliencePolicy | None = None,
        *,
        source: str = "client",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or ResiliencePolicy()
        self.source = source
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._chains: dict[str, list[str]] = {}
        self._answered = BurstLog(log, clock=clock)

    def breaker(self, agent: str) -> CircuitBreaker:
        """The breaker of calls to ``agent``, made on first use."""
        breaker = self._breakers.get(agent)
        if breaker is None:
            breaker = CircuitBreaker(agent, self.policy.breaker_for(agent), source=self.source, clock=self.clock)
            self._breakers[agent] = breaker
        return breaker

    def attempt_deadline(self, agent: str, target: str, deadline: float) -> float:
        """When an attempt to ``target`` (``agent`` or one of its fallbacks) must end, on
        ``time.monotonic``'s clock: before ``deadline``, leaving time for the fallback that follows
        (see :meth:`ResiliencePolicy.attempt_seconds`)."""
        chain = self._chains.get(agent)
        if chain is None:
            chain = self._chains[agent] = self.policy.chain(agent)
        now = time.monotonic()
        return now + self.policy.attempt_seconds(target, deadline - now, falls_back=chain[-1] != target)

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every breaker made so far, by target agent."""
        return dict(self._breakers)

    async def call(
        self,
        agent: str,
        attempt: Callable[[str], Awaitable[T]],
        deadline: float | None,
        fell_back: FellBack | None = None,
    ) -> T:
        """Run ``attempt(target)`` for ``agent``, then for its fallbacks while it is unavailable.

        ``deadline`` is on ``time.monotonic``'s clock; no attempt starts past it. ``fell_back``
        hears of each fallback (the target, its failure, the fallback) before the fallback is
        tried. A call that succeeds at once goes through this coroutine and :meth:`_through`
        only: it is every call's cost.
        """
        chain = self._chains.get(agent)
        if chain is None:
            chain = self._chains[agent] = self.policy.chain(agent)
        tried: list[tuple[str, KosmosError]] = []
        for index, target in enumerate(chain):
            try:
                result = await self._through(target, attempt, deadline)
            except _PassedOn as passed:
                # The target answered, with the failure of an agent it called: that agent's
                # breaker and retries (in the target) have had their say already.
                raise passed.error from None
            except KosmosError as exc:
                if index + 1 == len(chain) or not _falls_back(exc):
                    raise (_told(tried, target, exc) if tried else exc) from None
                tried.append((target, exc))
                following = chain[index + 1]
                FALLBACKS.labels(self.source, target, following).inc()
                log.debug("%s: %s; falling back to %s", self.source, exc, following)
                if fell_back is not None:
                    fell_back(target, exc, following)
            else:
                if tried:  # a fallback answered: said once per burst (a call that fails says it all itself)
                    failed, why = tried[0]
                    self._answered.warn(
                        f"{failed} > {target}", "%s: %s answered for %s (%s)", self.source, target, failed, _why(why)
                    )
                return result
        raise AssertionError("unreachable: a chain has at least its own agent")  # pragma: no cover

    async def _through(self, target: str, attempt: Callable[[str], Awaitable[T]], deadline: float | None) -> T:
        """One call to ``target``, its retries included, through its breaker, which learns how the
        call went once: a retry is part of the call, not another call (nor another failure)."""
        if deadline is not None:
            # Our own deadline, not the target's failure: checked before the breaker sees a call.
            time_left(deadline, target)
        breaker = self._breakers.get(target) or self.breaker(target)
        breaker.enter()
        try:
            try:
                result = await attempt(target)
            except KosmosError as exc:
                if exc.origin is not None and exc.origin != target:
                    raise _PassedOn(exc) from None
                retry = self.policy.retry_for(target)
                if retry.attempts == 1 or not exc.retryable:
                    raise
                result = await retry.after(exc, partial(_attempt, target, attempt), deadline)
        except _PassedOn:
            breaker.succeeded()  # the target answered
            raise
        except KosmosError as exc:
            breaker.failed(exc.code)
            raise
        except BaseException:
            breaker.abandoned()  # no outcome (cancelled, or a fault of ours): free a probe slot
            raise
        breaker.succeeded()
        return result


async def _attempt(target: str, attempt: Callable[[str], Awaitable[T]]) -> T:
    """One attempt; a failure the target passed on from an agent it called is told apart."""
    try:
        return await attempt(target)
    except KosmosError as exc:
        origin = exc.origin
        if origin is None or origin == target:
            raise
        raise _PassedOn(exc) from None


class _PassedOn(Exception):
    """A failure the target passed on from an agent it called: neither retried nor a reason to fall back."""

    def __init__(self, error: KosmosError) -> None:
        super().__init__(str(error))
        self.error = error


def _falls_back(error: KosmosError) -> bool:
    """Whether another agent should answer: the target is down, its circuit is open, or it did
    not answer within its attempt's timeout (stalled) while the caller still has time."""
    code = error.code
    return (
        code == grpc.StatusCode.UNAVAILABLE
        or isinstance(error, CircuitOpen)
        or (code == grpc.StatusCode.DEADLINE_EXCEEDED and error.metadata.get(CAUSE) == ATTEMPT_TIMEOUT)
    )


def _told(tried: list[tuple[str, KosmosError]], fallback: str, error: KosmosError) -> KosmosError:
    """The error of a call whose agent, and then its fallbacks, failed, naming the agent asked.

    ``tried``: the agent asked and the fallbacks before ``fallback``, with how each failed;
    ``error``: how ``fallback``, the last one tried, failed. When it was unavailable too, the
    error is the asked agent's (its status, its ErrorInfo), told of every fallback tried;
    otherwise it is the fallback's own, told of the agent asked.
    """
    first, others = tried[0][1], [*tried[1:], (fallback, error)]
    head = first.message.removesuffix(NOT_RUNNING)
    if not _falls_back(error):
        told = error
        message = f"{head}; then its fallback {fallback!r}: {error.message}"
    else:
        told = first
        told.metadata.setdefault("fallback", others[0][0])
        said, whose = [], "its"
        for name, each in others:  # a chain's fallbacks, each the one before's
            said.append(f"{whose} fallback {name!r} too ({_why(each)})")
            whose = f"and {name}'s"
        refused = any(each.metadata.get(CAUSE) == REFUSED for _, each in [*tried, (fallback, error)])
        message = f"{head}; {'; '.join(said)}{NOT_RUNNING if refused else ''}"
    told.message = message
    told.args = (message,)
    return told


def _why(error: KosmosError) -> str:
    """How a fallback failed, briefly: where it was and why, when the transport said so."""
    address, cause = error.metadata.get(ADDRESS), error.metadata.get(CAUSE)
    if address and cause:
        return f"{address}, {cause}"
    if isinstance(error, CircuitOpen):
        return f"its circuit is open, for {error.retry_after or 0:.1f} s more"
    return error.message.removesuffix(NOT_RUNNING)
