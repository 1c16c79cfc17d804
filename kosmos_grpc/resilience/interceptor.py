"""The client interceptor every delegation goes through: fallbacks, then a breaker and retries per target."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, TypeVar

import grpc

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
        """Run ``attempt(target)`` for ``agent``, then for its fallbacks while it is unavailable."""
        chain = self.policy.chain(agent)
        for index, target in enumerate(chain):
            try:
                return await self._guarded(target, attempt, deadline)
            except KosmosError as exc:
                if index + 1 == len(chain) or not _falls_back(exc):
                    raise
                log.warning("%s: %s; falling back to %s", self.source, exc, chain[index + 1])
        raise AssertionError("unreachable: a chain has at least its own agent")  # pragma: no cover

    async def _guarded(self, target: str, attempt: Callable[[str], Awaitable[T]], deadline: float | None) -> T:
        breaker = self.breaker(target)

        async def once() -> T:
            breaker.enter()
            try:
                result = await attempt(target)
            except KosmosError as exc:
                breaker.failed(exc.code)
                raise
            except asyncio.CancelledError:
                breaker.abandoned()
                raise
            breaker.succeeded()
            return result

        return await self.policy.retry_for(target).call(once, deadline)


def _falls_back(error: KosmosError) -> bool:
    """Whether another agent should answer: the target is down, or its circuit is open."""
    return isinstance(error, CircuitOpen) or error.code == grpc.StatusCode.UNAVAILABLE
