"""KOSMOS: a gRPC service mesh for multi-agent systems.

Agents are gRPC servers speaking one generic ``kosmos.v1.AgentService``; a :class:`Coordinator`
delegates to them by name under deadlines, and streams their answers chunk by chunk.
"""

from kosmos_grpc.agent import ActionSpec, Agent, Context, action
from kosmos_grpc.client import (
    ActionInfo,
    AgentCard,
    CallScope,
    Chunk,
    Coordinator,
    Response,
    ScopedClient,
)
from kosmos_grpc.config import AgentConfig, ConfigError, MeshConfig, load_agent, load_config
from kosmos_grpc.envelope import (
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_TTL_MS,
    AgentMessage,
    Priority,
    new_message,
    validate,
)
from kosmos_grpc.errors import (
    ActionFailed,
    ActionNotFound,
    AgentNotFound,
    AgentUnavailable,
    Cancelled,
    CircuitOpen,
    DeadlineExceeded,
    InvalidEnvelope,
    KosmosError,
    PayloadTooLarge,
    ResourceExhausted,
    StreamBroken,
    WrongCallKind,
    from_rpc_error,
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
    "CallScope",
    "Cancelled",
    "Chunk",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "ConfigError",
    "Context",
    "Coordinator",
    "DeadlineExceeded",
    "InvalidEnvelope",
    "KosmosError",
    "MeshConfig",
    "PayloadTooLarge",
    "Priority",
    "Registry",
    "Resilience",
    "ResiliencePolicy",
    "ResourceExhausted",
    "Response",
    "RetryPolicy",
    "ScopedClient",
    "StreamBroken",
    "WrongCallKind",
    "action",
    "from_rpc_error",
    "load_agent",
    "load_config",
    "new_message",
    "serve_forever",
    "validate",
]
