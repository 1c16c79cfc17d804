"""An event as a subscriber sees it: subject, headers, envelope, and the payload as a dict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc.envelope import DEFAULT_TTL_MS, check_payload_size, new_message, struct_to_dict
from kosmos_grpc.subjects import check_subject, validate_headers

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2, events_pb2

__all__ = ["Event", "event_message"]


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

    def expired(self, now_ns: int | None = None) -> bool:
        """Whether the envelope's TTL (from its timestamp) has run out at ``now_ns`` (wall clock,
        nanoseconds; now when None): such an event is not delivered."""
        stamp = self.message.timestamp
        now = time.time_ns() if now_ns is None else now_ns
        age_ms = (now - stamp.seconds * 1_000_000_000 - stamp.nanos) / 1_000_000
        return age_ms >= (self.message.ttl_ms or DEFAULT_TTL_MS)

    @property
    def message_id(self) -> str:
        """The envelope's message_id."""
        return self.message.message_id

    def __repr__(self) -> str:
        return f"Event(subject={self.subject!r}, message_id={self.message_id!r}, payload={self.payload!r})"


def event_message(
    subject: str,
    payload: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None,
    *,
    source_agent: str,
    correlation_id: str | None,
    ttl_ms: int,
    message_id: str | None,
    payload_limit: int,
    into: envelope_pb2.AgentMessage | None = None,
) -> envelope_pb2.AgentMessage:
    """The envelope of an event to publish on ``subject``, after every check a publisher makes.

    Raises InvalidEnvelope naming the subject, headers or payload, or PayloadTooLarge. The
    envelope is new, so its id, timestamp and TTL need no further checking.
    """
    check_subject(subject)
    if headers:
        validate_headers(headers)
    message = new_message(
        "",
        payload,
        source_agent=source_agent,
        correlation_id=correlation_id,
        ttl_ms=ttl_ms,
        message_id=message_id,
        into=into,
    )
    check_payload_size(message, payload_limit)
    return message
