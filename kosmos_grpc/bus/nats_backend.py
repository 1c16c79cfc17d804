"""The event bus on a real NATS server, through nats-py: the same API as the embedded broker's.

Subjects and patterns are NATS's own (``*`` and ``>`` mean the same), queue groups are NATS
queue groups, headers are NATS headers, and the envelope travels as the serialized
``AgentMessage``. Delivery is NATS core's: at most once. nats-py reconnects on its own and
resubscribes; subscriptions go on after a server restart.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Self

import nats
from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError

from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
from kosmos_grpc.bus.event import Event
from kosmos_grpc.bus.metrics import PUBLISHED, RECEIVED, subject_label
from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY, Subscription
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, DEFAULT_TTL_MS, new_message, validate
from kosmos_grpc.errors import AgentUnavailable, KosmosError
from kosmos_grpc.subjects import pattern_tokens, subject_tokens, validate_headers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["NatsEventBus"]

log = logging.getLogger(__name__)

BACKEND = "nats"
CONNECT_TIMEOUT = 5.0
# Reconnect for up to about a minute (0.25 s apart), then give up: nothing waits forever.
RECONNECT_WAIT = 0.25
RECONNECT_ATTEMPTS = 240
NATS_PENDING_MESSAGES = 65_536


def _expired(event: Event) -> bool:
    stamp = event.message.timestamp
    age_ms = (time.time_ns() - stamp.seconds * 1_000_000_000 - stamp.nanos) / 1_000_000
    return age_ms >= (event.message.ttl_ms or DEFAULT_TTL_MS)


class NatsEventBus:
    """Publish and subscribe through the NATS server at ``url``; ``await connect()`` first."""

    def __init__(self, url: str, *, source_agent: str = "client", payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> None:
        self.url = url
        self.source_agent = source_agent
        self.payload_limit = payload_limit
        self._nc: Client | None = None
        #: Events received that were not a kosmos envelope, and so were skipped.
        self.undecodable = 0

    async def connect(self) -> Self:
        """Connect (AgentUnavailable when the server cannot be reached)."""
        try:
            self._nc = await nats.connect(
                self.url,
                name=f"kosmos {self.source_agent}",
                connect_timeout=CONNECT_TIMEOUT,
                reconnect_time_wait=RECONNECT_WAIT,
                max_reconnect_attempts=RECONNECT_ATTEMPTS,
                allow_reconnect=True,
                error_cb=self._on_error,
            )
        except (OSError, NatsError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot reach NATS at {self.url}: {exc or type(exc).__name__}") from None
        return self

    async def _on_error(self, error: Exception) -> None:
        log.warning("NATS connection to %s: %s", self.url, error)

    @property
    def nc(self) -> Client:
        """The nats-py client (after :meth:`connect`)."""
        if self._nc is None:
            raise KosmosError("NatsEventBus used before connect()")
        return self._nc

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is buffered, then close the connection."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (NatsError, TimeoutError):
                await self._nc.close()

    async def publish(
        self,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
        correlation_id: str | None = None,
        acknowledge: bool = False,
        timeout_ms: float = 5_000,
    ) -> str:
        """Publish an event and return its message_id; with ``acknowledge``, wait until the server has it."""
        subject_tokens(subject)
        if headers:
            validate_headers(headers)
        message = new_message("", payload, source_agent=self.source_agent, correlation_id=correlation_id, ttl_ms=ttl_ms)
        validate(message, payload_limit=self.payload_limit, require_action=False)
        await self.publish_message(subject, message, dict(headers) if headers else None)
        if acknowledge:
            try:
                await self.nc.flush(timeout=max(1, round(timeout_ms / 1000)))
            except (NatsError, TimeoutError) as exc:
                raise AgentUnavailable(f"NATS at {self.url} did not confirm: {exc or type(exc).__name__}") from None
        return message.message_id

    async def publish_message(
        self, subject: str, message: envelope_pb2.AgentMessage, headers: dict[str, str] | None = None
    ) -> None:
        """Publish an envelope already built and validated (the broker's bridge does)."""
        try:
            await self.nc.publish(subject, message.SerializeToString(), headers=headers or None)
        except (NatsError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot publish to NATS at {self.url}: {exc or type(exc).__name__}") from None
        PUBLISHED.labels(BACKEND, subject_label(subject)).inc()

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        await self.nc.flush()

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]] | None = None,
        *,
        queue: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> Subscription[Event]:
        """Subscribe to ``pattern``; every event published after this returns reaches the subscription."""
        pattern_tokens(pattern)
        nc = self.nc
        received = RECEIVED.labels(BACKEND, subject_label(pattern))
        native: list[Any] = []  # the nats-py subscription, once made

        async def stop(_: Subscription[Event]) -> None:
            if native and not nc.is_closed:
                try:
                    await native[0].unsubscribe()
                except NatsError as exc:
                    log.debug("unsubscribe from %s: %s", pattern, exc)

        subscription: Subscription[Event] = Subscription(
            pattern, queue, capacity=capacity, on_unsubscribe=stop, expired=_expired, backend=BACKEND
        )

        async def deliver(msg: Msg) -> None:
            # nats-py calls this in order, one message at a time: it only buffers, never waits.
            received.inc()
            try:
                message = envelope_pb2.AgentMessage.FromString(msg.data)
            except DecodeError:
                self.undecodable += 1
                return
            subscription.offer(Event(msg.subject, dict(msg.headers or {}), message))

        try:
            # Our buffer decides what is dropped (and counts it); nats-py's queue in front of our
            # callback only has to absorb a burst while the callback catches up.
            limit = max(4 * capacity, NATS_PENDING_MESSAGES)
            native.append(await nc.subscribe(pattern, queue=queue or "", cb=deliver, pending_msgs_limit=limit))
            await nc.flush()  # the server has the subscription once this returns
        except (NatsError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot subscribe on NATS at {self.url}: {exc or type(exc).__name__}") from None
        if handler is not None:
            subscription.start_handler(handler)
        return subscription
