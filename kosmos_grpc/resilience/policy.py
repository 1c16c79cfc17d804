"""What the config says about resilience: retry and breaker policies per target agent, and fallbacks."""

from __future__ import annotations

from dataclasses import dataclass, field

from kosmos_grpc.resilience.breaker import BreakerPolicy
from kosmos_grpc.resilience.retry import RetryPolicy

__all__ = ["ResiliencePolicy"]


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

    def chain(self, agent: str) -> list[str]:
        """``agent`` and then its fallbacks in order, each at most once: a cycle in the config ends the chain."""
        chain = [agent]
        following = self.fallbacks.get(agent)
        while following is not None and following not in chain:
            chain.append(following)
            following = self.fallbacks.get(following)
        return chain
