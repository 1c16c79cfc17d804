"""KOSMOS: a gRPC service mesh for multi-agent systems.

Agents are gRPC servers speaking one generic ``kosmos.v1.AgentService``; a :class:`Coordinator`
delegates to them by name under deadlines, and streams their answers chunk by chunk.

Every name is imported on first use (PEP 562), so ``import kosmos_grpc`` costs nothing and a
command such as ``kosmos --help`` loads neither grpc nor OpenTelemetry; type checkers and editors
read the names from the ``TYPE_CHECKING`` block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kosmos_grpc._lazy import lazy_names

if TYPE_CHECKING:
    from kosmos_grpc.agent import ActionSpec, Agent, action, load_agent
    from kosmos_grpc.calls import ActionInfo, AgentCard, CallScope, Chunk, CircuitInfo, Envelope, Response
    from kosmos_grpc.client import Coordinator, ScopedClient
    from kosmos_grpc.config import (
        AgentConfig,
        BusConfig,
        Idempotency,
        InterceptorsConfig,
        MeshConfig,
        MeshLimits,
        ServerSettings,
        TelemetryConfig,
        load_config,
    )
    from kosmos_grpc.context import Context
    from kosmos_grpc.envelope import (
        DEFAULT_PAYLOAD_LIMIT,
        DEFAULT_TTL_MS,
        AgentMessage,
        Priority,
        new_message,
        validate_and_fill,
    )
    from kosmos_grpc.errors import (
        ActionFailed,
        ActionNotFound,
        AgentNotFound,
        AgentUnavailable,
        Cancelled,
        CircuitOpen,
        ConfigError,
        DeadlineExceeded,
        DelegationLoop,
        DependencyUnavailable,
        DuplicateMessage,
        InvalidEnvelope,
        KosmosError,
        PayloadTooLarge,
        ResourceExhausted,
        SagaFailed,
        StreamBroken,
        WrongCallKind,
        from_rpc_error,
    )
    from kosmos_grpc.interceptors.inbound import InboundInterceptor, ServedCall
    from kosmos_grpc.interceptors.outbound import Delegation, OpenStream, OutboundInterceptor, Replies
    from kosmos_grpc.patterns import (
        Call,
        Saga,
        SagaResult,
        SagaStep,
        ScatterResult,
        Step,
        parallel,
        scatter_gather,
        sequential,
    )
    from kosmos_grpc.registry import Registry
    from kosmos_grpc.resilience import (
        BreakerPolicy,
        CircuitBreaker,
        CircuitState,
        Resilience,
        ResiliencePolicy,
        RetryPolicy,
    )
    from kosmos_grpc.server import AGENT_SERVICE, AgentServer, serve_forever
    from kosmos_grpc.telemetry.logs import configure_logging
    from kosmos_grpc.telemetry.tracing import configure_tracing

__all__ = [
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
    "DelegationLoop",
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

# Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    "AGENT_SERVICE": "kosmos_grpc.server",
    "DEFAULT_PAYLOAD_LIMIT": "kosmos_grpc.envelope",
    "DEFAULT_TTL_MS": "kosmos_grpc.envelope",
    "ActionFailed": "kosmos_grpc.errors",
    "ActionInfo": "kosmos_grpc.calls",
    "ActionNotFound": "kosmos_grpc.errors",
    "ActionSpec": "kosmos_grpc.agent",
    "Agent": "kosmos_grpc.agent",
    "AgentCard": "kosmos_grpc.calls",
    "AgentConfig": "kosmos_grpc.config",
    "AgentMessage": "kosmos_grpc.envelope",
    "AgentNotFound": "kosmos_grpc.errors",
    "AgentServer": "kosmos_grpc.server",
    "AgentUnavailable": "kosmos_grpc.errors",
    "BreakerPolicy": "kosmos_grpc.resilience",
    "BusConfig": "kosmos_grpc.config",
    "Call": "kosmos_grpc.patterns",
    "CallScope": "kosmos_grpc.calls",
    "Cancelled": "kosmos_grpc.errors",
    "Chunk": "kosmos_grpc.calls",
    "CircuitBreaker": "kosmos_grpc.resilience",
    "CircuitInfo": "kosmos_grpc.calls",
    "CircuitOpen": "kosmos_grpc.errors",
    "CircuitState": "kosmos_grpc.resilience",
    "ConfigError": "kosmos_grpc.errors",
    "Context": "kosmos_grpc.context",
    "Coordinator": "kosmos_grpc.client",
    "DeadlineExceeded": "kosmos_grpc.errors",
    "DependencyUnavailable": "kosmos_grpc.errors",
    "Delegation": "kosmos_grpc.interceptors.outbound",
    "DelegationLoop": "kosmos_grpc.errors",
    "DuplicateMessage": "kosmos_grpc.errors",
    "Envelope": "kosmos_grpc.calls",
    "Idempotency": "kosmos_grpc.config",
    "InboundInterceptor": "kosmos_grpc.interceptors.inbound",
    "InterceptorsConfig": "kosmos_grpc.config",
    "InvalidEnvelope": "kosmos_grpc.errors",
    "KosmosError": "kosmos_grpc.errors",
    "MeshConfig": "kosmos_grpc.config",
    "MeshLimits": "kosmos_grpc.config",
    "OpenStream": "kosmos_grpc.interceptors.outbound",
    "OutboundInterceptor": "kosmos_grpc.interceptors.outbound",
    "PayloadTooLarge": "kosmos_grpc.errors",
    "Priority": "kosmos_grpc.envelope",
    "Registry": "kosmos_grpc.registry",
    "Replies": "kosmos_grpc.interceptors.outbound",
    "Resilience": "kosmos_grpc.resilience",
    "ResiliencePolicy": "kosmos_grpc.resilience",
    "ResourceExhausted": "kosmos_grpc.errors",
    "Response": "kosmos_grpc.calls",
    "RetryPolicy": "kosmos_grpc.resilience",
    "Saga": "kosmos_grpc.patterns",
    "SagaFailed": "kosmos_grpc.errors",
    "SagaResult": "kosmos_grpc.patterns",
    "SagaStep": "kosmos_grpc.patterns",
    "ScatterResult": "kosmos_grpc.patterns",
    "ScopedClient": "kosmos_grpc.client",
    "ServedCall": "kosmos_grpc.interceptors.inbound",
    "ServerSettings": "kosmos_grpc.config",
    "Step": "kosmos_grpc.patterns",
    "StreamBroken": "kosmos_grpc.errors",
    "TelemetryConfig": "kosmos_grpc.config",
    "WrongCallKind": "kosmos_grpc.errors",
    "action": "kosmos_grpc.agent",
    "configure_logging": "kosmos_grpc.telemetry.logs",
    "configure_tracing": "kosmos_grpc.telemetry.tracing",
    "from_rpc_error": "kosmos_grpc.errors",
    "load_agent": "kosmos_grpc.agent",
    "load_config": "kosmos_grpc.config",
    "new_message": "kosmos_grpc.envelope",
    "parallel": "kosmos_grpc.patterns",
    "scatter_gather": "kosmos_grpc.patterns",
    "sequential": "kosmos_grpc.patterns",
    "serve_forever": "kosmos_grpc.server",
    "validate_and_fill": "kosmos_grpc.envelope",
}


# Hidden from type checkers, which read the names above: a misspelt name stays an error for them.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(__name__, _EXPORTS, __all__)
