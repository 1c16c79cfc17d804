"""What a handler knows of the call it serves: the envelope as a typed value, the deadline, a client to delegate."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc.calls import CallScope, Envelope
from kosmos_grpc.client import ScopedClient
from kosmos_grpc.envelope import Priority, struct_to_dict
from kosmos_grpc.errors import ConfigError

if TYPE_CHECKING:
    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.client import Coordinator

__all__ = ["Context"]


JSON = dict[str, Any]


class Context:
    """What a handler knows of the call it serves: the envelope, the deadline, a client to delegate."""

    __slots__ = ("_bus", "_client", "_coordinator", "_envelope", "_message", "_payload", "agent_name", "deadline")

    def __init__(
        self,
        message: envelope_pb2.AgentMessage,
        agent_name: str,
        deadline: float | None,
        coordinator: Coordinator,
        bus: EventBus | None = None,
    ) -> None:
        # The message as received: the typed envelope and the payload are made from it when first asked for.
        self._message = message
        self._bus = bus
        self.agent_name = agent_name
        #: When the call must be answered, on the ``time.monotonic`` clock.
        self.deadline = deadline
        self._coordinator = coordinator
        self._client: ScopedClient | None = None
        self._envelope: Envelope | None = None
        self._payload: JSON | None = None

    @property
    def envelope(self) -> Envelope:
        """The call's envelope: message_id, source, action, correlation_id, trace_id, priority, TTL."""
        if self._envelope is None:
            self._envelope = Envelope.of(self._message)
        return self._envelope

    @property
    def payload(self) -> JSON:
        """The envelope's payload as a dict."""
        if self._payload is None:
            self._payload = struct_to_dict(self._message.payload)
        return self._payload

    @property
    def correlation_id(self) -> str:
        """The workflow this call belongs to."""
        return self._message.correlation_id

    @property
    def priority(self) -> Priority:
        """The call's priority (UNSPECIFIED read as NORMAL)."""
        return Priority(self._message.priority) or Priority.NORMAL

    @property
    def bus(self) -> EventBus:
        """The mesh's event bus, to publish and subscribe (ConfigError when the mesh has none)."""
        if self._bus is None:
            raise ConfigError(f"agent {self.agent_name!r} has no event bus: the config names no [bus]")
        return self._bus

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the call has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def client(self) -> ScopedClient:
        """A client whose calls inherit this call's deadline and correlation_id."""
        if self._client is None:
            message = self._message
            scope = CallScope(
                deadline=self.deadline,
                correlation_id=message.correlation_id,
                source_agent=self.agent_name,
                trace_id=message.trace_id,
                route=(*message.route, self.agent_name),
            )
            self._client = ScopedClient(self._coordinator, scope)
        return self._client
