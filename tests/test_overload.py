"""Hostile clients and floods against a real server: streams end whatever the client does, one
connection cannot hold every slot, a flood is shed by the mesh's own admission, and a burst of
the same warning is said once."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from agents.zeus import Zeus
from kosmos_grpc import Agent, Context, action
from kosmos_grpc._grpc import AgentStub
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.envelope import new_message
from kosmos_grpc.errors import from_rpc_error
from kosmos_grpc.telemetry.bursts import BurstLog
from tests.conftest import ManualClock, Mesh

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from kosmos_grpc import AgentServer

BLOB = "x" * 100_000  # a chunk that HTTP/2 flow control holds after a few, when nobody reads


class Firehose(Agent):
    """Streams large chunks for as long as it is let, and a unary action that answers at once."""

    name = "firehose"

    @action
    async def pour(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for i in range(100_000):
            yield {"i": i, "blob": BLOB}

    @action
    async def ping(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"pong": True}


def _channel(server: AgentServer) -> grpc.aio.Channel:
    """A channel with a connection of its own (by default channels to one address share one)."""
    return grpc.aio.insecure_channel(
        server.address,
        options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 8 << 20)],
    )


def _stream(channel: grpc.aio.Channel, ttl_ms: int = 60_000) -> grpc.aio.UnaryStreamCall[Any, Any]:
    request = agent_pb2.StreamRequest()
    new_message("pour", {}, ttl_ms=ttl_ms, into=request.message)
    stub = AgentStub(channel).Stream
    return stub(request)


async def _until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {what} within 10 s")


async def _drain(call: grpc.aio.UnaryStreamCall[Any, Any]) -> tuple[int, grpc.aio.AioRpcError | None]:
    """Read what the server made (bounded): how many chunks, then the error that ended the stream."""
    for chunks in range(10_000):
        try:
            reply = await asyncio.wait_for(call.read(), 10)
        except grpc.aio.AioRpcError as exc:
            return chunks, exc
        if reply is grpc.aio.EOF:
            return chunks, None
    raise AssertionError("the stream did not end")


async def test_a_stream_whose_client_never_reads_ends_at_its_ttl_and_lets_its_slot_go(mesh: Mesh) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=4)
    admission = server.servicer.admission
    assert admission is not None
    channel = _channel(server)
    try:
        call = _stream(channel, ttl_ms=500)
        await call.read()  # the stream is running; from here on nobody reads
        await _until(lambda: admission.running == 0 and server.servicer.in_flight == 0, "released")
        made, error = await _drain(call)  # a slow client, reading at last, gets what was made
        assert made > 0
        assert error is not None
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline" in (error.details() or "")
    finally:
        await channel.close()


async def test_a_client_hanging_up_on_a_stream_that_was_ended_leaves_no_traceback(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=4)
    channel = _channel(server)
    with caplog.at_level(logging.DEBUG, logger="grpc._cython.cygrpc"):
        tasks = len(asyncio.all_tasks())
        call = _stream(channel, ttl_ms=300)
        await call.read()
        await _until(lambda: server.servicer.in_flight == 0, "ended")
        assert len(asyncio.all_tasks()) > tasks  # gRPC's task for the call still holds its status
        await channel.close()  # ... which can never be sent now
        await _until(lambda: len(asyncio.all_tasks()) <= tasks, "settled")
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_stream_left_unread_past_stream_idle_seconds_is_ended_as_a_slow_consumer_said_once(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=4, stream_idle_seconds=0.2)
    channels = [_channel(server) for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, logger="kosmos_grpc.servicer"):
            calls = [_stream(channel) for channel in channels]  # TTLs of a minute: only the idle bound ends them
            for call in calls:
                await call.read()
            await _until(lambda: server.servicer.in_flight == 0, "ended")
        for call in calls:
            _, error = await _drain(call)
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert type(from_rpc_error(error)).__name__ == "SlowConsumer"
            assert "stream_idle_seconds" in (error.details() or "")
        said = [r for r in caplog.records if "ended a stream" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
    finally:
        for channel in channels:
            await channel.close()


async def test_one_connection_cannot_hold_every_slot(mesh: Mesh) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=4)  # two streams per connection
    hog, other = _channel(server), _channel(server)
    try:
        held = [_stream(hog) for _ in range(2)]
        for call in held:
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(hog).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_connection" in (refused.value.details() or "")
        error = from_rpc_error(refused.value)
        assert error.retry_after is not None
        assert error.retry_after > 0
        reply = await _stream(other).read()  # another client still gets a stream
        assert isinstance(reply, agent_pb2.StreamResponse)
        assert reply.chunk.sequence == 0
        for call in held:
            call.cancel()
    finally:
        await hog.close()
        await other.close()


async def test_one_peer_cannot_hold_more_than_its_cap_whatever_its_connections(mesh: Mesh) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=8, max_streams_per_peer=3)
    channels = [_channel(server) for _ in range(4)]  # four connections, one host: 127.0.0.1
    try:
        held = [_stream(channel) for channel in channels[:3]]
        for call in held:
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(channels[3]).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_peer" in (refused.value.details() or "")
        held[0].cancel()
        admission = server.servicer.admission
        assert admission is not None
        await _until(lambda: admission.open_streams == 2, "let go of")
        reply = await _stream(channels[3]).read()  # a place is free again
        assert isinstance(reply, agent_pb2.StreamResponse)
    finally:
        for channel in channels:
            await channel.close()


async def test_streams_ended_unread_count_against_their_connection_until_it_reads_or_hangs_up(mesh: Mesh) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=4)  # two streams per connection
    hog = _channel(server)
    try:
        ended = [_stream(hog, ttl_ms=300) for _ in range(2)]
        for call in ended:
            await call.read()
        await _until(lambda: server.servicer.in_flight == 0, "ended")  # their handlers are done ...
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # ... but their chunks still wait in gRPC
            await _stream(hog).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in ended:  # read at last: gRPC is done with them, and the connection may stream again
            _, error = await _drain(call)
            assert error is not None
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        admission = server.servicer.admission
        assert admission is not None
        await _until(lambda: admission.open_streams == 0, "let go of")
        reply = await _stream(hog).read()
        assert isinstance(reply, agent_pb2.StreamResponse)
    finally:
        await hog.close()


async def test_the_requests_open_streams_hold_are_bounded_in_bytes(mesh: Mesh) -> None:
    server = await mesh.serve(Firehose(), max_concurrency=8, max_open_stream_bytes=150_000)
    channels = [_channel(server) for _ in range(2)]
    try:

        def big() -> agent_pb2.StreamRequest:  # 100 KB: one fits, whatever its size
            request = agent_pb2.StreamRequest()
            new_message("pour", {"pad": BLOB}, into=request.message)
            return request

        stubs = [AgentStub(channel).Stream for channel in channels]
        held = stubs[0](big())
        await held.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs[1](big()).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_open_stream_bytes" in (refused.value.details() or "")
        assert from_rpc_error(refused.value).retry_after is not None
        small = await _stream(channels[1]).read()  # a small request still fits beside it
        assert isinstance(small, agent_pb2.StreamResponse)
        held.cancel()
    finally:
        for channel in channels:
            await channel.close()


async def test_a_flood_is_shed_by_priority_with_retry_info_never_cancelled(mesh: Mesh) -> None:
    """5,000 calls at once once made gRPC's core cancel a third of them (its pending-call backlog)."""
    server = await mesh.serve(Firehose(), max_concurrency=8, queue_limit=32)
    channels = [_channel(server) for _ in range(4)]
    stubs = [AgentStub(channel).Execute for channel in channels]
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    retry_info = 0

    async def one(i: int) -> None:
        nonlocal retry_info
        request = agent_pb2.ExecuteRequest()
        priority = "critical" if i % 100 == 0 else "normal"
        new_message("ping", {}, priority=priority, ttl_ms=60_000, into=request.message)
        try:
            await stubs[i % len(stubs)](request, timeout=60)
            outcomes[priority, "OK"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[priority, exc.code().name] += 1
            retry_info += from_rpc_error(exc).retry_after is not None

    try:
        await asyncio.gather(*(one(i) for i in range(5_000)))
    finally:
        for channel in channels:
            await channel.close()
    codes = {code for _, code in outcomes}
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert outcomes["critical", "OK"] == 50, outcomes
    assert retry_info == outcomes["normal", "RESOURCE_EXHAUSTED"]


def test_a_burst_of_one_warning_is_said_once_then_summed_up() -> None:
    clock = ManualClock()
    logger = logging.getLogger("tests.bursts")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        bursts = BurstLog(logger, every=30, clock=clock)
        said = [bursts.warn("fallback a", "fell back from %s", "a") for _ in range(799)]
        assert said.count(True) == 1
        assert bursts.warn("fallback b", "fell back from %s", "b")  # another kind is its own burst
        clock.advance(31)
        assert bursts.warn("fallback a", "fell back from %s", "a")
    finally:
        logger.removeHandler(handler)
    assert records == [
        "fell back from a",
        "fell back from b",
        "fell back from a (and 798 more like it in the last 31 s)",
    ]


async def test_slow_users_relayed_by_zeus_do_not_take_the_streams_of_every_other_user(mesh: Mesh) -> None:
    """Zeus relays every user's stream over one connection to the agent: capping that connection
    like a client's let two slow users hold every relay to it."""
    await mesh.serve(Firehose(), max_concurrency=4)  # two streams per connection
    zeus = await mesh.serve(Zeus())
    users = [_channel(zeus) for _ in range(4)]
    relay = {"agent": "firehose", "action": "pour", "payload": {}}
    try:
        calls = []
        for user in users:  # each user on a connection of its own, through Zeus's one to firehose
            request = agent_pb2.StreamRequest()
            new_message("relay", relay, ttl_ms=60_000, into=request.message)
            stub = AgentStub(user).Stream
            call = stub(request)
            reply = await call.read()  # the first three then read nothing more
            assert isinstance(reply, agent_pb2.StreamResponse), reply
            calls.append(call)
        for call in calls:
            call.cancel()
    finally:
        for user in users:
            await user.close()
