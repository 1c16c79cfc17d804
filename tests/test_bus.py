"""Events on both backends (the embedded broker, a real nats-server): the same behaviours, one suite.

Fan-out, queue groups, bounded buffers, handlers, TTL, bad input and counters run against
both; what only the embedded broker has (its acknowledgement counts, grpcurl) is tested on it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from kosmos_grpc import DeadlineExceeded, InvalidEnvelope, from_rpc_error, new_message
from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bus import BrokerServer, Event, GrpcEventBus, NatsEventBus, Subscription
from kosmos_grpc.bus.metrics import FAMILIES, KNOWN_LABELS, OTHER_SUBJECTS
from kosmos_grpc.subjects import AUDIT_LOG, USER_ACTION

from .conftest import ROOT, Mesh, NatsServer, Processes, free_port, run_tool, tool
from .test_metrics import scrape, value


@pytest.fixture
async def broker() -> AsyncIterator[BrokerServer]:
    server = BrokerServer(address="127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


Bus = GrpcEventBus | NatsEventBus


@pytest.fixture(params=["embedded", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "embedded":
        broker = BrokerServer(address="127.0.0.1:0")
        await broker.start()
        try:
            async with GrpcEventBus(broker.address, source_agent="test") as embedded:
                yield embedded
        finally:
            await broker.stop(0)
    else:
        server = NatsServer()
        await server.start()
        try:
            async with NatsEventBus(server.url, source_agent="test") as nats:
                yield nats
        finally:
            await server.stop()


@pytest.fixture
async def embedded(broker: BrokerServer) -> AsyncIterator[GrpcEventBus]:
    async with GrpcEventBus(broker.address, source_agent="test") as client:
        yield client


async def take(subscription: AsyncIterator[Event], count: int, seconds: float = 5) -> list[Event]:
    async with asyncio.timeout(seconds):
        return [await anext(subscription) for _ in range(count)]


async def test_every_plain_subscriber_gets_each_matching_event(bus: Bus) -> None:
    subscribers = [await bus.subscribe(p) for p in ("kosmos.events.>", "kosmos.*.audit.log", AUDIT_LOG)]
    other = await bus.subscribe("kosmos.commands.>")
    message_id = await bus.publish(AUDIT_LOG, {"who": "zeus"}, headers={"traceparent": "00-abc"})
    for subscription in subscribers:
        (event,) = await take(subscription, 1)
        assert event.subject == AUDIT_LOG
        assert event.payload == {"who": "zeus"}
        assert event.headers == {"traceparent": "00-abc"}
        assert event.message_id == message_id
        assert event.message.source_agent == "test"
    await bus.publish("kosmos.commands.scale.up", {"n": 1})
    (command,) = await take(other, 1)
    assert command.subject == "kosmos.commands.scale.up", "the audit event never reached it"


async def test_a_queue_group_gets_each_event_once_spread_over_its_members(bus: Bus) -> None:
    members = [await bus.subscribe(USER_ACTION, queue="workers") for _ in range(3)]
    watcher = await bus.subscribe(USER_ACTION)
    for i in range(30):
        await bus.publish(USER_ACTION, {"i": i})
    everything = await take(watcher, 30)
    assert [e.payload["i"] for e in everything] == list(range(30))
    shares: list[list[int]] = [[] for _ in members]
    for _ in range(100):  # bounded: until the members have 30 between them (each is fed on its own)
        for share, member in zip(shares, members, strict=True):
            share += [e.payload["i"] for e in member.take_ready(100)]
        if sum(map(len, shares)) >= 30:
            break
        await asyncio.sleep(0.05)
    assert sorted(i for share in shares for i in share) == list(range(30)), "each event went to exactly one member"
    assert sum(1 for share in shares if share) >= 2, "spread over the members"


async def test_a_slow_subscriber_loses_events_counted_and_never_slows_the_publisher(bus: Bus) -> None:
    slow = await bus.subscribe(USER_ACTION, capacity=5)
    fast = await bus.subscribe(USER_ACTION)
    for i in range(50):
        await asyncio.wait_for(bus.publish(USER_ACTION, {"i": i}), 2)
    assert [e.payload["i"] for e in await take(fast, 50)] == list(range(50))
    for _ in range(100):  # until all 50 have reached the slow one (each subscription is fed on its own)
        if slow.dropped == 45:
            break
        await asyncio.sleep(0.05)
    assert slow.dropped == 45
    kept = [e.payload["i"] for e in await take(slow, 5)]
    assert kept == [0, 1, 2, 3, 4]


async def test_a_failing_handler_is_counted_and_its_subscription_goes_on(bus: Bus) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(event.payload["i"])
        if event.payload["i"] == 3:
            done.set()
        if event.payload["i"] % 2:
            raise RuntimeError("handler bug")

    subscription = await bus.subscribe(USER_ACTION, handler)
    for i in range(4):
        await bus.publish(USER_ACTION, {"i": i})
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [0, 1, 2, 3]
    assert subscription.handler_errors == 2
    await subscription.unsubscribe()


async def test_a_slow_handler_does_not_hold_up_another_subscription(bus: Bus) -> None:
    release, stuck_in, quick_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stuck_seen: list[int] = []
    quick_seen: list[int] = []

    async def stuck(event: Event) -> None:
        stuck_seen.append(event.payload["i"])
        stuck_in.set()
        await release.wait()

    async def quick(event: Event) -> None:
        quick_seen.append(event.payload["i"])
        if len(quick_seen) == 3:
            quick_done.set()

    await bus.subscribe(USER_ACTION, stuck)
    await bus.subscribe(USER_ACTION, quick)
    await bus.publish(USER_ACTION, {"i": 0})
    await asyncio.wait_for(stuck_in.wait(), 5)  # the stuck handler holds the first event...
    for i in (1, 2):
        await bus.publish(USER_ACTION, {"i": i})
    await asyncio.wait_for(quick_done.wait(), 5)  # ...while the other subscription handles all three
    assert quick_seen == [0, 1, 2]
    assert stuck_seen == [0]
    release.set()


async def test_unsubscribe_ends_iteration_and_delivery(bus: Bus) -> None:
    subscription = await bus.subscribe(USER_ACTION)
    await bus.publish(USER_ACTION, {"i": 0})
    assert [e.payload for e in await take(subscription, 1)] == [{"i": 0}]
    await subscription.unsubscribe()
    await bus.publish(USER_ACTION, {"i": 1})
    async with asyncio.timeout(5):
        assert [e async for e in subscription] == []


async def test_an_event_whose_ttl_has_passed_is_not_delivered(bus: Bus) -> None:
    # The subscriber's clock runs a second ahead: the first event's 50 ms are over by the time it
    # is read, the second's default TTL is not (no waiting for a TTL to run out in real time).
    def ahead() -> int:
        return time.time_ns() + 1_000_000_000

    late: Bus = (
        GrpcEventBus(bus.address, clock=ahead) if isinstance(bus, GrpcEventBus) else NatsEventBus(bus.url, clock=ahead)
    )
    async with late:
        subscription = await late.subscribe(USER_ACTION, capacity=10)
        await bus.publish(USER_ACTION, {"i": 1}, ttl_ms=50)
        await bus.publish(USER_ACTION, {"i": 2})
        assert [e.payload for e in await take(subscription, 1)] == [{"i": 2}]


async def test_the_broker_refuses_an_event_already_past_its_ttl(embedded: GrpcEventBus) -> None:
    subscription = await embedded.subscribe(USER_ACTION)
    with pytest.raises(DeadlineExceeded):
        await _expired(embedded)
    await embedded.publish(USER_ACTION, {"i": 2})
    assert [e.payload for e in await take(subscription, 1)] == [{"i": 2}]


async def _expired(bus: GrpcEventBus) -> None:
    """Publish an envelope whose TTL ran out before it reached the broker."""
    request = events_pb2.PublishRequest()
    request.event.subject = USER_ACTION
    new_message("", {"late": True}, ttl_ms=10, into=request.event.message)
    request.event.message.timestamp.seconds -= 1
    async with grpc.aio.insecure_channel(bus.address) as channel:
        publish = channel.unary_unary(
            "/kosmos.v1.EventBusService/Publish",
            request_serializer=events_pb2.PublishRequest.SerializeToString,
            response_deserializer=events_pb2.PublishResponse.FromString,
        )
        try:
            await publish(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None


@pytest.mark.parametrize(
    ("subject", "field"),
    [("a..b", "subject"), ("a.*", "subject"), ("a b", "subject"), ("x" * 300, "subject")],
)
async def test_a_bad_subject_is_refused_naming_it(bus: Bus, subject: str, field: str) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        await bus.publish(subject, {})
    assert caught.value.field == field


@pytest.mark.parametrize("pattern", ["a.>.b", "a..b", "", "a.b*"])
async def test_a_bad_pattern_is_refused_naming_it(bus: Bus, pattern: str) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        await bus.subscribe(pattern)
    assert caught.value.field == "pattern"
    good = await bus.subscribe(USER_ACTION)
    await bus.publish(USER_ACTION, {"still": "serving"})
    assert [e.payload for e in await take(good, 1)] == [{"still": "serving"}]


async def test_grpcurl_publishes_and_subscribes(broker: BrokerServer, embedded: GrpcEventBus) -> None:
    bus = embedded
    watcher = await bus.subscribe("kosmos.events.>")
    subscriber = await asyncio.create_subprocess_exec(
        tool("grpcurl"),
        "-plaintext",
        "-d",
        '{"pattern": "kosmos.events.user.*"}',
        broker.address,
        "kosmos.v1.EventBusService/Subscribe",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(_until_subscribed(broker, 2), 10)
        code, out, err = await run_tool(
            tool("grpcurl"),
            "-plaintext",
            "-d",
            '{"event": {"subject": "kosmos.events.user.action", "message": {"payload": {"click": 1}}}}',
            broker.address,
            "kosmos.v1.EventBusService/Publish",
        )
        assert code == 0, err
        assert json.loads(out)["deliveries"] == 2
        (seen,) = await take(watcher, 1)
        assert seen.payload == {"click": 1}
        assert subscriber.stdout is not None
        text = ""
        async with asyncio.timeout(10):
            while '"click"' not in text:
                text += (await subscriber.stdout.readline()).decode()
        assert "kosmos.events.user.action" in text
    finally:
        subscriber.kill()
        await subscriber.wait()


async def _until_subscribed(broker: BrokerServer, count: int) -> None:
    """Wait (polling: the broker has no event for it) until ``count`` subscriptions are in place."""
    for _ in range(500):
        if len(broker.servicer.bus) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} subscriptions after 10 s")


async def test_a_burst_arrives_complete_and_in_order(bus: Bus) -> None:
    subscription = await bus.subscribe(USER_ACTION, capacity=5000)
    for i in range(3000):  # far more than one batch each way
        await bus.publish(USER_ACTION, {"i": i})
    await bus.flush()
    events = await take(subscription, 3000, seconds=20)
    assert [e.payload["i"] for e in events] == list(range(3000))
    assert subscription.dropped == 0


async def test_an_acknowledged_publish_says_how_many_took_it(embedded: GrpcEventBus, broker: BrokerServer) -> None:
    bus = embedded
    await bus.subscribe(USER_ACTION)
    await bus.subscribe(USER_ACTION, queue="q")
    await bus.subscribe(USER_ACTION, queue="q")
    message_id = await bus.publish(USER_ACTION, {"x": 1}, acknowledge=True)
    assert len(message_id) == 36
    async with grpc.aio.insecure_channel(broker.address) as channel:
        publish = channel.unary_unary(
            "/kosmos.v1.EventBusService/Publish",
            request_serializer=events_pb2.PublishRequest.SerializeToString,
            response_deserializer=events_pb2.PublishResponse.FromString,
        )
        request = events_pb2.PublishRequest()
        request.event.subject = USER_ACTION
        reply = await publish(request, timeout=5)
    assert reply.deliveries == 2, "the plain subscriber, and the queue group once"
    assert len(reply.message_id) == 36, "the broker fills in an empty message_id"


async def test_counters_count_published_received_and_dropped_events(bus: Bus) -> None:
    from prometheus_client import REGISTRY

    backend = "nats" if isinstance(bus, NatsEventBus) else "embedded"

    def value(name: str, subject: str = "kosmos.events.user") -> float:
        return REGISTRY.get_sample_value(name, {"backend": backend, "subject": subject}) or 0.0

    before = {n: value(n) for n in ("nats_messages_published_total", "nats_messages_received_total")}
    dropped_before = value("kosmos_events_dropped_total")
    reader = await bus.subscribe("kosmos.events.user.>")
    slow = await bus.subscribe("kosmos.events.user.>", capacity=2)
    for i in range(5):
        await bus.publish(USER_ACTION, {"i": i})
    await take(reader, 5)
    for _ in range(100):  # bounded: until the slow one has had all 5 too (each subscription is fed on its own)
        if value("nats_messages_received_total") - before["nats_messages_received_total"] >= 10:
            break
        await asyncio.sleep(0.05)
    assert value("nats_messages_published_total") - before["nats_messages_published_total"] == 5
    assert value("nats_messages_received_total") - before["nats_messages_received_total"] == 10
    assert slow.dropped == 3
    assert value("kosmos_events_dropped_total") - dropped_before == 3


async def test_after_a_nats_server_restart_clients_reconnect_and_subscriptions_resume() -> None:
    server = NatsServer()
    await server.start()
    try:
        async with NatsEventBus(server.url, source_agent="test") as bus:
            subscription = await bus.subscribe("kosmos.events.>")
            await bus.publish(USER_ACTION, {"before": True})
            assert [e.payload for e in await take(subscription, 1)] == [{"before": True}]
            await server.stop(clean=False)  # by its PID: killed, no goodbye
            await server.start()  # the same port and store
            for _ in range(400):  # polling: nats-py says when it is connected, not a wake-up
                if bus.nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            assert bus.nc.is_connected, "no reconnect within 20 s"
            await bus.publish(USER_ACTION, {"after": True}, acknowledge=True)
            assert [e.payload for e in await take(subscription, 1, seconds=10)] == [{"after": True}]
    finally:
        await server.stop()


async def test_the_broker_bridges_grpc_clients_to_nats() -> None:
    server = NatsServer()
    await server.start()
    broker = BrokerServer(address="127.0.0.1:0", nats_url=server.url)
    await broker.start()
    try:
        async with (
            NatsEventBus(server.url, source_agent="native") as native,
            GrpcEventBus(broker.address, source_agent="grpc-only") as grpc_only,
        ):
            on_nats = await native.subscribe("kosmos.events.>")
            via_broker = await grpc_only.subscribe("kosmos.events.>")
            await grpc_only.publish(AUDIT_LOG, {"from": "grpc"}, acknowledge=True)
            await native.publish(USER_ACTION, {"from": "nats"}, acknowledge=True)
            assert [(e.subject, e.payload) for e in await take(on_nats, 2)] == [
                (AUDIT_LOG, {"from": "grpc"}),
                (USER_ACTION, {"from": "nats"}),
            ]
            seen = await take(via_broker, 2)
            assert [(e.subject, e.payload) for e in seen] == [
                (AUDIT_LOG, {"from": "grpc"}),
                (USER_ACTION, {"from": "nats"}),
            ]
            assert seen[1].message.source_agent == "native"
    finally:
        await broker.stop(0)
        await server.stop()


async def test_a_handler_publishes_through_ctx_bus(bus: Bus, mesh: Mesh) -> None:
    from .helpers.agents import Announcer

    server = await mesh.serve(Announcer())
    server.attach_bus(bus)
    heard = await bus.subscribe("kosmos.events.>")
    async with mesh.client() as client:
        response = await client.delegate("announcer", "announce", {"subject": USER_ACTION, "data": {"hello": "world"}})
    (event,) = await take(heard, 1)
    assert event.payload == {"hello": "world"}
    assert event.message_id == response.result["message_id"]
    assert event.message.source_agent == "test"


async def test_large_events_arrive_whole_in_batches_under_the_size_limit(bus: Bus) -> None:
    subscription = await bus.subscribe(USER_ACTION, capacity=100)
    blob = "x" * 200_000
    events = []
    for burst in range(6):  # 6 MB in all, more than one message may carry, in bursts that the
        for i in range(5):  # broker's buffer for a subscriber (1 MiB) holds whole
            await bus.publish(USER_ACTION, {"i": 5 * burst + i, "blob": blob})
        await bus.flush()
        events += await take(subscription, 5, seconds=20)
    assert [e.payload["i"] for e in events] == list(range(30))
    assert all(len(e.payload["blob"]) == 200_000 for e in events)


async def test_closing_a_bus_ends_its_subscriptions(bus: Bus) -> None:
    subscription = await bus.subscribe(USER_ACTION)
    await bus.close()
    async with asyncio.timeout(5):
        assert [e async for e in subscription] == []


async def test_a_bad_event_in_a_publish_stream_is_skipped_and_the_rest_go_on(broker: BrokerServer) -> None:
    async with GrpcEventBus(broker.address) as bus:
        subscription = await bus.subscribe(USER_ACTION)
        batch = events_pb2.PublishStreamRequest()
        for n, ttl_ms in ((1, 60_000), (2, 10), (3, 60_000)):
            event = batch.events.add(subject=USER_ACTION)
            new_message("", {"n": n}, ttl_ms=ttl_ms, into=event.message)
        batch.events[1].message.timestamp.seconds -= 1  # long expired
        async with grpc.aio.insecure_channel(broker.address) as channel:
            stream = channel.stream_unary(
                "/kosmos.v1.EventBusService/PublishStream",
                request_serializer=events_pb2.PublishStreamRequest.SerializeToString,
                response_deserializer=events_pb2.PublishStreamResponse.FromString,
            )
            reply = await stream(iter([batch]), timeout=5)
        assert reply.accepted == 2
        assert [e.payload for e in await take(subscription, 2)] == [{"n": 1}, {"n": 3}]
        assert broker.servicer.refused == 1


async def test_publishing_and_subscriptions_go_on_after_the_broker_restarts() -> None:
    first = BrokerServer(address="127.0.0.1:0")
    await first.start()
    address = first.address
    second: BrokerServer | None = None
    try:
        async with GrpcEventBus(address) as publisher, GrpcEventBus(address) as receiver:
            before = await receiver.subscribe(USER_ACTION)
            await publisher.publish(USER_ACTION, {"n": 0})
            assert [e.payload for e in await take(before, 1)] == [{"n": 0}]
            await first.stop(0)
            second = BrokerServer(address=address)
            await second.start()
            got: list[Event] = []
            for n in range(1, 200):  # events sent while the streams reopen may be lost (at most once)
                await publisher.publish(USER_ACTION, {"n": n})
                got += before.take_ready(10)
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got, "no event reached the old subscription after the restart"
            assert before.error is None
    finally:
        await first.stop(0)
        if second is not None:
            await second.stop(0)


async def test_delegation_events_can_be_turned_off(broker: BrokerServer, mesh: Mesh) -> None:
    from agents.zeus import Zeus

    from .helpers.agents import Echo

    async with GrpcEventBus(broker.address) as watcher:
        heard = await watcher.subscribe("kosmos.agents.>")
        await mesh.serve(Echo())
        quiet = await mesh.serve(Zeus(), delegation_events=False)
        zeus_bus = GrpcEventBus(broker.address, source_agent="zeus")
        quiet.attach_bus(zeus_bus)
        async with mesh.client() as client:
            await client.delegate("zeus", "delegate", {"agent": "echo", "action": "echo", "payload": {"a": 1}})
        # A marker after the delegation on zeus's own bus, whose events reach the broker in order:
        # had the delegation been announced, its events would come before the marker.
        await zeus_bus.publish("kosmos.agents.test.marker", {"marker": True})
        (first,) = await take(heard, 1)
        assert first.subject == "kosmos.agents.test.marker", f"a delegation was announced: {first}"


async def test_a_subscriber_that_stopped_reading_never_holds_up_publishers(broker: BrokerServer) -> None:
    async with grpc.aio.insecure_channel(broker.address) as channel, GrpcEventBus(broker.address) as bus:
        stuck = channel.unary_stream(
            "/kosmos.v1.EventBusService/Subscribe",
            request_serializer=events_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=events_pb2.SubscribeResponse.FromString,
        )(events_pb2.SubscribeRequest(pattern=USER_ACTION))
        await stuck.initial_metadata()  # subscribed, and never read from again
        reader = await bus.subscribe(USER_ACTION, capacity=2000)
        blob = "x" * 16_384
        async with asyncio.timeout(60):  # 24 MB: far past what the stuck stream's window and buffer hold
            for i in range(1500):
                await bus.publish(USER_ACTION, {"i": i, "blob": blob}, acknowledge=True)
        assert [e.payload["i"] for e in await take(reader, 1500, seconds=20)] == list(range(1500))
        at_broker = [s for s in broker.servicer.bus._trie.match(USER_ACTION) if isinstance(s, Subscription)]
        assert any(s.dropped > 0 for s in at_broker), "the stuck subscriber's buffer at the broker overflowed"
        stuck.cancel()


async def test_a_handler_continues_the_publishers_trace(bus: Bus) -> None:
    tracer = TracerProvider().get_tracer("test")
    seen: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append((trace.get_current_span().get_span_context().trace_id, event.message.trace_id))
        done.set()

    subscription = await bus.subscribe(USER_ACTION, handler)
    with tracer.start_as_current_span("publisher") as publisher:
        await bus.publish(USER_ACTION, {"traced": True}, acknowledge=True)
    await asyncio.wait_for(done.wait(), 5)
    await subscription.unsubscribe()
    trace_id = publisher.get_span_context().trace_id
    # The handler runs in the publisher's trace, which the event's envelope names too.
    assert seen == [(trace_id, format(trace_id, "032x"))]


async def test_the_brokers_metrics_count_what_it_carried(processes: Processes, tmp_path: Path) -> None:
    bus_port, metrics_port = free_port(), free_port()
    config = tmp_path / "kosmos.toml"
    config.write_text(
        f'[bus]\naddress = "127.0.0.1:{bus_port}"\nmetrics_port = {metrics_port}\n\n'
        f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "127.0.0.1:{free_port()}"\n'
    )
    processes.start(sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "broker")
    address = f"127.0.0.1:{bus_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)  # bounded: the broker starts within seconds
    async with GrpcEventBus(address, source_agent="test") as client:
        events, actions = await client.subscribe("kosmos.events.>"), await client.subscribe(USER_ACTION)
        orders = await client.subscribe("orders.>")
        for i in range(3):
            await client.publish(USER_ACTION, {"i": i})
        await client.publish("orders.created.eu", {"i": 3})
        for subject in (f"kosmos.t{i}.x" for i in range(70)):  # many prefixes, none of the mesh's
            await client.publish(subject, {})
        await take(events, 3)
        await take(actions, 3)
        await take(orders, 1)
        await client.publish(USER_ACTION, {"i": 4})  # past every event before: once it arrives, all were counted
        await take(actions, 1)
    samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")

    def count(name: str, subject: str) -> float | None:
        return value(samples, name, backend="broker", subject=subject)

    assert count("nats_messages_published_total", "kosmos.events.user") == 4
    assert count("nats_messages_received_total", "kosmos.events.user") == 8  # each to both subscriptions
    # A subject outside the mesh's families is "other": labels come from a fixed set.
    assert count("nats_messages_published_total", "other") == 1 + 70
    assert count("nats_messages_received_total", "other") == 1
    subjects = {dict(labels)["subject"] for name, labels in samples if name == "nats_messages_published_total"}
    assert subjects <= KNOWN_LABELS | FAMILIES | {OTHER_SUBJECTS}
