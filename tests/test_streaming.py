"""Streaming: chunks arrive as they are made, through Zeus, in order, with a final marker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc

from agents.zeus import Zeus
from kosmos_grpc import Coordinator, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, agent_pb2_grpc

from .conftest import Mesh
from .helpers.agents import Echo, Probe, Relay


async def test_zeus_relays_each_chunk_before_the_specialist_makes_the_next(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe)
    await mesh.serve(Zeus())
    async with mesh.client() as client:
        stream = client.stream(
            "zeus", "relay", {"agent": "probe", "action": "gated", "payload": {"n": 3}}, timeout_ms=10_000
        )
        received = []
        async for chunk in stream:
            # The specialist cannot make chunk i+1 until we open its gate, which we only do
            # once chunk i has reached us: a relay that buffered would deadlock here.
            assert probe.produced == list(range(chunk.sequence + 1))
            received.append(chunk.data["i"])
            if chunk.sequence + 1 < 3:
                probe.gates[chunk.sequence + 1].set()
    assert received == [0, 1, 2]
    assert probe.finished.is_set()


async def test_stream_sends_numbered_chunks_then_a_final_marker(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        replies = [
            r.chunk
            async for r in stub.Stream(agent_pb2.StreamRequest(message=new_message("count", {"n": 4})), timeout=5)
        ]
    assert [c.sequence for c in replies] == [0, 1, 2, 3, 4]
    assert [c.final for c in replies] == [False] * 4 + [True]
    assert [c.data["i"] for c in replies[:4]] == [0, 1, 2, 3]
    assert all(c.agent == "echo" for c in replies)


async def test_stream_of_a_unary_action_is_its_result_as_one_chunk(client: Coordinator, mesh: Mesh) -> None:
    await mesh.serve(Echo())
    chunks = [c async for c in client.stream("echo", "echo", {"a": 1})]
    assert [c.data for c in chunks] == [{"a": 1}]


async def test_leaving_a_relayed_stream_early_cancels_the_specialist(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe)
    await mesh.serve(Zeus())
    async with mesh.client() as client:
        stream = client.stream("zeus", "relay", {"agent": "probe", "action": "hang_stream"})
        async for chunk in stream:
            assert chunk.data == {"i": 0}
            break
        assert isinstance(stream, AsyncGenerator)
        await stream.aclose()
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_a_relay_may_pass_chunks_on_as_received_or_changed(mesh: Mesh) -> None:
    await mesh.serve(Echo())
    await mesh.serve(Relay())
    async with mesh.client() as client:
        chunks = [
            c async for c in client.stream("relay", "mark", {"agent": "echo", "action": "count", "payload": {"n": 4}})
        ]
    assert [c.data for c in chunks] == [{"i": 0}, {"i": 1, "marked": True}, {"i": 2}, {"i": 3, "marked": True}]
    assert [c.agent for c in chunks] == ["relay"] * 4
