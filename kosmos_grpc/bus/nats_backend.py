"""The event bus on a real NATS server, through nats-py: the same API as the embedded broker's.

Subjects and patterns are NATS's own (``*`` and ``>`` mean the same), queue groups are NATS
queue groups, headers are NATS headers, and the envelope travels as the serialized
``AgentMessage``. A server that is not there fails the connect at once, in one line
(:mod:`kosmos_grpc.bus.nats_connection`). Once connected, nats-py reconnects on its own and
resubscribes, so subscriptions go on after a server restart (it keeps trying for about a
minute, logged once and then summarised; then the connection closes and so do the subscriptions).

Most subjects get NATS core's at-most-once delivery. Subjects named durable (by default the
audit log) go through a JetStream stream: a publish waits for the stream's acknowledgement
(retrying while the server is away, for as long as the event's TTL allows), the message_id
is the ``Nats-Msg-Id`` so duplicates are dropped, and a durable subscription receives what it
missed while it was gone, in order; its handler's failure means redelivery, at most
``max_deliveries`` times, after which the event goes to ``kosmos.deadletter.<subject>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Self

from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
from kosmos_grpc.bus.event import Event, event_message
from kosmos_grpc.bus.metrics import published, received
from kosmos_grpc.bus.nats_connection import ReconnectLog, connect_nats
from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY, Subscription
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, DEFAULT_TTL_MS
from kosmos_grpc.errors import AgentUnavailable, DependencyUnavailable, KosmosError
from kosmos_grpc.subjects import matches, pattern_tokens
from kosmos_grpc.telemetry.tracing import finish_span, publish_headers, start_consumer_span

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = ["NatsEventBus"]

log = logging.getLogger(__name__)

BACKEND = "nats"
CONNECT_TIMEOUT = 5.0
NATS_PENDING_MESSAGES = 65_536
STREAM = "KOSMOS_DURABLE"
DEAD_LETTER_PREFIX = "kosmos.deadletter."
DEFAULT_DURABLE = ("kosmos.events.audit.log",)
DEFAULT_MAX_DELIVERIES = 5
# How long JetStream waits for a handler before redelivering.
ACK_WAIT = 30.0


async def _round_trip(nc: Client, seconds: int = 10) -> None:
    """Wait until the server has read everything this client sent so far.

    nats-py's flush writes its PING straight to the socket, ahead of the commands still queued
    for its flusher task (a SUB, a PUB), so its PONG can come back before the server has read
    them (a publish from another connection then misses a new subscription, about 1 in 30);
    they are written before that PONG is read, and a second PING follows them.
    """
    await nc.flush(timeout=seconds)
    await nc.flush(timeout=seconds)


def _headers(msg: Msg) -> dict[str, str]:
    """A message's headers, less NATS's own (the dedupe id is the envelope's message_id anyway)."""
    headers = dict(msg.headers or {})
    headers.pop("Nats-Msg-Id", None)
    return headers


class NatsEventBus:
    """Publish and subscribe through the NATS server at ``url``; ``await connect()`` first."""

    def __init__(
        self,
        url: str,
        *,
        source_agent: str = "client",
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        durable: tuple[str, ...] = DEFAULT_DURABLE,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``clock`` (wall clock, nanoseconds) is what the subscriptions judge an event's TTL by."""
        self.url = url
        self.source_agent = source_agent
        self.payload_limit = payload_limit
        #: Subjects (or patterns) whose events go through JetStream.
        self.durable = durable
        self.max_deliveries = max_deliveries
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subscriptions: set[Subscription[Event]] = set()
        self._clock = clock
        #: What the connection's losses and reconnects tell the log.
        self.reconnects = ReconnectLog(url)

    async def connect(self, connect_timeout: float = CONNECT_TIMEOUT) -> Self:
        """Connect within ``connect_timeout`` seconds.

        Raises:
            DependencyUnavailable: the server cannot be reached, or has no JetStream (one line saying so).
        """
        self._nc = await connect_nats(
            self.url, name=f"kosmos {self.source_agent}", connect_timeout=connect_timeout, report=self.reconnects
        )
        if self.durable:
            try:
                await self._ensure_stream()
            except BaseException:
                await self._nc.close()
                raise
        return self

    async def _ensure_stream(self) -> None:
        """The JetStream stream that keeps the durable subjects (made, or brought up to date)."""
        self._js = self.nc.jetstream()
        subjects = [*self.durable, DEAD_LETTER_PREFIX + ">"]
        config = StreamConfig(name=STREAM, subjects=subjects, storage=StorageType.FILE)
        try:
            try:
                await self._js.add_stream(config)
            except BadRequestError:  # it exists with other subjects: take ours too
                info = await self._js.stream_info(STREAM)
                config.subjects = sorted({*(info.config.subjects or []), *subjects})
                await self._js.update_stream(config)
        except (NatsError, TimeoutError) as exc:
            raise DependencyUnavailable(
                f"NATS at {self.url} has no JetStream ({exc or type(exc).__name__}): run it with -js"
            ) from None

    def is_durable(self, subject: str) -> bool:
        """Whether events on ``subject`` go through JetStream."""
        return self._js is not None and any(matches(pattern, subject) for pattern in self.durable)

    @property
    def nc(self) -> Client:
        """The nats-py client (after :meth:`connect`)."""
        if self._nc is None:
            raise KosmosError("NatsEventBus used before connect()")
        return self._nc

    async def __aenter__(self) -> Self:
        return self if self._nc is not None else await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is buffered, end every subscription, then close the connection."""
        for subscription in list(self._subscriptions):
            await subscription.unsubscribe()
        self.reconnects.closing = True
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
        message_id: str | None = None,
        acknowledge: bool = False,
        timeout_ms: float = 5_000,
    ) -> str:
        """Publish an event and return its message_id; with ``acknowledge``, wait until the server has it."""
        message = event_message(
            subject,
            payload,
            headers,
            source_agent=self.source_agent,
            correlation_id=correlation_id,
            ttl_ms=ttl_ms,
            message_id=message_id,
            payload_limit=self.payload_limit,
        )
        carried, trace_id = publish_headers(subject, headers, BACKEND)
        if trace_id:
            message.trace_id = trace_id
        if self.is_durable(subject):
            await self.publish_durable(subject, message, carried or {}, timeout_ms if acknowledge else None)
            return message.message_id
        await self.publish_message(subject, message, carried)
        if acknowledge:
            try:
                await _round_trip(self.nc, max(1, math.ceil(timeout_ms / 1000)))  # nats-py counts whole seconds
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
        published(BACKEND, subject).inc()

    async def publish_durable(
        self,
        subject: str,
        message: envelope_pb2.AgentMessage,
        headers: dict[str, str],
        timeout_ms: float | None = None,
    ) -> None:
        """Publish to JetStream until it acknowledges, retrying while the server is away.

        The retries last as long as the event's TTL, or ``timeout_ms`` when that is shorter.
        """
        assert self._js is not None
        headers["Nats-Msg-Id"] = message.message_id  # a retry of the same event is a duplicate
        data = message.SerializeToString()
        patience = (message.ttl_ms or DEFAULT_TTL_MS) / 1000
        if timeout_ms is not None:
            patience = min(patience, timeout_ms / 1000)
        deadline = time.monotonic() + patience
        wait = 0.05
        while True:
            try:
                await self._js.publish(subject, data, headers=headers, timeout=2.0)
                break
            except (NatsError, TimeoutError) as exc:
                if time.monotonic() + wait > deadline:
                    raise AgentUnavailable(
                        f"JetStream at {self.url} did not take the event in its TTL: {exc}"
                    ) from None
                log.debug("JetStream at %s did not take an event on %s (%r); trying again", self.url, subject, exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 1.0)
        published(BACKEND, subject).inc()

    def _expired(self, event: Event) -> bool:
        return event.expired(self._clock())

    async def subscribe_durable(
        self, pattern: str, name: str, handler: Callable[[Event], Awaitable[None]]
    ) -> Subscription[Event]:
        """A durable subscription called ``name``: what it missed while gone arrives when it comes back.

        ``handler`` is called for each event in order; an exception means redelivery, at most
        ``max_deliveries`` times, then the event goes to ``kosmos.deadletter.<subject>``.
        """
        pattern_tokens(pattern)
        if self._js is None:
            raise KosmosError(f"no durable subjects on this bus: {pattern!r} cannot have a durable subscription")
        js = self._js
        native: list[Any] = []

        async def stop(ended: Subscription[Event]) -> None:
            self._subscriptions.discard(ended)
            if native and not self.nc.is_closed:
                with contextlib.suppress(NatsError):
                    await native[0].unsubscribe()  # the consumer stays, and keeps what comes next

        subscription: Subscription[Event] = Subscription(pattern, on_unsubscribe=stop, backend=BACKEND)
        subscription.close()  # its events go to the handler, never to iteration
        self._subscriptions.add(subscription)

        async def deliver(msg: Msg) -> None:
            received(BACKEND, msg.subject).inc()
            try:
                event = Event(msg.subject, _headers(msg), envelope_pb2.AgentMessage.FromString(msg.data))
            except DecodeError:  # not a kosmos envelope: skipped
                await msg.term()
                return
            if self._expired(event):  # its TTL ran out while it waited: never delivered
                await msg.ack()
                return
            traced = start_consumer_span(msg.subject, event.headers, "nats")
            try:
                await handler(event)
            except Exception as exc:
                subscription.handler_errors += 1
                if msg.metadata.num_delivered >= self.max_deliveries:
                    log.exception("durable %s gave up on %s: dead-lettered", name, msg.subject)
                    finish_span(traced, "ERROR", exc)
                    await self._dead_letter(msg)
                    await msg.term()
                else:
                    log.exception("durable %s: handler failed on %s; it will be redelivered", name, msg.subject)
                    finish_span(traced, "ERROR", exc)
                    await msg.nak()
                return
            except BaseException:
                finish_span(traced, "CANCELLED")
                raise
            finish_span(traced, "OK")
            await msg.ack()

        config = ConsumerConfig(max_deliver=self.max_deliveries, ack_wait=ACK_WAIT)
        try:
            native.append(await js.subscribe(pattern, durable=name, cb=deliver, manual_ack=True, config=config))
        except (NatsError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot subscribe durably on NATS at {self.url}: {exc}") from None
        return subscription

    async def _dead_letter(self, msg: Msg) -> None:
        """Keep an event its handler gave up on, on ``kosmos.deadletter.<subject>`` (in JetStream too)."""
        assert self._js is not None
        try:
            await self._js.publish(DEAD_LETTER_PREFIX + msg.subject, msg.data, headers=msg.headers, timeout=2.0)
        except (NatsError, TimeoutError) as exc:
            log.error("could not dead-letter an event from %s: %s", msg.subject, exc)

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        await _round_trip(self.nc)

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]] | None = None,
        *,
        queue: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int | None = None,
    ) -> Subscription[Event]:
        """Subscribe to ``pattern``; every event published after this returns reaches the subscription.

        ``max_bytes`` bounds what its buffer holds in bytes too (the broker's bridge sets it), and
        nats-py's queue in front of it to four times that.
        """
        pattern_tokens(pattern)
        nc = self.nc
        native: list[Any] = []  # the nats-py subscription, once made

        async def stop(ended: Subscription[Event]) -> None:
            self._subscriptions.discard(ended)
            if native and not nc.is_closed:
                try:
                    await native[0].unsubscribe()
                except NatsError as exc:
                    log.debug("unsubscribe from %s: %s", pattern, exc)

        subscription: Subscription[Event] = Subscription(
            pattern,
            queue,
            capacity=capacity,
            on_unsubscribe=stop,
            expired=self._expired,
            backend=BACKEND,
            max_bytes=max_bytes,
            weigh=_weigh,
        )
        self._subscriptions.add(subscription)

        async def deliver(msg: Msg) -> None:
            # nats-py calls this in order, one message at a time: it only buffers, never waits.
            received(BACKEND, msg.subject).inc()
            try:
                message = envelope_pb2.AgentMessage.FromString(msg.data)
            except DecodeError:  # not a kosmos envelope: skipped
                return
            subscription.offer(Event(msg.subject, _headers(msg), message))

        try:
            # Our buffer decides what is dropped (and counts it); nats-py's queue in front of our
            # callback only has to absorb a burst while the callback catches up.
            limit = max(4 * capacity, NATS_PENDING_MESSAGES)
            pending: dict[str, Any] = {} if max_bytes is None else {"pending_bytes_limit": 4 * max_bytes}
            native.append(
                await nc.subscribe(pattern, queue=queue or "", cb=deliver, pending_msgs_limit=limit, **pending)
            )
            await _round_trip(nc)  # the server has the subscription once this returns
        except (NatsError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot subscribe on NATS at {self.url}: {exc or type(exc).__name__}") from None
        if handler is not None:
            subscription.start_handler(handler)
        return subscription


def _weigh(event: Event) -> int:
    """What an event weighs in a subscription's buffer: about its encoded size."""
    return event.message.ByteSize() + len(event.subject)
