"""The embedded broker: ``kosmos.v1.EventBusService`` over a :class:`LocalBus`, at most once.

Each event is serialized once at publish, already framed as one element of
``SubscribeResponse.events``; a subscriber's stream sends whatever is waiting for it as one
message, the frames simply joined (a repeated field's encoding is its elements' encodings
one after another). So the cost of a publish grows with the subscriptions that match it, and
a busy subscriber gets its events in batches rather than a message each.

A subscriber that stops reading costs a bounded amount: its buffer holds at most
``subscriber_buffer_bytes`` (then events are dropped, counted), and once one write to it has
waited ``subscriber_stall_seconds`` (HTTP/2 flow control holds a write while the client does not
read) it is cut off: its buffer let go, counted in ``kosmos_bus_subscribers_cut_off_total``,
logged once per burst, its stream ended RESOURCE_EXHAUSTED naming the bound. Requests that do
not decode are INVALID_ARGUMENT, logged once per burst, with no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from kosmos_grpc._grpc import (
    SMALL_REQUEST,
    abort,
    quiet_hang_ups,
    refusing,
    request_limit,
    server_options,
    set_status,
)
from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bounds import BUS_REQUEST, DEFAULT_MAX_PAYLOAD_VALUES
from kosmos_grpc.bus.local import LocalBus
from kosmos_grpc.bus.metrics import CUT_OFF, BrokerCounts
from kosmos_grpc.bus.nats_backend import DEFAULT_DURABLE, DEFAULT_MAX_DELIVERIES, NatsEventBus
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, validate_and_fill
from kosmos_grpc.errors import KosmosError, SlowConsumer
from kosmos_grpc.memory import FreeMemory
from kosmos_grpc.quoting import echo
from kosmos_grpc.standard_services import add_health_service, add_reflection_service
from kosmos_grpc.subjects import check_queue, check_subject, validate_headers
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from kosmos_grpc.bus.subscription import Subscription

__all__ = [
    "BUS_SERVICE",
    "DEFAULT_SUBSCRIBER_BUFFER_BYTES",
    "DEFAULT_SUBSCRIBER_STALL_SECONDS",
    "BrokerServer",
    "EventBusServicer",
]

BUS_SERVICE: str = events_pb2.DESCRIPTOR.services_by_name["EventBusService"].full_name

# What a subscription buffers: when the event expires (time.time_ns) and its framed bytes.
Item = tuple[int, bytes]
# The most events, and about the most bytes, one SubscribeResponse carries: a write that a
# stalled subscriber holds in gRPC's transport holds no more (one bigger event goes alone).
MAX_BATCH = 256
MAX_BATCH_BYTES = 64 * 1024
#: What a subscription may buffer, in bytes, before its newest events are dropped.
DEFAULT_SUBSCRIBER_BUFFER_BYTES = 1024 * 1024
#: How long one write to a subscriber may wait for it to read before it is cut off.
DEFAULT_SUBSCRIBER_STALL_SECONDS = 10.0

log = logging.getLogger(__name__)
_bursts = BurstLog(log)


def _expired(item: Item) -> bool:
    return time.time_ns() >= item[0]


def _frame(event: events_pb2.Event) -> bytes:
    """``event`` encoded as one element of SubscribeResponse.events."""
    response = events_pb2.SubscribeResponse()
    response.events.append(event)
    return response.SerializeToString()


class EventBusServicer:
    """Publish and Subscribe over one LocalBus, or bridged to NATS when ``nats`` is set."""

    def __init__(
        self,
        bus: LocalBus[Item] | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        nats: NatsEventBus | None = None,
        *,
        subscriber_buffer_bytes: int = DEFAULT_SUBSCRIBER_BUFFER_BYTES,
        subscriber_stall_seconds: float = DEFAULT_SUBSCRIBER_STALL_SECONDS,
    ) -> None:
        self.bus: LocalBus[Item] = bus if bus is not None else LocalBus(_expired, _weigh)
        self.payload_limit = payload_limit
        self.subscriber_buffer_bytes = subscriber_buffer_bytes
        self.subscriber_stall_seconds = subscriber_stall_seconds
        #: Subscribers cut off because they stopped reading.
        self.cut_off = 0
        #: When set, events go through this NATS connection instead of the LocalBus.
        self.nats = nats
        #: Events a publish stream carried that broke a rule, skipped.
        self.refused = 0
        #: ``nats_messages_published_total`` and ``nats_messages_received_total``, backend ``broker``.
        self.counts = BrokerCounts()

    def publish(self, event: events_pb2.Event) -> int:
        """Validate ``event`` (KosmosError naming the field) and hand it to every matching subscription
        on the LocalBus (Publish and PublishStream go through ``_publish``, which also bridges)."""
        ttl_left = self._check(event)
        delivered = self.bus.publish(event.subject, (time.time_ns() + int(ttl_left * 1e9), _frame(event)))
        self.counts.published(event.subject, delivered)
        return delivered

    def _check(self, event: events_pb2.Event) -> float:
        check_subject(event.subject)
        validate_headers(event.headers)
        return validate_and_fill(event.message, payload_limit=self.payload_limit, require_action=False)

    async def _publish(self, event: events_pb2.Event) -> int:
        """Publish on the LocalBus, or to NATS (where how many took it is not known: 0).

        Bridged, a durable subject goes through JetStream as it would from a NATS client.
        """
        if self.nats is None:
            return self.publish(event)
        self._check(event)
        if self.nats.is_durable(event.subject):
            await self.nats.publish_durable(event.subject, event.message, dict(event.headers))
        else:
            await self.nats.publish_message(event.subject, event.message, dict(event.headers))
        self.counts.published(event.subject, 0)  # NATS delivers: counted as the bridge hands them on
        return 0

    async def Publish(
        self, request: events_pb2.PublishRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> events_pb2.PublishResponse:
        """Validate the event and hand it to every matching subscription (deliveries 0 when bridged to NATS)."""
        if isinstance(request, KosmosError):  # bytes the deserializer would not take
            await abort(context, request)
        try:
            delivered = await self._publish(request.event)
        except KosmosError as exc:
            await abort(context, exc)
        return events_pb2.PublishResponse(message_id=request.event.message.message_id, deliveries=delivered)

    async def PublishStream(
        self,
        requests: AsyncIterator[events_pb2.PublishStreamRequest | KosmosError],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> events_pb2.PublishStreamResponse:
        """Publish batches of events in order. A bad event is skipped, counted and logged (once
        per burst): the stream and the events after it go on (the Python client checks events
        before it sends). A request that does not decode ends the stream INVALID_ARGUMENT."""
        accepted = 0
        async for request in requests:
            if isinstance(request, KosmosError):
                await abort(context, request)
            for event in request.events:
                try:
                    await self._publish(event)
                except KosmosError as exc:
                    self.refused += 1
                    _bursts.warn(
                        "refused", "refused an event on %s from a publish stream: %s", echo(event.subject), exc
                    )
                    continue
                accepted += 1
        return events_pb2.PublishStreamResponse(accepted=accepted)

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Stream the events matching the pattern, from the moment the subscription is in place,
        until the client goes or stops reading for ``subscriber_stall_seconds``."""
        if isinstance(request, KosmosError):
            await abort(context, request)
        if self.nats is not None:
            await self._bridge(request, context)
            return
        try:
            subscription = self.bus.subscribe(
                request.pattern, request.queue or None, max_bytes=self.subscriber_buffer_bytes
            )
        except KosmosError as exc:
            await abort(context, exc)
        try:
            # Headers go out once the subscription is registered: a client that waits for
            # them knows every event published afterwards reaches it.
            await context.send_initial_metadata(())
            async for _, frame in subscription:
                if not await self._write(context, _batch(frame, subscription)):
                    self._cut(subscription, context)
                    return
        finally:
            self.bus.remove(subscription)

    async def _write(self, context: grpc.aio.ServicerContext[Any, Any], message: bytes) -> bool:
        """Send ``message``; False when the client did not take it within the stall bound.

        A write waits while HTTP/2 flow control holds it (the client does not read): the bound
        covers that wait, which a ``yield`` in a generator could not.
        """
        try:
            async with asyncio.timeout(self.subscriber_stall_seconds):
                await context.write(message)
        except TimeoutError:
            return False
        return True

    def _cut(self, subscription: Subscription[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Cut off a subscriber that stopped reading: let go of its buffer, count it, say so once
        per burst, and end its stream RESOURCE_EXHAUSTED (sent once the client reads again)."""
        subscription.discard()  # closed, so offered nothing more, until the handler's end removes it
        self.cut_off += 1
        CUT_OFF.inc()
        stall = self.subscriber_stall_seconds
        _bursts.warn(
            "cut off",
            "cut off a subscriber to %s that read nothing for %.3g s (bus.subscriber_stall_seconds; "
            "counted in kosmos_bus_subscribers_cut_off_total)",
            echo(subscription.pattern),
            stall,
        )
        error = SlowConsumer(
            f"the subscriber read nothing for {stall:g} s (bus.subscriber_stall_seconds), "
            f"{subscription.dropped} events dropped past bus.subscriber_buffer_bytes "
            f"({self.subscriber_buffer_bytes}): cut off",
            metadata={"limit": "bus.subscriber_stall_seconds"},
        )
        set_status(context, error)  # not abort: it would wait behind the write the client is not reading

    async def _bridge(self, request: events_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Subscribe's stream when bridged: the NATS subscription's events, framed as ours."""
        assert self.nats is not None
        try:
            check_queue(request.queue)
            subscription = await self.nats.subscribe(
                request.pattern, queue=request.queue or None, max_bytes=self.subscriber_buffer_bytes
            )
        except KosmosError as exc:
            await abort(context, exc)
        try:
            await context.send_initial_metadata(())
            async for event in subscription:
                self.counts.delivered(event.subject)
                frame = _frame(events_pb2.Event(subject=event.subject, headers=event.headers, message=event.message))
                if not await self._write(context, frame):
                    self._cut(subscription, context)
                    return
        finally:
            await subscription.unsubscribe()


def _weigh(item: Item) -> int:
    return len(item[1])


def _batch(first: bytes, subscription: Subscription[Item]) -> bytes:
    """``first`` and what else is waiting, as one SubscribeResponse well inside the size limit."""
    more = subscription.take_ready(MAX_BATCH - 1, MAX_BATCH_BYTES - len(first), _weigh)
    return first + b"".join(frame for _, frame in more) if more else first


def add_bus_servicer(servicer: EventBusServicer, server: grpc.aio.Server) -> None:
    """Register EventBusService, its requests decoded by :func:`refusing` (an undecodable or
    oversized one is answered INVALID_ARGUMENT or RESOURCE_EXHAUSTED, said once a burst);
    Subscribe sends the bytes serialized at publish."""
    limit = request_limit(servicer.payload_limit)
    values = DEFAULT_MAX_PAYLOAD_VALUES
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            servicer.Publish,
            request_deserializer=refusing(
                events_pb2.PublishRequest, limit, _bursts, max_values=values, layout=BUS_REQUEST
            ),
            response_serializer=events_pb2.PublishResponse.SerializeToString,
        ),
        "PublishStream": grpc.stream_unary_rpc_method_handler(
            servicer.PublishStream,
            request_deserializer=refusing(
                events_pb2.PublishStreamRequest, 2 * limit, _bursts, max_values=values, layout=BUS_REQUEST
            ),
            response_serializer=events_pb2.PublishStreamResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=refusing(events_pb2.SubscribeRequest, SMALL_REQUEST, _bursts)
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(BUS_SERVICE, handlers),))


class BrokerServer:
    """The embedded broker as a gRPC server with health and reflection."""

    def __init__(
        self,
        *,
        address: str = "127.0.0.1:0",
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        grace_seconds: float = 5.0,
        nats_url: str | None = None,
        durable: tuple[str, ...] = DEFAULT_DURABLE,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        subscriber_buffer_bytes: int = DEFAULT_SUBSCRIBER_BUFFER_BYTES,
        subscriber_stall_seconds: float = DEFAULT_SUBSCRIBER_STALL_SECONDS,
    ) -> None:
        self.servicer = EventBusServicer(
            payload_limit=payload_limit,
            subscriber_buffer_bytes=subscriber_buffer_bytes,
            subscriber_stall_seconds=subscriber_stall_seconds,
        )
        self.nats_url = nats_url
        self.payload_limit = payload_limit
        self.durable = durable
        self.max_deliveries = max_deliveries
        self.health = health.aio.HealthServicer()
        self.grace_seconds = grace_seconds
        self._requested = address
        quiet_hang_ups()  # a cut-off subscriber hanging up later is no traceback
        self._server = grpc.aio.server(options=server_options(payload_limit))
        add_bus_servicer(self.servicer, self._server)
        add_health_service(self.health, self._server, _bursts)
        add_reflection_service([BUS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server, _bursts)
        self.port = 0
        #: Gives memory freed after a load back to the system (see :mod:`kosmos_grpc.memory`).
        self.free_memory = FreeMemory()

    @property
    def address(self) -> str:
        """``host:port`` the broker listens on."""
        return f"{self._requested.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        """Bind, start and report SERVING (OSError when the address cannot be listened on)."""
        try:
            self.port = self._server.add_insecure_port(self._requested)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            await self._server.stop(0)
            raise OSError(
                f"the event broker cannot listen on {self._requested}: the address is in use or not available"
            )
        if self.nats_url is not None:
            try:
                nats = NatsEventBus(
                    self.nats_url,
                    source_agent="broker",
                    payload_limit=self.payload_limit,
                    durable=self.durable,
                    max_deliveries=self.max_deliveries,
                )
                self.servicer.nats = await nats.connect()
            except BaseException:
                await self._server.stop(0)
                raise
        await self._server.start()
        self.free_memory.start()
        for service in ("", BUS_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING and stop; open subscriptions end."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.grace_seconds if grace is None else grace)
        await self.free_memory.stop()
        if self.servicer.nats is not None:
            await self.servicer.nats.close()
