"""The values a caller gets and a handler sees: responses, chunks, agent cards, call scopes, envelopes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kosmos_grpc.envelope import DEFAULT_TTL_MS, Priority, struct_to_dict

if TYPE_CHECKING:
    from google.protobuf import struct_pb2

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2

__all__ = ["ActionInfo", "AgentCard", "CallScope", "Chunk", "CircuitInfo", "Envelope", "Response"]


# Response and Chunk are made once per call or chunk: plain slotted dataclasses, as a frozen
# one's __init__ costs several times more.
@dataclass(slots=True)
class Response:
    """An agent's answer: which agent answered, to which message, and the result.

    ``fallback_for`` names the agent asked for when another answered in its place.
    """

    agent: str
    request_message_id: str
    correlation_id: str
    result: dict[str, Any]
    fallback_for: str | None = None


class Chunk:
    """One chunk of a streamed answer.

    ``data`` is converted from the wire on first use; a streaming action that yields a Chunk it
    received passes it on without converting it at all (how Zeus relays).
    """

    __slots__ = ("_data", "_wire", "agent", "sequence")

    def __init__(
        self, agent: str, sequence: int, data: dict[str, Any] | None = None, *, wire: struct_pb2.Struct | None = None
    ) -> None:
        self.agent = agent
        self.sequence = sequence
        self._data = data
        self._wire = wire

    @property
    def data(self) -> dict[str, Any]:
        """The chunk's content."""
        if self._data is None:
            self._data = {} if self._wire is None else struct_to_dict(self._wire)
        return self._data

    @property
    def wire(self) -> struct_pb2.Struct | None:
        """The Struct as received, while ``data`` has not been touched (so it cannot differ)."""
        return self._wire if self._data is None else None

    def __repr__(self) -> str:
        return f"Chunk(agent={self.agent!r}, sequence={self.sequence}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chunk):
            return NotImplemented
        return (self.agent, self.sequence, self.data) == (other.agent, other.sequence, other.data)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """One action on an agent's card."""

    name: str
    description: str
    streaming: bool
    input_schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """An agent's circuit breaker to one target: ``state`` is closed, half_open or open."""

    target: str
    state: str
    failures: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class AgentCard:
    """What an agent says of itself through Describe, with its circuits to the agents it calls."""

    name: str
    description: str
    version: str
    actions: list[ActionInfo] = field(default_factory=list)
    circuits: list[CircuitInfo] = field(default_factory=list)
    #: The process serving it: its PID, when it started (seconds since the epoch; 0 when the
    #: agent does not say), and how often ``kosmos up`` restarted the agent before it.
    pid: int = 0
    started: float = 0.0
    restarts: int = 0

    @property
    def uptime(self) -> float | None:
        """Seconds its process has been serving, by this machine's clock (None when unknown)."""
        return max(0.0, time.time() - self.started) if self.started else None


@dataclass(frozen=True, slots=True)
class CallScope:
    """The call a delegation is made from: its deadline (``time.monotonic``) and its correlation_id."""

    deadline: float | None
    correlation_id: str
    source_agent: str
    trace_id: str = ""
    #: The agents the call passed through, the one serving it last: each delegation's ``route``.
    route: tuple[str, ...] = ()


class Envelope(NamedTuple):
    """The envelope of the call a handler serves, as a read-only value (its payload is ``ctx.payload``).

    A named tuple: made in a couple of microseconds, when a handler first asks for it.
    """

    message_id: str
    timestamp: datetime
    source_agent: str
    target_agent: str
    action: str
    correlation_id: str
    trace_id: str
    priority: Priority
    ttl_ms: int
    #: The agents the call passed through on its way here, first caller first.
    route: tuple[str, ...] = ()

    @classmethod
    def of(cls, message: envelope_pb2.AgentMessage) -> Envelope:
        """The value of a validated ``AgentMessage`` (its defaults filled in)."""
        stamp = message.timestamp
        return cls(
            message.message_id,
            datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC),
            message.source_agent,
            message.target_agent,
            message.action,
            message.correlation_id,
            message.trace_id,
            _PRIORITIES.get(message.priority, Priority.NORMAL),
            message.ttl_ms or DEFAULT_TTL_MS,
            tuple(message.route),
        )


# Looked up rather than called: an enum's constructor costs more than the rest of the envelope.
_PRIORITIES = {int(p): p for p in Priority if p}
