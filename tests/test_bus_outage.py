"""A bus outlives its server: subscriptions come back after a broker restart, and NATS is waited for without end."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kosmos_grpc._proto.kosmos.v1 import events_pb2, events_pb2_grpc
from kosmos_grpc.bus import Event, GrpcEventBus, NatsEventBus, Subscription
from kosmos_grpc.bus.event import event_message
from kosmos_grpc.bus.nats_connection import RECONNECT_ATTEMPTS
from kosmos_grpc.bus.outage import Outage
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, DEFAULT_TTL_MS
from kosmos_grpc.subjects import USER_ACTION

from .conftest import NatsServer, Processes, free_port
from .test_bus import take

LOST = "lost the event broker at {address} ({cause}); trying again (events published meanwhile are not delivered)"


class Broker:
    """`kosmos broker` as a process of its own, on one address however often it is started."""

    def __init__(self, processes: Processes, tmp_path: Path) -> None:
        self.processes = processes
        self.address = f"127.0.0.1:{free_port()}"
        self.config = tmp_path / "kosmos.toml"
        self.config.write_text(
            f'[bus]\naddress = "{self.address}"\n\n'
            f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "127.0.0.1:{free_port()}"\n'
        )
        self.process: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        self.process = self.processes.start(
            sys.executable, "-m", "kosmos_grpc.cli", "--config", str(self.config), "broker"
        )
        async with grpc.aio.insecure_channel(self.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)  # bounded: the broker starts within seconds

    def kill(self) -> None:
        """SIGKILL by its PID: no goodbye to its subscribers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def broker(processes: Processes, tmp_path: Path) -> Broker:
    return Broker(processes, tmp_path)


async def publish(address: str, payload: dict[str, Any]) -> int:
    """Publish acknowledged, straight to the broker; how many subscriptions it was handed to."""
    request = events_pb2.PublishRequest()
    request.event.subject = USER_ACTION
    event_message(
        USER_ACTION,
        payload,
        None,
        source_agent="test",
        correlation_id=None,
        ttl_ms=DEFAULT_TTL_MS,
        message_id=None,
        payload_limit=DEFAULT_PAYLOAD_LIMIT,
        into=request.event.message,
    )
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/kosmos.v1.EventBusService/Publish",
            request_serializer=events_pb2.PublishRequest.SerializeToString,
            response_deserializer=events_pb2.PublishResponse.FromString,
        )
        reply = await call(request, timeout=5)
    return reply.deliveries


async def until_subscribed(address: str, count: int, seconds: float = 30) -> None:
    """Publish probes until ``count`` subscriptions take one (those sent before are lost: at most once)."""
    deadline = time.monotonic() + seconds
    while await publish(address, {"probe": True}) < count:
        assert time.monotonic() < deadline, f"fewer than {count} subscriptions came back within {seconds} s"
        await asyncio.sleep(0.05)


async def until_attempts(bus: GrpcEventBus, attempts: int, seconds: float = 30) -> None:
    """Wait (polling: the bus has no event for it) until the bus has failed to subscribe again ``attempts`` times."""
    deadline = time.monotonic() + seconds
    while bus.outage.attempts < attempts:
        assert time.monotonic() < deadline, "the subscriptions did not try to subscribe again"
        await asyncio.sleep(0.05)


def bus_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("kosmos_grpc.bus")]


async def after_probes(subscription: Subscription[Event], seconds: float = 10) -> Event:
    """The subscription's first event that is not a probe."""
    async with asyncio.timeout(seconds):
        async for event in subscription:
            if "probe" not in event.payload:
                return event
    raise AssertionError("the subscription ended")


async def test_subscriptions_come_back_after_the_broker_is_killed_and_started_again(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await broker.start()
    handled: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handler(event: Event) -> None:
        if "probe" not in event.payload:
            handled.put_nowait(event.payload)

    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        iterated = await bus.subscribe(USER_ACTION)
        await bus.subscribe(USER_ACTION, handler)
        assert await publish(broker.address, {"n": 0}) == 2
        assert [e.payload for e in await take(iterated, 1)] == [{"n": 0}]
        assert await asyncio.wait_for(handled.get(), 10) == {"n": 0}
        broker.kill()
        await until_attempts(bus, 3)  # several attempts fail while it is away: none is a line of its own
        await broker.start()  # the same address, a new process
        await until_subscribed(broker.address, 2)
        assert await publish(broker.address, {"n": 1}) == 2
        assert (await after_probes(iterated)).payload == {"n": 1}
        assert await asyncio.wait_for(handled.get(), 10) == {"n": 1}
        assert iterated.error is None
        assert not bus.outage.lost
    lines = bus_lines(caplog)
    assert lines[0] == LOST.format(address=broker.address, cause="UNAVAILABLE")
    assert lines[1].startswith(f"the event broker at {broker.address} is back after ")
    assert len(lines) == 2, lines  # once lost, once back, for both subscriptions together


async def test_publishing_while_the_broker_is_away_is_one_line_then_one_with_the_events_lost(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await broker.start()
    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        await bus.publish(USER_ACTION, {"n": 0})
        await bus.flush()
        broker.kill()
        deadline = time.monotonic() + 30
        while bus.outage.attempts < 5:  # every event published now breaks the stream again: no line each
            assert time.monotonic() < deadline, "publishing did not notice the broker had gone"
            await bus.publish(USER_ACTION, {"n": "away"})
            await asyncio.sleep(0.05)
        await broker.start()
        while bus.outage.lost:  # the next publish that gets through ends the outage
            assert time.monotonic() < deadline + 30, "publishing did not resume"
            await bus.publish(USER_ACTION, {"n": "back"})
            await bus.flush()
            await asyncio.sleep(0.05)
    lines = bus_lines(caplog)
    assert lines[0] == LOST.format(address=broker.address, cause="the publish stream broke")
    assert lines[1].startswith(f"the event broker at {broker.address} is back after ")
    assert " events published meanwhile were lost" in lines[1]
    assert len(lines) == 2, lines  # it was a line for every event published while the broker was away


async def test_a_subscription_ended_while_the_broker_is_away_stops_at_once_and_never_comes_back(
    broker: Broker,
) -> None:
    await broker.start()
    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        ended = await bus.subscribe(USER_ACTION)
        kept = await bus.subscribe(USER_ACTION)
        broker.kill()
        await until_attempts(bus, 1)
        async with asyncio.timeout(5):
            await ended.unsubscribe()
        assert len(bus._readers) == 1, "the ended subscription's reader stopped, its backoff too"
        await broker.start()
        await until_subscribed(broker.address, 1)
        assert await publish(broker.address, {"n": 1}) == 1
        assert (await after_probes(kept)).payload == {"n": 1}  # an event: the broker is back
        assert not bus.outage.lost, "only the kept subscription was waited for"
        assert [e async for e in ended] == []


async def test_an_outage_is_told_once_summarised_at_most_every_30_seconds_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = Outage("127.0.0.1:50050", clock=lambda: now[0])
    first, second = object(), object()
    outage.lose(first, "UNAVAILABLE")
    outage.lose(second, "UNAVAILABLE")
    for _ in range(100):  # 2 s apart, the cap of the backoff: 200 s of attempts
        now[0] += 2
        outage.failed("UNAVAILABLE")
    outage.found(first)
    assert outage.lost, "the second subscription is still away"
    outage.lose(second, "the publish stream broke", 3)  # a part that breaks again is one more attempt
    outage.found(second)
    assert [r.getMessage() for r in caplog.records] == [
        LOST.format(address="127.0.0.1:50050", cause="UNAVAILABLE"),
        *(
            f"still trying the event broker at 127.0.0.1:50050 ({n} failed attempts, {2 * n} s; last: UNAVAILABLE)"
            for n in (15, 30, 45, 60, 75, 90)
        ),
        "the event broker at 127.0.0.1:50050 is back after 101 failed attempts (200.0 s);"
        " 3 events published meanwhile were lost",
    ]


async def test_nats_is_reconnected_to_without_end(nats_server: NatsServer) -> None:
    async with NatsEventBus(nats_server.url, durable=()) as bus:
        # Set after the first connect, which tries once: nats-py must read them at each reconnect.
        assert bus.nc.options["allow_reconnect"] is True
        assert bus.nc.options["max_reconnect_attempts"] == RECONNECT_ATTEMPTS == -1
        subscription = await bus.subscribe(USER_ACTION)
        bus.nc.options["reconnect_time_wait"] = 0.01  # only to reach nats-py's old limit in seconds, not a minute
        await nats_server.stop(clean=False)
        deadline = time.monotonic() + 60
        while bus.reconnects.attempts <= 300:  # past the 240 after which nats-py used to close for good
            assert not bus.nc.is_closed, f"nats-py gave up after {bus.reconnects.attempts} attempts"
            assert time.monotonic() < deadline, "nats-py did not keep trying to reconnect"
            await asyncio.sleep(0.05)
        await nats_server.start()  # the same port
        while not bus.nc.is_connected:
            assert not bus.nc.is_closed, "nats-py gave up"
            assert time.monotonic() < deadline + 30, "nats-py did not reconnect"
            await asyncio.sleep(0.05)
        await bus.publish(USER_ACTION, {"after": "reconnect"}, acknowledge=True)
        assert [e.payload for e in await take(subscription, 1, seconds=10)] == [{"after": "reconnect"}]


class HangingUp(events_pb2_grpc.EventBusServiceServicer):
    """A broker (a real gRPC server) that takes each subscription and ends it at once, OK, with no event."""

    def __init__(self) -> None:
        self.subscribes = 0

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[events_pb2.SubscribeResponse]:
        self.subscribes += 1
        await context.send_initial_metadata(())
        return
        yield  # a generator that yields nothing: the stream ends OK

    async def Publish(
        self, request: events_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> events_pb2.PublishResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this broker only hangs up")

    async def PublishStream(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> events_pb2.PublishStreamResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this broker only hangs up")


async def test_a_broker_that_ends_every_subscription_at_once_is_one_outage_reopened_with_a_growing_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    hanging_up = HangingUp()
    server = grpc.aio.server()
    events_pb2_grpc.add_EventBusServiceServicer_to_server(hanging_up, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with GrpcEventBus(f"127.0.0.1:{port}", source_agent="test") as bus:
            subscription = await bus.subscribe(USER_ACTION)
            deadline = time.monotonic() + 30
            while hanging_up.subscribes < 5:  # four ends, each subscribed again
                assert time.monotonic() < deadline, f"only {hanging_up.subscribes} subscribes in 30 s"
                await asyncio.sleep(0.05)
            assert subscription.error is None, "an outage, not a refusal: it goes on trying"
            assert bus.outage.is_away(subscription), "a stream that proves nothing is not the broker back"
    finally:
        await server.stop(0)
    lines = bus_lines(caplog)
    assert lines[0].startswith(f"lost the event broker at 127.0.0.1:{port} (the stream ended)")
    assert not [line for line in lines if "is back" in line], lines  # no 'lost'/'back' pair per reopening
    assert len(lines) == 1, lines
