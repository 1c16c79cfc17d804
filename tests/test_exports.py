"""The public API: one sorted, complete ``__all__``."""

from __future__ import annotations

import kosmos_grpc


def test_all_is_sorted_and_every_name_resolves() -> None:
    def isort_style(name: str) -> tuple[int, str]:  # ruff's RUF022 order: CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert kosmos_grpc.__all__ == sorted(kosmos_grpc.__all__, key=isort_style)
    for name in kosmos_grpc.__all__:
        assert hasattr(kosmos_grpc, name), name


PUBLIC = [
    "AGENT_SERVICE",
    "DEFAULT_PAYLOAD_LIMIT",
    "DEFAULT_TTL_MS",
    "ActionFailed",
    "ActionInfo",
    "ActionNotFound",
    "ActionSpec",
    "Agent",
    "AgentCard",
    "AgentConfig",
    "AgentMessage",
    "AgentNotFound",
    "AgentServer",
    "AgentUnavailable",
    "BreakerPolicy",
    "BusConfig",
    "Call",
    "CallScope",
    "Cancelled",
    "Chunk",
    "CircuitBreaker",
    "CircuitInfo",
    "CircuitOpen",
    "CircuitState",
    "ConfigError",
    "Context",
    "Coordinator",
    "DeadlineExceeded",
    "Delegation",
    "DependencyUnavailable",
    "DuplicateMessage",
    "Envelope",
    "Idempotency",
    "InboundInterceptor",
    "InterceptorsConfig",
    "InvalidEnvelope",
    "KosmosError",
    "MeshConfig",
    "MeshLimits",
    "OpenStream",
    "OutboundInterceptor",
    "PayloadTooLarge",
    "Priority",
    "Registry",
    "Replies",
    "Resilience",
    "ResiliencePolicy",
    "ResourceExhausted",
    "Response",
    "RetryPolicy",
    "Saga",
    "SagaFailed",
    "SagaResult",
    "SagaStep",
    "ScatterResult",
    "ScopedClient",
    "ServedCall",
    "ServerSettings",
    "Step",
    "StreamBroken",
    "TelemetryConfig",
    "WrongCallKind",
    "action",
    "configure_logging",
    "configure_tracing",
    "from_rpc_error",
    "load_agent",
    "load_config",
    "new_message",
    "parallel",
    "scatter_gather",
    "sequential",
    "serve_forever",
    "validate_and_fill",
]


def test_the_public_api_is_exactly_this() -> None:
    assert kosmos_grpc.__all__ == PUBLIC


def test_every_public_error_is_exported() -> None:
    from kosmos_grpc import errors

    public = {n for n in errors.__all__ if n[0].isupper() and isinstance(getattr(errors, n), type)}
    assert public <= set(kosmos_grpc.__all__)
