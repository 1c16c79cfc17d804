"""Resilience for delegations: tenacity retries, a circuit breaker per target, fallback agents."""

from kosmos_grpc.resilience.breaker import BreakerPolicy, CircuitBreaker, CircuitState
from kosmos_grpc.resilience.fallback import Resilience
from kosmos_grpc.resilience.policy import ResiliencePolicy
from kosmos_grpc.resilience.retry import RetryPolicy, is_retryable, wait_server_hint

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitState",
    "Resilience",
    "ResiliencePolicy",
    "RetryPolicy",
    "is_retryable",
    "wait_server_hint",
]
