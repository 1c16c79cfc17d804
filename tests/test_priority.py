"""The server's priority queue: bounded concurrency, priority then arrival, shedding and TTL while waiting."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kosmos_grpc import AGENT_SERVICE, Coordinator, ResourceExhausted, Response
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.admission import Admission
from kosmos_grpc.envelope import Priority, new_message
from tests.conftest import Mesh
from tests.helpers.agents import Queued


async def _waiting(server_queue: Queued, mesh: Mesh, count: int) -> None:
    """Until ``count`` calls wait in the queued agent's admission queue (bounded)."""
    admission = mesh.servers[-1].servicer.admission
    assert admission is not None
    for _ in range(250):
        if admission.waiting == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{admission.waiting} calls waiting, not {count}")


def _job(client: Coordinator, tag: str, priority: str) -> asyncio.Task[Response]:
    return asyncio.create_task(client.delegate("queued", "job", {"tag": tag}, priority=priority))


async def test_a_critical_call_runs_at_once_in_the_reserve_and_past_it_overtakes_queued_low_ones(mesh: Mesh) -> None:
    agent = Queued()
    await mesh.serve(agent, max_concurrency=1, queue_limit=10)
    admission = mesh.servers[-1].servicer.admission
    assert admission is not None
    assert admission.critical_reserve == 1
    async with mesh.client(resilience=False) as client:
        running = _job(client, "first", "normal")
        await asyncio.wait_for(agent.running.wait(), 5)
        lows = [_job(client, f"low{i}", "low") for i in range(3)]
        await _waiting(agent, mesh, 3)
        reserved = _job(client, "reserved", "critical")  # every slot is taken: it runs in the reserve
        for _ in range(250):
            if admission.running == 2:
                break
            await asyncio.sleep(0.02)
        assert (admission.running, admission.waiting) == (2, 3)
        critical = _job(client, "critical", "critical")  # the reserve is taken too: it queues, first
        await _waiting(agent, mesh, 4)
        agent.gate.set()
        await asyncio.wait_for(asyncio.gather(running, reserved, critical, *lows), 10)
    assert agent.order == ["first", "reserved", "critical", "low0", "low1", "low2"]


async def test_waiting_calls_are_served_by_priority_then_arrival(mesh: Mesh) -> None:
    agent = Queued()
    await mesh.serve(agent, max_concurrency=1, queue_limit=10)
    async with mesh.client(resilience=False) as client:
        running = _job(client, "first", "normal")
        await asyncio.wait_for(agent.running.wait(), 5)
        tasks = []
        for i, priority in enumerate(["low", "high", "normal", "high", "low"]):
            tasks.append(_job(client, f"{priority}{i}", priority))
            await _waiting(agent, mesh, i + 1)
        agent.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *tasks), 10)
    assert agent.order == ["first", "high1", "high3", "normal2", "low0", "low4"]


async def test_a_full_queue_sheds_the_lowest_priority_call_with_retry_info(mesh: Mesh) -> None:
    agent = Queued()
    await mesh.serve(agent, max_concurrency=1, queue_limit=2)
    async with mesh.client(resilience=False) as client:
        running = _job(client, "first", "normal")
        await asyncio.wait_for(agent.running.wait(), 5)
        low = _job(client, "low", "low")
        await _waiting(agent, mesh, 1)
        normal = _job(client, "normal", "normal")
        await _waiting(agent, mesh, 2)
        high = _job(client, "high", "high")  # the queue is full: the low one makes way
        with pytest.raises(ResourceExhausted) as caught:
            await asyncio.wait_for(low, 5)
        agent.gate.set()
        await asyncio.wait_for(asyncio.gather(running, normal, high), 10)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0
    assert "shed" in str(caught.value)
    assert agent.order == ["first", "high", "normal"]


async def test_critical_is_shed_last(mesh: Mesh) -> None:
    agent = Queued()
    await mesh.serve(agent, max_concurrency=1, queue_limit=2)
    async with mesh.client(resilience=False) as client:
        running = _job(client, "first", "normal")
        await asyncio.wait_for(agent.running.wait(), 5)
        reserved = _job(client, "reserved", "critical")  # runs at once, in the reserve
        queued = [_job(client, f"critical{i}", "critical") for i in range(2)]
        await _waiting(agent, mesh, 2)
        with pytest.raises(ResourceExhausted, match="shed"):  # nothing waiting ranks below it
            await asyncio.wait_for(_job(client, "late", "high"), 5)
        with pytest.raises(ResourceExhausted, match="shed"):  # a full queue of CRITICAL refuses even CRITICAL
            await asyncio.wait_for(_job(client, "late", "critical"), 5)
        agent.gate.set()
        await asyncio.wait_for(asyncio.gather(running, reserved, *queued), 10)
    assert agent.order == ["first", "reserved", "critical0", "critical1"]


async def test_a_call_whose_ttl_runs_out_while_it_waits_is_never_run(mesh: Mesh) -> None:
    agent = Queued()
    server = await mesh.serve(agent, max_concurrency=1, queue_limit=10)
    async with mesh.client(resilience=False) as client:
        running = _job(client, "first", "normal")
        await asyncio.wait_for(agent.running.wait(), 5)
        # The gRPC deadline (10 s) is far past the TTL (200 ms): only the server's TTL can end the wait.
        request = agent_pb2.ExecuteRequest(message=new_message("job", {"tag": "expires"}, ttl_ms=200, priority="high"))
        async with grpc.aio.insecure_channel(server.address) as channel:
            execute = channel.unary_unary(
                f"/{AGENT_SERVICE}/Execute",
                request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
                response_deserializer=agent_pb2.ExecuteResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await execute(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "waited in the queue past its deadline and was never run" in (caught.value.details() or "")
        await _waiting(agent, mesh, 0)  # it left the queue
        agent.gate.set()
        await asyncio.wait_for(running, 5)
        after = await client.delegate("queued", "job", {"tag": "after"})
    assert after.result == {"tag": "after"}
    assert agent.order == ["first", "after"]


async def test_a_slot_of_the_critical_reserve_goes_back_to_the_reserve_not_to_a_waiting_call() -> None:
    admission = Admission(1, 10, critical_reserve=1)
    await admission.acquire(Priority.NORMAL, 5, "queued", "job")  # every slot taken
    waiting = asyncio.create_task(admission.acquire(Priority.NORMAL, 5, "queued", "job"))
    for _ in range(100):
        if admission.waiting:
            break
        await asyncio.sleep(0)
    await admission.acquire(Priority.CRITICAL, 5, "queued", "job")  # into the reserve
    assert (admission.running, admission.waiting) == (2, 1)
    admission.release()  # the CRITICAL call ends: its slot was the reserve's
    assert (admission.running, admission.waiting) == (1, 1)
    assert not waiting.done()
    await admission.acquire(Priority.CRITICAL, 5, "queued", "job")  # the reserve is there again
    assert admission.running == 2
    waiting.cancel()
