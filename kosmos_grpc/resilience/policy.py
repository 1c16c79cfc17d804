"""What the config says about resilience: retry and breaker policies per target agent, and fallbacks."""

from __future__ import annotations

from dataclasses import dataclass, field

from kosmos_grpc.resilience.breaker import BreakerPolicy
from kosmos_grpc.resilience.retry import RetryPolicy

__all__ = ["FALLBACK_SHARE", "LAST_SHARE", "ResiliencePolicy"]

#: The share of the caller's time left that one attempt may take: half when a fallback follows
#: (which then has as long), 95% for the last agent of a chain, so that even then the attempt's
#: own DEADLINE_EXCEEDED reaches its breaker before the caller's deadline cancels the caller.
FALLBACK_SHARE = 0.5
LAST_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """Mesh-wide defaults, per-agent overrides and each agent's fallback."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    retries: dict[str, RetryPolicy] = field(default_factory=dict)
    breakers: dict[str, BreakerPolicy] = field(default_factory=dict)
    #: agent -> the agent that answers in its place when it is unavailable or its circuit is open.
    fallbacks: dict[str, str] = field(default_factory=dict)

    def retry_for(self, agent: str) -> RetryPolicy:
        """How calls to ``agent`` are retried."""
        return self.retries.get(agent, self.retry)

    def breaker_for(self, agent: str) -> BreakerPolicy:
        """When the circuit to ``agent`` opens and recovers."""
        return self.breakers.get(agent, self.breaker)

    def attempt_seconds(self, target: str, left: float, *, falls_back: bool) -> float:
        """How long one attempt to ``target`` may take when the call has ``left`` seconds: a share
        of them (:data:`FALLBACK_SHARE` when ``falls_back``, else :data:`LAST_SHARE`), and no more
        than the target's ``attempt_timeout``.

        A callee that stalls (a frozen process) is thus cut off by its caller's own timer: the
        failure is counted by its breaker, and its fallback still has time to answer.
        """
        seconds = left * (FALLBACK_SHARE if falls_back else LAST_SHARE)
        limit = self.retries.get(target, self.retry).attempt_timeout
        return seconds if limit is None or limit >= seconds else limit

    def chain(self, agent: str) -> list[str]:
        """``agent`` and then its fallbacks in order, each at most once: a cycle in the config ends the chain."""
        chain = [agent]
        following = self.fallbacks.get(agent)
        while following is not None and following not in chain:
            chain.append(following)
            following = self.fallbacks.get(following)
        return chain
