"""A retried call runs once: the server remembers executed message_ids for a window, in bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from kosmos_grpc import (
    ActionFailed,
    AgentServer,
    AgentUnavailable,
    Coordinator,
    DuplicateMessage,
    InvalidEnvelope,
    Registry,
    ResourceExhausted,
    Response,
    ServerSettings,
)
from kosmos_grpc.envelope import new_message_id
from kosmos_grpc.idempotency import ExecutedCalls
from kosmos_grpc.resilience import ResiliencePolicy, RetryPolicy
from tests.conftest import ManualClock, Mesh
from tests.helpers.agents import Flaky
from tests.helpers.proxy import Proxy

FAST = ResiliencePolicy(retry=RetryPolicy(attempts=3, initial=0.05, maximum=0.2, jitter=0.01))


async def test_a_duplicate_gets_the_first_result_without_running_again(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        first = await client.delegate("flaky", "effect", message_id=message_id)
        again = await client.delegate("flaky", "effect", message_id=message_id)
        other = await client.delegate("flaky", "effect")
    assert first.result == again.result == {"effects": 1}
    assert other.result == {"effects": 2}
    assert flaky.effects == 2


async def test_a_duplicate_of_a_failed_call_gets_the_same_failure(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        for _ in range(2):
            with pytest.raises(ActionFailed, match="RuntimeError"):
                await client.delegate(
                    "flaky", "fail_then_succeed", {"times": 1, "error": "internal"}, message_id=message_id
                )
    assert len(flaky.calls) == 1


async def test_a_call_that_did_not_finish_is_forgotten_so_its_retry_runs(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        with pytest.raises(AgentUnavailable, match="bad moment"):
            await client.delegate("flaky", "fail_then_succeed", {"times": 1}, message_id=message_id)
        response = await client.delegate("flaky", "fail_then_succeed", {"times": 1}, message_id=message_id)
    assert response.result == {"attempt": 2}


async def _first_and_a_waiting_duplicate(
    client: Coordinator, server: AgentServer, flaky: Flaky, message_id: str
) -> tuple[asyncio.Task[Response], asyncio.Task[Response]]:
    """A call held at flaky's gate, and a duplicate of it that the server has made wait for it."""
    first = asyncio.create_task(client.delegate("flaky", "effect", message_id=message_id))
    await asyncio.wait_for(flaky.ran.wait(), 5)
    executed = server.servicer.executed
    assert executed is not None
    claimed, entry = executed.claim(message_id)
    assert not claimed, "the first call holds the message_id"
    second = asyncio.create_task(client.delegate("flaky", "effect", message_id=message_id))
    for _ in range(250):  # bounded: until the duplicate waits on the first call's outcome
        if entry._settled is not None:
            return first, second
        await asyncio.sleep(0.02)
    raise AssertionError("the duplicate never came to wait for the first call")


async def test_a_duplicate_that_arrives_while_the_first_runs_waits_for_it(mesh: Mesh) -> None:
    flaky = Flaky()
    flaky.gate.clear()
    server = await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        first, second = await _first_and_a_waiting_duplicate(client, server, flaky, message_id)
        assert not second.done()  # waiting for the first, not answered and not run
        flaky.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [r.result for r in results] == [{"effects": 1}, {"effects": 1}]
    assert flaky.effects == 1


async def test_a_call_whose_connection_breaks_after_the_handler_ran_is_retried_and_runs_once() -> None:
    flaky = Flaky()
    registry = Registry()
    server = AgentServer(flaky, ServerSettings(grace_seconds=0), registry=registry)
    await server.start()
    proxy = Proxy(server.address)
    await proxy.start()
    try:
        async with Coordinator({"flaky": proxy.address}, resilience=FAST) as client:
            await client.health("flaky")  # the connection is up before replies are swallowed
            proxy.swallow_replies()
            call = asyncio.create_task(client.delegate("flaky", "effect", {}, timeout_ms=10_000))
            await asyncio.wait_for(flaky.ran.wait(), 5)
            for _ in range(100):  # bounded: the reply is written within moments
                if proxy.swallowed:
                    break
                await asyncio.sleep(0.02)
            assert proxy.swallowed, "the server's reply never came"
            await proxy.cut()  # the handler has answered; its answer is lost with the connection
            response = await asyncio.wait_for(call, 10)
    finally:
        await proxy.stop()
        await server.stop(0)
    assert response.result == {"effects": 1}
    assert flaky.effects == 1  # the side effect happened exactly once
    assert len(flaky.calls) == 1
    assert response.request_message_id == flaky.calls[0]


async def test_the_memory_of_executed_calls_is_bounded_and_forgets_after_its_window() -> None:
    clock = ManualClock()
    calls: ExecutedCalls[str] = ExecutedCalls(window=60, limit=100, clock=clock)
    for i in range(250):
        first, entry = calls.claim(f"m{i}")
        assert first
        calls.settle(f"m{i}", entry, f"r{i}", None)
    assert len(calls) == 100
    assert calls.claim("m0")[0]  # evicted: it would run again
    first, entry = calls.claim("m249")
    assert not first
    assert entry.outcome == ("r249", None)
    clock.advance(61)
    assert calls.claim("m249")[0]  # past the window


async def test_expired_message_ids_are_swept_out_as_new_ones_come_in() -> None:
    clock = ManualClock()
    calls: ExecutedCalls[str] = ExecutedCalls(window=60, limit=10_000, clock=clock)
    for i in range(500):
        calls.claim(f"old{i}")
    clock.advance(61)
    for i in range(1100):  # a sweep runs once every 1,024 claims
        calls.claim(f"new{i}")
    assert len(calls) == 1100


async def test_a_duplicate_waiting_on_a_first_call_that_is_cancelled_runs_itself(mesh: Mesh) -> None:
    flaky = Flaky()
    flaky.gate.clear()
    server = await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        first, second = await _first_and_a_waiting_duplicate(client, server, flaky, message_id)
        assert not second.done()  # waiting on the first
        first.cancel()
        for _ in range(250):  # bounded: until the duplicate has claimed the id and runs
            if len(flaky.calls) == 2:
                break
            await asyncio.sleep(0.02)
        flaky.gate.set()
        response = await asyncio.wait_for(second, 5)
    assert flaky.calls == [message_id, message_id]  # the first never finished, so the duplicate ran
    assert response.result == {"effects": 2}


async def test_a_stream_that_started_is_not_run_again_under_its_message_id(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        chunks = [c.data async for c in client.stream("flaky", "effect_stream", message_id=message_id)]
        with pytest.raises(DuplicateMessage, match="neither replayed nor run twice") as caught:
            async for _ in client.stream("flaky", "effect_stream", message_id=message_id):
                pass
    assert chunks == [{"effects": 1, "i": 0}, {"effects": 1, "i": 1}]
    assert caught.value.metadata["field"] == "message_id"
    assert flaky.effects == 1


async def test_a_stream_refused_before_it_started_is_forgotten_so_its_retry_runs(mesh: Mesh) -> None:
    flaky = Flaky()
    flaky.gate.clear()
    await mesh.serve(flaky, max_concurrency=1, queue_limit=0)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        busy = asyncio.create_task(client.delegate("flaky", "effect"))
        await asyncio.wait_for(flaky.ran.wait(), 5)
        with pytest.raises(ResourceExhausted):
            async for _ in client.stream("flaky", "effect_stream", message_id=message_id):
                pass
        flaky.gate.set()
        await asyncio.wait_for(busy, 5)
        chunks = [c.data async for c in client.stream("flaky", "effect_stream", message_id=message_id)]
    assert chunks == [{"effects": 2, "i": 0}, {"effects": 2, "i": 1}]


async def test_a_kept_failure_holds_no_traceback(mesh: Mesh) -> None:
    flaky = Flaky()
    server = await mesh.serve(flaky)
    message_id = new_message_id()
    async with mesh.client(resilience=False) as client:
        with pytest.raises(InvalidEnvelope):  # raised by the handler itself, so it has a traceback to lose
            await client.delegate("flaky", "fail_then_succeed", {"times": 1, "error": "invalid"}, message_id=message_id)
    executed = server.servicer.executed
    assert executed is not None
    first, entry = executed.claim(message_id)
    assert not first
    assert entry.outcome is not None
    kept = entry.outcome[1]
    assert isinstance(kept, InvalidEnvelope)
    # A traceback would hold the handler's frames, and its payload, for the whole window.
    assert kept.__traceback__ is None
    assert kept.__context__ is None


async def test_the_memory_of_executed_calls_is_bounded_in_bytes() -> None:
    calls: ExecutedCalls[str] = ExecutedCalls(window=60, limit=1000, max_bytes=1000, clock=ManualClock())
    for i in range(10):
        _, entry = calls.claim(f"m{i}")
        calls.settle(f"m{i}", entry, f"r{i}", None, 300)
    assert len(calls) == 3  # 900 bytes; a fourth reply would be over the 1000
    assert calls.bytes == 900
    assert calls.claim("m6")[0]  # the oldest went first
    assert not calls.claim("m9")[0]


async def test_a_stream_whose_connection_breaks_before_its_first_chunk_is_not_run_twice_by_the_retry() -> None:
    flaky = Flaky()
    flaky.gate.clear()
    server = AgentServer(flaky, ServerSettings(grace_seconds=0), registry=Registry())
    await server.start()
    proxy = Proxy(server.address)
    await proxy.start()
    try:
        async with Coordinator({"flaky": proxy.address}, resilience=FAST) as client:
            await client.health("flaky")
            proxy.swallow_replies()

            async def read() -> list[object]:
                return [c.data async for c in client.stream("flaky", "effect_stream", timeout_ms=10_000)]

            call = asyncio.create_task(read())
            await asyncio.wait_for(flaky.ran.wait(), 5)
            for _ in range(100):  # bounded: the first chunk is written within moments
                if proxy.swallowed:
                    break
                await asyncio.sleep(0.02)
            assert proxy.swallowed, "the first chunk never came"
            await proxy.cut()
            with pytest.raises(DuplicateMessage):
                await asyncio.wait_for(call, 10)
    finally:
        flaky.gate.set()
        await proxy.stop()
        await server.stop(0)
    assert flaky.effects == 1  # the retry reached the agent and was refused, not run
    assert len(flaky.calls) == 1


async def test_keeping_within_the_byte_limit_never_forgets_a_running_call_or_a_stream() -> None:
    calls: ExecutedCalls[str] = ExecutedCalls(window=60, limit=1000, max_bytes=100, clock=ManualClock())
    _, stream = calls.claim("stream")
    calls.settle("stream", stream, None, DuplicateMessage("a stream ran"))
    calls.claim("running")  # not settled yet
    for name in ("small-1", "small-2"):
        _, entry = calls.claim(name)
        calls.settle(name, entry, name, None, 60)
    assert calls.bytes == 60  # small-1 went to make room for small-2
    assert calls.claim("small-1")[0]
    assert not calls.claim("stream")[0]
    assert not calls.claim("running")[0]


async def test_a_reply_too_large_to_keep_is_never_run_again() -> None:
    calls: ExecutedCalls[str] = ExecutedCalls(window=60, limit=1000, max_bytes=100, clock=ManualClock())
    _, entry = calls.claim("huge")
    calls.settle("huge", entry, "a very large reply", None, 150)
    first, again = calls.claim("huge")
    assert not first  # kept: a retry must not run it twice
    assert again.outcome is not None
    assert again.outcome[0] is None
    assert isinstance(again.outcome[1], DuplicateMessage)
    assert "too large to keep" in str(again.outcome[1])
    assert calls.bytes == 0


async def test_a_stream_that_fails_before_its_first_chunk_in_a_way_a_retry_mends_is_retried(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=FAST) as client:
        chunks = [c.data async for c in client.stream("flaky", "stream_after_failures", {"times": 1})]
    assert chunks == [{"attempt": 2, "i": 0}, {"attempt": 2, "i": 1}]
    assert len(flaky.calls) == 2
    assert len(set(flaky.calls)) == 1  # the retry reused the message_id, and ran
