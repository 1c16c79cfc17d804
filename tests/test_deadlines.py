"""Deadlines: work past its deadline is cancelled on the server, and a deadline bounds every hop after it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agents.zeus import Zeus
from kosmos_grpc import DeadlineExceeded, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, agent_pb2_grpc

from .conftest import Mesh
from .helpers.agents import Echo, Probe


async def test_action_past_its_deadline_is_cancelled_and_caller_gets_deadline_exceeded(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe)
    async with mesh.client() as client:
        with pytest.raises(DeadlineExceeded) as caught:
            await client.delegate("probe", "hang", timeout_ms=200)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(caught.value, TimeoutError)
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_ttl_alone_bounds_a_call_made_without_a_grpc_deadline(mesh: Mesh) -> None:
    probe = Probe()
    server = await mesh.serve(probe)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        message = new_message("hang", ttl_ms=200)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(agent_pb2.ExecuteRequest(message=message))  # no timeout at all
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert probe.cancelled.is_set()
    assert probe.seen_remaining[0] is not None
    assert 0 < probe.seen_remaining[0] <= 0.2


async def test_stream_past_its_ttl_is_cancelled_after_the_chunks_it_made(mesh: Mesh) -> None:
    probe = Probe()
    server = await mesh.serve(probe)
    received: list[int] = []

    async def consume(stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
        async for reply in stub.Stream(agent_pb2.StreamRequest(message=new_message("hang_stream", ttl_ms=300))):
            received.append(reply.chunk.sequence)

    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await consume(agent_pb2_grpc.AgentServiceStub(channel))
    assert received == [0]
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert probe.cancelled.is_set()


async def test_no_deadline_from_the_caller_means_the_default_ttl(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await stub.Execute(agent_pb2.ExecuteRequest(message=new_message("whoami", ttl_ms=0)))
    remaining = reply.response.result["time_remaining"]
    assert isinstance(remaining, float)
    assert 55 < remaining <= 60
    async with mesh.client() as client:
        response = await client.delegate("echo", "whoami", timeout_ms=None)
    assert 55 < response.result["time_remaining"] <= 60


async def test_effective_deadline_is_the_smaller_of_timeout_and_ttl(mesh: Mesh) -> None:
    await mesh.serve(Echo())
    async with mesh.client() as client:
        by_timeout = await client.delegate("echo", "whoami", timeout_ms=2_000, ttl_ms=50_000)
        by_ttl = await client.delegate("echo", "whoami", timeout_ms=50_000, ttl_ms=2_000)
    assert 1 < by_timeout.result["time_remaining"] <= 2.05
    assert 1 < by_ttl.result["time_remaining"] <= 2.05


async def test_deadline_set_at_zeus_bounds_its_downstream_calls(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe)
    await mesh.serve(Zeus())
    async with mesh.client() as client:
        with pytest.raises(DeadlineExceeded):
            # Zeus delegates with the default 30 s timeout; the user's 300 ms must win.
            await client.delegate("zeus", "delegate", {"agent": "probe", "action": "hang"}, timeout_ms=300)
    remaining = probe.seen_remaining[0]
    assert remaining is not None
    # gRPC rounds the timeout it passes on up by a few milliseconds; the relay's 30 s is far off.
    assert 0 < remaining <= 0.31
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_correlation_id_carries_through_a_delegation(mesh: Mesh) -> None:
    await mesh.serve(Echo())
    await mesh.serve(Zeus())
    async with mesh.client() as client:
        response = await client.delegate(
            "zeus", "delegate", {"agent": "echo", "action": "whoami"}, correlation_id="workflow-7"
        )
    assert response.result["agent"] == "echo"
    assert response.result["result"]["correlation_id"] == "workflow-7"
    assert response.correlation_id == "workflow-7"


async def test_a_caller_that_cancels_cancels_the_downstream_call_across_zeus(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(Zeus())
    await mesh.serve(probe)
    async with mesh.client() as client:
        call = asyncio.create_task(client.delegate("zeus", "delegate", {"agent": "probe", "action": "hang"}))
        await asyncio.wait_for(probe.started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(probe.cancelled.wait(), 5)  # the specialist's handler was cancelled


async def test_a_slow_agent_against_a_deadline_is_cut_off_not_retried_and_counted(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe)
    async with mesh.client() as client:
        with pytest.raises(DeadlineExceeded):
            await client.delegate("probe", "hang", timeout_ms=200)
        assert client.resilience is not None
        assert client.resilience.breaker("probe").failures == 1
    assert len(probe.seen_remaining) == 1  # DEADLINE_EXCEEDED is not retried
    await asyncio.wait_for(probe.cancelled.wait(), 5)
