"""Standard gRPC health: SERVING once ready, NOT_SERVING while shutting down, Watch follows; drain on stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kosmos_grpc import AGENT_SERVICE, AgentServer, ServerSettings

from .conftest import Mesh
from .helpers.agents import Echo, Probe

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_for_the_server_and_the_agent_service(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", AGENT_SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == SERVING


async def test_unknown_health_service_is_not_found(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sees_not_serving_until_ready_then_serving_then_not_serving_on_shutdown() -> None:
    server = AgentServer(Echo(), ServerSettings(grace_seconds=1))
    try:
        await server.start(serving=False)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=AGENT_SERVICE), timeout=10)
            assert (await watch.read()).status == NOT_SERVING
            await server.set_serving()
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(server.stop())
            assert (await watch.read()).status == NOT_SERVING
            await stopping
    finally:
        await server.stop(0)


async def test_stop_drains_a_call_in_flight_within_the_grace_period(mesh: Mesh) -> None:
    probe = Probe()
    server = await mesh.serve(probe)
    async with mesh.client() as client, grpc.aio.insecure_channel(server.address) as channel:
        # Opened before the stop: a new call may no longer get in after.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=AGENT_SERVICE))
        assert (await watch.read()).status == SERVING
        call = asyncio.create_task(client.delegate("probe", "work", timeout_ms=10_000))
        await asyncio.wait_for(probe.started.wait(), 5)
        stopping = asyncio.create_task(server.stop(grace=5))
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING  # the stop has begun
        watch.cancel()
        assert not stopping.done(), "stop waits for the call in flight"
        probe.gates[0].set()
        assert (await call).result == {"done": True}
        await asyncio.wait_for(stopping, 5)


async def test_stop_called_twice_at_once_waits_for_the_one_drain(mesh: Mesh) -> None:
    probe = Probe()
    server = await mesh.serve(probe)
    async with mesh.client() as client, grpc.aio.insecure_channel(server.address) as channel:
        # Opened before the stop: a new call may no longer get in after.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=AGENT_SERVICE))
        assert (await watch.read()).status == SERVING
        call = asyncio.create_task(client.delegate("probe", "work", timeout_ms=10_000))
        await asyncio.wait_for(probe.started.wait(), 5)
        first = asyncio.create_task(server.stop(grace=5))
        second = asyncio.create_task(server.stop(grace=5))
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING  # the stop has begun
        watch.cancel()
        assert not first.done()
        assert not second.done(), "a second stop waits for the drain too"
        probe.gates[0].set()
        assert (await call).result == {"done": True}
        await asyncio.wait_for(asyncio.gather(first, second), 5)


async def test_a_second_server_on_a_taken_address_says_so(mesh: Mesh) -> None:
    taken = await mesh.serve(Echo())
    late = AgentServer(Echo(), ServerSettings(address=taken.address))
    with pytest.raises(OSError, match=f"cannot listen on {taken.address}"):
        await late.start()
