"""An event as a subscriber sees it: subject, headers, envelope, and the payload as a dict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc.envelope import DEFAULT_TTL_MS, struct_to_dict

if TYPE_CHECKING:
    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2, events_pb2

__all__ = ["Event"]


class Event:
    """One delivered event. ``payload`` is converted from the wire on first use."""

    __slots__ = ("_payload", "headers", "message", "subject")

    def __init__(self, subject: str, headers: dict[str, str], message: envelope_pb2.AgentMessage) -> None:
        self.subject = subject
        self.headers = headers
        self.message = message
        self._payload: dict[str, Any] | None = None

    @classmethod
    def from_proto(cls, event: events_pb2.Event) -> Event:
        """The event a ``kosmos.v1.Event`` carries."""
        return cls(event.subject, dict(event.headers), event.message)

    @property
    def payload(self) -> dict[str, Any]:
        """The envelope's payload as a dict."""
        if self._payload is None:
            self._payload = struct_to_dict(self.message.payload)
        return self._payload

    def expired(self) -> bool:
        """Whether the envelope's TTL (from its timestamp) has run out: such an event is not delivered."""
        stamp = self.message.timestamp
        age_ms = (time.time_ns() - stamp.seconds * 1_000_000_000 - stamp.nanos) / 1_000_000
        return age_ms >= (self.message.ttl_ms or DEFAULT_TTL_MS)

    @property
    def message_id(self) -> str:
        """The envelope's message_id."""
        return self.message.message_id

    def __repr__(self) -> str:
        return f"Event(subject={self.subject!r}, message_id={self.message_id!r}, payload={self.payload!r})"
