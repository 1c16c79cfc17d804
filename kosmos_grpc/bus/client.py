"""The event bus as a client of the embedded broker: publish, and subscribe by pattern."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Self

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from kosmos_grpc._grpc import channel_options
from kosmos_grpc._proto.kosmos.v1 import envelope_pb2, events_pb2
from kosmos_grpc.bus.broker import BUS_SERVICE, MAX_BATCH, MAX_BATCH_BYTES
from kosmos_grpc.bus.event import Event, event_message
from kosmos_grpc.bus.metrics import published, received
from kosmos_grpc.bus.outage import RESUBSCRIBE_WAIT, Outage
from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY, Subscription
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, DEFAULT_TTL_MS
from kosmos_grpc.errors import MESH_HINT, DependencyUnavailable, KosmosError, from_rpc_error
from kosmos_grpc.telemetry.tracing import publish_headers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    _SubscribeCall = grpc.aio.UnaryStreamCall[Any, events_pb2.SubscribeResponse]

__all__ = ["GrpcEventBus"]

BACKEND = "embedded"
SUBSCRIBE_TIMEOUT = 10.0
#: Seconds a stream subscribed again must stay open (or deliver) to count as the broker back.
STREAM_PROVEN = 1.0
#: The longest wait before reopening a stream the broker keeps ending at once.
RESUBSCRIBE_CAP = 2.0
OUTBOX_CAPACITY = 8192

log = logging.getLogger(__name__)


def _detached(event: events_pb2.Event) -> Event:
    """``event`` with an envelope of its own. Every part of a parsed message lives in its arena,
    so an envelope taken from a reply keeps the whole reply (up to MAX_BATCH events) in memory."""
    message = envelope_pb2.AgentMessage()
    message.CopyFrom(event.message)
    return Event(event.subject, dict(event.headers), message)


def _broker_error(address: str, exc: grpc.aio.AioRpcError) -> KosmosError:
    """What a failed call to the broker means; a broker that is not there is one line naming it."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        cause = "connection refused" if "refused" in details.lower() else "no answer"
        return DependencyUnavailable(f"cannot reach the event broker at {address} ({cause}): {MESH_HINT}")
    return from_rpc_error(exc)


class GrpcEventBus:
    """Publish and subscribe through the embedded broker at ``address``."""

    def __init__(
        self,
        address: str,
        *,
        source_agent: str = "client",
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``clock`` (wall clock, nanoseconds) is what the subscriptions judge an event's TTL by."""
        self.address = address
        self.source_agent = source_agent
        self.payload_limit = payload_limit
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(payload_limit))
        self._publish = self._channel.unary_unary(
            f"/{BUS_SERVICE}/Publish",
            request_serializer=events_pb2.PublishRequest.SerializeToString,
            response_deserializer=events_pb2.PublishResponse.FromString,
        )
        self._subscribe = self._channel.unary_stream(
            f"/{BUS_SERVICE}/Subscribe",
            request_serializer=events_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=events_pb2.SubscribeResponse.FromString,
        )
        self._publish_stream = self._channel.stream_unary(
            f"/{BUS_SERVICE}/PublishStream",
            request_serializer=events_pb2.PublishStreamRequest.SerializeToString,
            response_deserializer=events_pb2.PublishStreamResponse.FromString,
        )
        self._readers: set[asyncio.Task[None]] = set()
        self._subscriptions: set[Subscription[Event]] = set()
        # Events published without acknowledgement wait here for the writer task, which sends
        # whatever has gathered as one batch; when the broker cannot keep up, publish waits.
        self._outbox: asyncio.Queue[events_pb2.Event] = asyncio.Queue(OUTBOX_CAPACITY)
        self._writer: asyncio.Task[None] | None = None
        self._clock = clock
        #: The broker's going away, as this bus's subscriptions see it.
        self.outage = Outage(address)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is still waiting to be published (for up to 5 s), end every subscription, close."""
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), 5)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for subscription in list(self._subscriptions):
            await subscription.unsubscribe()
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._channel.close()

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
        """Publish an event and return its message_id; subscribers are never waited for.

        By default the event joins a stream of batches to the broker and this returns at once
        (``flush`` waits until everything published has been sent). With ``acknowledge`` it
        goes alone and this returns once the broker has accepted it.

        Raises:
            InvalidEnvelope: the subject, headers or payload break a rule (the field is named).
            KosmosError: with ``acknowledge``, the broker refused it or could not be reached.
        """
        request = events_pb2.PublishRequest()
        event = request.event
        event_message(
            subject,
            payload,
            headers,
            source_agent=self.source_agent,
            correlation_id=correlation_id,
            ttl_ms=ttl_ms,
            message_id=message_id,
            payload_limit=self.payload_limit,
            into=event.message,
        )
        event.subject = subject
        carried, trace_id = publish_headers(subject, headers, BACKEND)
        if carried:
            event.headers.update(carried)
        if trace_id:
            event.message.trace_id = trace_id
        published(BACKEND, subject).inc()
        if not acknowledge:
            if self._writer is None:
                self._writer = asyncio.create_task(self._write(), name="kosmos-bus-writer")
            await self._outbox.put(event)
            return event.message.message_id
        try:
            reply = await self._publish(request, timeout=timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise _broker_error(self.address, exc) from None
        return reply.message_id

    async def flush(self) -> None:
        """Wait until every event published so far has been written to the broker."""
        await self._outbox.join()

    async def _write(self) -> None:
        """Send the outbox as batches over one PublishStream, reopening it whenever it breaks.

        What was in a batch that broke is lost (at most once), counted in the outage's lines.
        """
        outbox = self._outbox
        while True:
            call = self._publish_stream()
            batch = events_pb2.PublishStreamRequest()
            try:
                while True:
                    first = await outbox.get()
                    batch.events.append(first)
                    size = first.ByteSize()
                    # A batch stays well inside the message size limit, however large its events.
                    while len(batch.events) < MAX_BATCH and size < MAX_BATCH_BYTES and not outbox.empty():
                        event = outbox.get_nowait()
                        batch.events.append(event)
                        size += event.ByteSize()
                    count = len(batch.events)
                    await call.write(batch)
                    self.outage.found(outbox)
                    batch = events_pb2.PublishStreamRequest()
                    for _ in range(count):
                        outbox.task_done()
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as exc:  # the call ended (a broker restart, say): reopen it, count the loss
                lost = len(batch.events)
                for _ in range(lost):
                    outbox.task_done()
                # A write on a connection that went is INTERNAL in grpcio: say what it means.
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.INTERNAL
                cause = "the publish stream broke" if code == grpc.StatusCode.INTERNAL else code.name
                self.outage.lose(outbox, cause, lost)
                call.cancel()
                await asyncio.sleep(0.1)

    def _expired(self, event: Event) -> bool:
        return event.expired(self._clock())

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]] | None = None,
        *,
        queue: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> Subscription[Event]:
        """Subscribe to ``pattern``; every event published after this returns reaches the subscription.

        Iterate the subscription, or give a ``handler`` that is called for each event in a task
        of the subscription's own. ``queue`` shares the events among the group's members. When
        the broker goes away (a restart, say) the subscription subscribes again, with backoff,
        until the broker is back or its owner ends it; what was published meanwhile is lost.
        """
        request = events_pb2.SubscribeRequest(pattern=pattern, queue=queue or "")
        try:
            call = await self._open(request)
        except grpc.aio.AioRpcError as exc:
            raise _broker_error(self.address, exc) from None
        except TimeoutError:
            raise KosmosError(f"the broker at {self.address} did not take the subscription in time") from None

        async def stop(ended: Subscription[Event]) -> None:
            self._subscriptions.discard(ended)
            # The reader's cancel ends its call, or its wait to subscribe again, at once.
            if reader is not asyncio.current_task():
                reader.cancel()
                await asyncio.wait({reader})

        subscription: Subscription[Event] = Subscription(
            pattern, queue, capacity=capacity, on_unsubscribe=stop, expired=self._expired
        )
        self._subscriptions.add(subscription)
        reader = asyncio.create_task(self._read(call, request, subscription), name=f"kosmos-bus-reader {pattern}")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        if handler is not None:
            subscription.start_handler(handler)
        return subscription

    async def _open(self, request: events_pb2.SubscribeRequest) -> _SubscribeCall:
        """A Subscribe call in place at the broker: once its headers came, every event published reaches it.

        Raises:
            grpc.aio.AioRpcError: the broker refused it or could not be reached.
            TimeoutError: the broker did not take it within SUBSCRIBE_TIMEOUT.
        """
        call: _SubscribeCall = self._subscribe(request)
        try:
            await asyncio.wait_for(call.initial_metadata(), SUBSCRIBE_TIMEOUT)
            if call.done():  # refused before it started: a bad pattern, say
                await call.code()
                async for _ in call:
                    pass
        except BaseException:
            call.cancel()
            raise
        return call

    async def _read(
        self, call: _SubscribeCall, request: events_pb2.SubscribeRequest, subscription: Subscription[Event]
    ) -> None:
        """Hand the call's events to ``subscription``; when the broker ends it, subscribe again.

        A stream subscribed again is the broker back only once it proves so (an event, or
        STREAM_PROVEN seconds open): one that ends sooner, every time, is an outage that goes on,
        reopened after a growing wait rather than at once, with no "back" line each time.
        """
        loop = asyncio.get_running_loop()
        quick_ends = 0
        try:
            while True:
                back = functools.partial(self.outage.found, subscription)
                proven = loop.call_later(STREAM_PROVEN, back)
                try:
                    cause = await self._forward(call, subscription, back)
                finally:
                    proven.cancel()
                if cause in _GIVE_UP:
                    subscription.error = f"the broker at {self.address} ended the subscription: {cause}"
                    log.warning("%s", subscription.error)
                    return
                quick_ends = quick_ends + 1 if self.outage.is_away(subscription) else 0
                self.outage.lose(subscription, cause)
                if quick_ends:
                    await asyncio.sleep(min(RESUBSCRIBE_CAP, 0.1 * 2 ** min(quick_ends, 8)))
                try:
                    call = await self._again(request)
                except grpc.aio.AioRpcError as exc:  # refused for good: a broker that no longer knows it
                    subscription.error = f"the broker at {self.address} refused the subscription: {exc.code().name}"
                    log.warning("%s", subscription.error)
                    return
        finally:
            call.cancel()
            self.outage.forget(subscription)
            subscription.close()

    async def _forward(
        self, call: _SubscribeCall, subscription: Subscription[Event], delivering: Callable[[], None]
    ) -> str:
        """Offer each event of ``call`` to ``subscription`` until the call ends; why it ended.

        ``delivering`` is told of each reply (the first one proves a stream subscribed again).
        """
        try:
            async for reply in call:
                delivering()
                # Events still waiting from an earlier reply: the consumer is behind, and this
                # reply's events are copied (see _detached). So the buffer holds at most one
                # reply whole, bounded in bytes as in events; a consumer that keeps up costs
                # no copy.
                behind = not subscription.empty
                for event in reply.events:
                    received(BACKEND, event.subject).inc()
                    copy = behind and not subscription.full  # a full buffer drops it (counted)
                    subscription.offer(_detached(event) if copy else Event.from_proto(event))
        except grpc.aio.AioRpcError as exc:  # (our own unsubscribe cancels this task instead)
            return exc.code().name
        return "the stream ended"

    async def _again(self, request: events_pb2.SubscribeRequest) -> _SubscribeCall:
        """Subscribe again with capped exponential backoff and jitter until the broker takes it.

        Raises:
            grpc.aio.AioRpcError: the broker refused it in a way that no retry mends.
        """
        retrying = AsyncRetrying(
            wait=RESUBSCRIBE_WAIT,
            retry=retry_if_exception(_passing),
            before_sleep=self._failed_again,
            reraise=True,
        )
        call: _SubscribeCall = await retrying(self._open, request)
        return call

    def _failed_again(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        cause = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "no answer"
        self.outage.failed(cause)


# The ends of a subscription that no new attempt would mend; any other end (UNAVAILABLE when the
# broker went, CANCELLED when it stopped, a stream it closed) is an outage, subscribed again.
_GIVE_UP = frozenset(
    code.name
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
)


def _passing(error: BaseException) -> bool:
    """Whether a failed attempt to subscribe again is worth another: the broker is away, not refusing."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name not in _GIVE_UP
    return isinstance(error, TimeoutError)
