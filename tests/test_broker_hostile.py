"""The embedded broker against hostile clients: non-reading subscribers, bytes that do not decode,
long names, many distinct patterns. Real broker on port 0, real gRPC clients."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from kosmos_grpc import from_rpc_error, new_message
from kosmos_grpc._grpc import channel_options
from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bounds import BUS_REQUEST, DEFAULT_MAX_PAYLOAD_VALUES, too_many_values
from kosmos_grpc.bus import BUS_SERVICE, BrokerServer, GrpcEventBus, LocalBus
from kosmos_grpc.bus import metrics as bus_metrics
from kosmos_grpc.bus.metrics import AGENT_LABELS, FAMILIES, KNOWN_LABELS, OTHER_SUBJECTS
from kosmos_grpc.quoting import ECHO_CHARS
from kosmos_grpc.subjects import SubjectTrie, matches

from .test_bus import take

STALL = 0.3
BUFFER = 16 * 1024
# A client that stops reading holds at most this window: the cut-off comes after a few hundred KB.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


def _same(data: bytes) -> bytes:
    """Identity (de)serializer: the bytes go on the wire as they are."""
    return data


@pytest.fixture
async def broker() -> AsyncIterator[BrokerServer]:
    server = BrokerServer(address="127.0.0.1:0", subscriber_buffer_bytes=BUFFER, subscriber_stall_seconds=STALL)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def test_a_subscriber_that_stops_reading_is_cut_off_counted_and_logged_once(
    broker: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kosmos_grpc.bus.broker")
    cut_before = REGISTRY.get_sample_value("kosmos_bus_subscribers_cut_off_total") or 0.0
    request = events_pb2.SubscribeRequest(pattern="kosmos.events.>").SerializeToString()
    channels = [grpc.aio.insecure_channel(broker.address, options=SMALL_WINDOW) for _ in range(3)]
    try:
        stalled: list[grpc.aio.UnaryStreamCall[bytes, bytes]] = []
        for channel in channels:
            open_call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                f"/{BUS_SERVICE}/Subscribe", request_serializer=_same, response_deserializer=_same
            )
            stalled.append(open_call(request))
        for waiting in stalled:  # in place at the broker; then never read
            await asyncio.wait_for(waiting.initial_metadata(), 10)
        async with GrpcEventBus(broker.address, source_agent="test") as bus:
            reader = await bus.subscribe("kosmos.events.>", capacity=100_000)
            blob = "x" * 4000
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 30  # bounded: the cut-off comes STALL after the windows fill
            sent = 0
            while broker.servicer.cut_off < 3 and loop.time() < give_up:
                for _ in range(20):
                    await bus.publish("kosmos.events.user.action", {"blob": blob}, acknowledge=True)
                    sent += 1
                await take(reader, 20)  # the reading subscriber keeps getting every event
                await asyncio.sleep(0.01)
            assert broker.servicer.cut_off == 3
            assert len(broker.servicer.bus) == 1, "only the reading subscriber is left"
            await bus.publish("kosmos.events.user.action", {"after": True}, acknowledge=True)
            (event,) = await take(reader, 1)
            assert event.payload == {"after": True}
        for stalled_call in stalled:  # reading again, each gets what the transport held, then the status
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stalled_call:
                    pass
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "bus.subscriber_stall_seconds" in (caught.value.details() or "")
    finally:
        for channel in channels:
            await channel.close()
    assert (REGISTRY.get_sample_value("kosmos_bus_subscribers_cut_off_total") or 0.0) - cut_before == 3
    lines = [r for r in caplog.records if "cut off a subscriber" in r.getMessage()]
    assert len(lines) == 1, "three cut off in one burst: one line"


async def test_dropped_event_labels_stay_a_fixed_set_however_many_patterns(broker: BrokerServer) -> None:
    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        patterns = [
            *(f"kosmos.tenant{i}.>" for i in range(60)),
            *(f"kosmos.agents.agent{i}.requests" for i in range(60)),
            *(f"orders{i}.*" for i in range(60)),
            *(f"kosmos.events.kind{i}.>" for i in range(60)),
        ]
        for pattern in patterns:
            await bus.subscribe(pattern)
    labels = {
        sample.labels["subject"]
        for metric in REGISTRY.collect()
        if metric.name == "kosmos_events_dropped"
        for sample in metric.samples
    }
    allowed = KNOWN_LABELS | FAMILIES | {OTHER_SUBJECTS}
    agents = {label for label in labels if label.startswith("kosmos.agents.")}
    assert labels - agents <= allowed
    assert len(agents) <= AGENT_LABELS


@pytest.mark.parametrize("method", ["Publish", "PublishStream", "Subscribe"])
async def test_undecodable_bytes_are_invalid_argument_without_a_traceback(
    broker: BrokerServer, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    garbage = b"\x0a\xff\xff\xff\x0f"  # field 1, a length past the end
    path = f"/{BUS_SERVICE}/{method}"
    async with grpc.aio.insecure_channel(broker.address) as channel:

        async def send() -> None:
            if method == "Publish":
                unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    path, request_serializer=_same, response_deserializer=_same
                )
                await unary(garbage, timeout=5)
            elif method == "PublishStream":
                stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
                    path, request_serializer=_same, response_deserializer=_same
                )
                await stream(iter([garbage]), timeout=5)
            else:
                subscribe: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                    path, request_serializer=_same, response_deserializer=_same
                )
                async for _ in subscribe(garbage, timeout=5):
                    pass

        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await send()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "protobuf decoding failed" in (caught.value.details() or "")
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert "Traceback" not in caplog.text
    assert len([r for r in caplog.records if "not a valid kosmos.v1" in r.getMessage()]) <= 1, "once per burst"


async def test_long_headers_subjects_and_queues_are_refused_naming_the_field_briefly(broker: BrokerServer) -> None:
    async with grpc.aio.insecure_channel(broker.address) as channel:
        publish = channel.unary_unary(
            f"/{BUS_SERVICE}/Publish",
            request_serializer=events_pb2.PublishRequest.SerializeToString,
            response_deserializer=events_pb2.PublishResponse.FromString,
        )
        subscribe: grpc.aio.UnaryStreamMultiCallable[events_pb2.SubscribeRequest, bytes] = channel.unary_stream(
            f"/{BUS_SERVICE}/Subscribe", request_serializer=events_pb2.SubscribeRequest.SerializeToString
        )

        def event(subject: str, headers: dict[str, str]) -> events_pb2.PublishRequest:
            request = events_pb2.PublishRequest()
            request.event.subject = subject
            request.event.headers.update(headers)
            new_message("", {}, into=request.event.message)
            return request

        long = "x" * 50_000
        cases = [
            (publish(event("kosmos.events.user.action", {f"a b{long}": "v"})), "headers"),
            (publish(event("kosmos.events.user.action", {"name": f"{long}\n"})), "headers"),
            (publish(event(f"kosmos.{long}", {})), "subject"),
        ]
        for call, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(caught.value.details() or "") < 3 * ECHO_CHARS
            assert from_rpc_error(caught.value).metadata["field"] == field
        for request, field in (
            (events_pb2.SubscribeRequest(pattern="kosmos.>", queue=long), "queue"),
            (events_pb2.SubscribeRequest(pattern=f"kosmos. {long}"), "pattern"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in subscribe(request, timeout=5):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(caught.value.details() or "") < 3 * ECHO_CHARS
            assert from_rpc_error(caught.value).metadata["field"] == field


def test_the_trie_with_its_cache_agrees_with_the_reference_while_patterns_come_and_go() -> None:
    rng = random.Random(12)
    words = ["kosmos", "events", "user", "a", "b"]

    def subject() -> str:
        return ".".join(rng.choice(words) for _ in range(rng.choice([1, 2, 3, 4, 7, 13])))

    def pattern() -> str:
        tokens = [rng.choice([*words, "*", "*"]) for _ in range(rng.choice([1, 2, 3, 4, 7, 13]))]
        if rng.random() < 0.25:
            tokens[-1] = ">"
        return ".".join(tokens)

    trie: SubjectTrie[int] = SubjectTrie()
    bits: SubjectTrie[int] = SubjectTrie()
    bits.WALK_BUDGET = 0  # every match by the bitsets, none by the walk
    live: dict[int, str] = {}
    subjects = [subject() for _ in range(60)]  # a few, published again and again: the cache is used
    for step in range(1500):
        if live and rng.random() < 0.3:
            key = rng.choice(list(live))
            removed = live.pop(key)
            assert trie.remove(removed, key)
            assert bits.remove(removed, key)
        else:
            live[step] = pattern()
            trie.add(live[step], step)
            bits.add(live[step], step)
        for s in [*rng.sample(subjects, 2), subject()]:
            expected = sorted(k for k, p in live.items() if matches(p, s))
            assert sorted(trie.match(s)) == expected, s
            assert sorted(bits.match(s)) == expected, s


def test_queue_groups_and_rest_wildcards_still_deliver_through_the_cache() -> None:
    bus: LocalBus[int] = LocalBus()
    group = [bus.subscribe("kosmos.events.>", queue="workers") for _ in range(3)]
    rest = bus.subscribe("kosmos.>")
    for i in range(30):
        assert bus.publish("kosmos.events.user.action", i) == 2, "one of the group, and the '>' one"
    assert [len(list(member.take_ready(100))) for member in group] == [10, 10, 10]
    assert len(rest.take_ready(100)) == 30
    bus.remove(rest)
    assert bus.publish("kosmos.events.user.action", 0) == 1, "the cache forgot the one removed"


async def test_an_event_of_too_many_values_is_refused_before_it_is_parsed(broker: BrokerServer) -> None:
    """A payload of 150,000 keys took the broker half a second to parse before it was refused."""
    request = events_pb2.PublishRequest()
    request.event.subject = "kosmos.events.audit.log"
    new_message("note", {f"k{i}": i for i in range(150_000)}, into=request.event.message)
    data = request.SerializeToString()
    assert too_many_values(data, DEFAULT_MAX_PAYLOAD_VALUES, BUS_REQUEST)
    async with grpc.aio.insecure_channel(broker.address, options=channel_options()) as channel:
        publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{BUS_SERVICE}/Publish", request_serializer=_same, response_deserializer=_same
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await publish(data, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "values" in (caught.value.details() or "")
    assert from_rpc_error(caught.value).metadata.get("field") == "payload"


def test_once_the_meshs_agents_are_known_no_client_takes_their_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_metrics, "_agents_seen", set())
    monkeypatch.setattr(bus_metrics, "_agents_known", False)
    bus_metrics.label_agents(["zeus", "athena"])
    for junk in range(2 * AGENT_LABELS):  # a client publishing on made-up agents' subjects first
        assert bus_metrics.subject_label(f"kosmos.agents.junk{junk}.requests") == "kosmos.agents"
    assert bus_metrics.subject_label("kosmos.agents.athena.responses") == "kosmos.agents.athena"


async def test_a_cut_off_subscriber_hanging_up_leaves_no_traceback(
    broker: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="grpc._cython.cygrpc")
    request = events_pb2.SubscribeRequest(pattern="kosmos.events.>").SerializeToString()
    tasks = len(asyncio.all_tasks())
    channel = grpc.aio.insecure_channel(broker.address, options=SMALL_WINDOW)
    try:
        subscribe: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            f"/{BUS_SERVICE}/Subscribe", request_serializer=_same, response_deserializer=_same
        )
        stalled = subscribe(request)
        await asyncio.wait_for(stalled.initial_metadata(), 10)
        async with GrpcEventBus(broker.address, source_agent="test") as bus:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 30
            while broker.servicer.cut_off < 1 and loop.time() < give_up:  # bounded
                for _ in range(20):
                    await bus.publish("kosmos.events.user.action", {"blob": "x" * 4000}, acknowledge=True)
                await asyncio.sleep(0.01)
        assert broker.servicer.cut_off == 1
    finally:
        await channel.close()  # hangs up without reading: the status gRPC holds can never be sent
    for _ in range(500):  # until gRPC's task for the call is done (bounded)
        if len(asyncio.all_tasks()) <= tasks:
            break
        await asyncio.sleep(0.02)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
