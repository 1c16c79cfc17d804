"""One caller's resilience: fallbacks, then a circuit breaker and retries per target agent."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import grpc

from kosmos_grpc.deadlines import time_left
from kosmos_grpc.errors import CircuitOpen, KosmosError
from kosmos_grpc.resilience.breaker import CircuitBreaker
from kosmos_grpc.resilience.policy import ResiliencePolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Resilience"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Resilience:
    """One caller's resilience: its policy, and a circuit breaker per target agent.

    A call goes to its target, each attempt through the target's breaker, retried as the
    target's policy says. When the target is unavailable or its circuit is open, the call goes
    to the next agent of its fallback chain (which never loops).
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

    def breaker(self, agent: str) -> CircuitBreaker:
        """The breaker of calls to ``agent``, made on first use."""
        breaker = self._breakers.get(agent)
        if breaker is None:
            breaker = CircuitBreaker(agent, self.policy.breaker_for(agent), source=self.source, clock=self.clock)
            self._breakers[agent] = breaker
        return breaker

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every breaker made so far, by target agent."""
        return dict(self._breakers)

    async def call(self, agent: str, attempt: Callable[[str], Awaitable[T]], deadline: float | None) -> T:
        """Run ``attempt(target)`` for ``agent``, then for its fallbacks while it is unavailable.

        ``deadline`` is on ``time.monotonic``'s clock; no attempt starts past it. A call that
        succeeds at once goes through this coroutine and :meth:`_once` only: it is every call's cost.
        """
        chain = self._chains.get(agent)
        if chain is None:
            chain = self._chains[agent] = self.policy.chain(agent)
        for index, target in enumerate(chain):
            try:
                try:
                    return await self._once(target, attempt, deadline)
                except KosmosError as exc:
                    retry = self.policy.retry_for(target)
                    if retry.attempts == 1 or not exc.retryable:
                        raise
                    return await retry.after(exc, partial(self._once, target, attempt, deadline), deadline)
            except _PassedOn as passed:
                # The target answered, with the failure of an agent it called: that agent's
                # breaker and retries (in the target) have had their say already.
                raise passed.error from None
            except KosmosError as exc:
                if index + 1 == len(chain) or not _falls_back(exc):
                    raise
                log.warning("%s: %s; falling back to %s", self.source, exc, chain[index + 1])
        raise AssertionError("unreachable: a chain has at least its own agent")  # pragma: no cover

    async def _once(self, target: str, attempt: Callable[[str], Awaitable[T]], deadline: float | None) -> T:
        """One attempt through the target's breaker, which learns how it went."""
        if deadline is not None:
            # Our own deadline, not the target's failure: checked before the breaker sees a call.
            time_left(deadline, target)
        breaker = self._breakers.get(target) or self.breaker(target)
        breaker.enter()
        try:
            result = await attempt(target)
        except KosmosError as exc:
            origin = exc.origin
            if origin is None or origin == target:
                breaker.failed(exc.code)
                raise
            breaker.succeeded()
            raise _PassedOn(exc) from None
        except BaseException:
            breaker.abandoned()  # no outcome (cancelled, or a fault of ours): free a probe slot
            raise
        breaker.succeeded()
        return result


class _PassedOn(Exception):
    """A failure the target passed on from an agent it called: neither retried nor a reason to fall back."""

    def __init__(self, error: KosmosError) -> None:
        super().__init__(str(error))
        self.error = error


def _falls_back(error: KosmosError) -> bool:
    """Whether another agent should answer: the target is down, or its circuit is open."""
    return isinstance(error, CircuitOpen) or error.code == grpc.StatusCode.UNAVAILABLE
