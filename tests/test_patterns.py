"""Coordination patterns against real agents on loopback: sequential, parallel, scatter-gather, Saga."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kosmos_grpc import (
    ActionFailed,
    AgentNotFound,
    AgentUnavailable,
    CircuitOpen,
    Coordinator,
    DeadlineExceeded,
    ResourceExhausted,
    Response,
)
from kosmos_grpc.bus import BrokerServer, Event, GrpcEventBus
from kosmos_grpc.errors import SagaFailed, is_final
from kosmos_grpc.patterns import (
    Call,
    Saga,
    SagaStep,
    Step,
    _to_the_end,
    parallel,
    scatter_gather,
    sequential,
)
from kosmos_grpc.subjects import AUDIT_LOG

from .conftest import Mesh
from .helpers.workflow_agents import Alpha, Beta, Conductor, Gamma, Journal


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
async def workers(mesh: Mesh, journal: Journal) -> Mesh:
    """alpha, beta and gamma, plain."""
    for agent in (Alpha(journal), Beta(journal), Gamma(journal)):
        await mesh.serve(agent)
    return mesh


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[Coordinator]:
    async with mesh.client() as coordinator:
        yield coordinator


@pytest.fixture
async def broker() -> AsyncIterator[BrokerServer]:
    server = BrokerServer(address="127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


def reserve(agent: str, item: str) -> SagaStep:
    return SagaStep(agent, "reserve", {"item": item}, compensate=(agent, "release"))


# sequential


async def test_sequential_feeds_each_result_to_the_next_step_under_one_correlation_id(
    workers: Mesh, client: Coordinator
) -> None:
    steps = [Step("alpha", "stamp"), Step("beta", "stamp"), Step("gamma", "stamp")]
    responses = await sequential(client, steps, {"trail": ["start"]})
    assert [r.agent for r in responses] == ["alpha", "beta", "gamma"]
    assert responses[-1].result["trail"] == ["start", "alpha", "beta", "gamma"]
    seen = responses[-1].result["correlation_ids"]
    assert len(seen) == 3
    assert len(set(seen)) == 1, "every step ran under the same correlation_id"
    assert {r.correlation_id for r in responses} == set(seen)

    again = await sequential(client, steps, {})
    assert again[-1].result["correlation_ids"][0] != seen[0], "a Coordinator gives each workflow its own"


async def test_sequential_through_a_scoped_client_keeps_its_correlation_id(workers: Mesh, client: Coordinator) -> None:
    scoped = client.scope(timeout_ms=5_000)
    responses = await sequential(scoped, [Step("alpha", "stamp"), Step("beta", "stamp")])
    assert responses[-1].result["correlation_ids"] == [scoped.correlation_id] * 2


async def test_a_pattern_run_inside_a_handler_shares_the_call_s_correlation_id(
    workers: Mesh, client: Coordinator
) -> None:
    await workers.serve(Conductor())
    response = await client.delegate("conductor", "pipeline", {"trail": ["outer"]})
    assert response.result["trail"] == ["outer", "alpha", "beta"]
    assert response.result["correlation_ids"] == [response.correlation_id] * 2


async def test_a_failing_sequential_step_raises_its_error_naming_the_step(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    steps = [Step("alpha", "stamp"), Step("beta", "refuse"), Step("gamma", "stamp")]
    with pytest.raises(ResourceExhausted) as caught:
        await sequential(client, steps, {})
    assert "beta has nothing left" in str(caught.value)
    assert any("step 2 of 3 (beta.refuse)" in note for note in caught.value.__notes__)
    assert journal.entries == ["alpha.stamp", "beta.refuse"], "the step after the failure never ran"


# parallel


async def test_parallel_runs_the_calls_at_once_and_answers_in_their_order(workers: Mesh, client: Coordinator) -> None:
    scoped = client.scope()
    calls = [Call(name, "rendezvous", {"n": n}) for n, name in enumerate(["gamma", "alpha", "beta"])]
    # Each call answers only once all three are running: one at a time would time out.
    responses = await parallel(scoped, calls)
    assert [r.result for r in responses] == [
        {"agent": "gamma", "payload": {"n": 0}},
        {"agent": "alpha", "payload": {"n": 1}},
        {"agent": "beta", "payload": {"n": 2}},
    ]
    assert {r.correlation_id for r in responses} == {scoped.correlation_id}


async def test_a_failing_parallel_call_cancels_its_siblings_and_raises_its_own_error(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    calls = [Call("alpha", "hang"), Call("beta", "refuse", {"after_hang": True})]
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as caught:
        await parallel(client, calls)
    assert type(caught.value) is ResourceExhausted, "the failure itself, not an ExceptionGroup"
    assert any("parallel call 2 of 2 (beta.refuse)" in note for note in caught.value.__notes__)
    assert time.monotonic() - started < 5, "the hanging sibling was not waited for"
    await asyncio.wait_for(journal.hang_cancelled.wait(), 5)  # the cancellation reached alpha's handler


async def test_parallel_collect_returns_every_outcome_in_order_and_cancels_nothing(
    workers: Mesh, client: Coordinator
) -> None:
    calls = [Call("alpha", "stamp"), Call("beta", "refuse"), Call("gamma", "sleep", {"ms": 200})]
    outcomes = await parallel(client, calls, collect=True)
    first, second, third = outcomes
    assert isinstance(first, Response)
    assert first.result["trail"] == ["alpha"]
    assert isinstance(second, ResourceExhausted)
    assert isinstance(third, Response), "the slower call outlived the failure and finished"
    assert third.result == {"agent": "gamma", "slept_ms": 200}


# scatter-gather


async def test_scatter_gather_sorts_every_agent_into_successes_or_failures_within_the_deadline(
    mesh: Mesh, client: Coordinator, journal: Journal
) -> None:
    await mesh.serve(Alpha(journal))
    await mesh.serve(Beta(journal, quote_fails=True))
    await mesh.serve(Gamma(journal, quote_delay_ms=10_000))
    started = time.monotonic()
    result = await scatter_gather(client, ["alpha", "beta", "gamma", "nobody"], "quote", {"item": "fig"}, 300)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.5, f"gathered at the deadline, not before or long after ({elapsed:.2f} s)"
    assert list(result.successes) == ["alpha"]
    assert result.successes["alpha"].result == {"agent": "alpha", "item": "fig", "price": 10}
    assert list(result.failures) == ["beta", "gamma", "nobody"]
    assert isinstance(result.failures["beta"], ActionFailed)
    assert isinstance(result.failures["gamma"], DeadlineExceeded)
    assert isinstance(result.failures["nobody"], AgentNotFound)


# Saga


async def test_a_saga_that_succeeds_keeps_every_step_s_result(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    scoped = client.scope()
    result = await Saga([reserve("alpha", "seat"), reserve("beta", "room")]).run(scoped)
    assert [r.result for r in result.responses] == [{"reservation": "alpha-seat"}, {"reservation": "beta-room"}]
    assert result.correlation_id == scoped.correlation_id
    assert {r.correlation_id for r in result.responses} == {scoped.correlation_id}
    assert journal.entries == ["alpha.reserve", "beta.reserve"], "nothing was compensated"


async def test_a_failing_saga_step_compensates_the_completed_steps_in_reverse_order(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    steps = [
        reserve("alpha", "seat"),
        reserve("beta", "room"),
        SagaStep("gamma", "refuse", compensate=("gamma", "release")),
    ]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client)
    failed = caught.value
    assert journal.entries == ["alpha.reserve", "beta.reserve", "gamma.refuse", "beta.release", "alpha.release"]
    assert failed.step is steps[2]
    assert isinstance(failed.cause, ResourceExhausted)
    assert failed.__cause__ is failed.cause
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.compensated == [steps[1], steps[0]]
    assert failed.compensation_failures == {}
    assert [r.result for r in failed.responses] == [{"reservation": "alpha-seat"}, {"reservation": "beta-room"}]
    assert journal.releases == [
        ("beta", {"payload": {"item": "room"}, "result": {"reservation": "beta-room"}}),
        ("alpha", {"payload": {"item": "seat"}, "result": {"reservation": "alpha-seat"}}),
    ]


async def test_an_undo_made_from_the_step_s_payload_and_result_is_sent_as_made(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    def release_what_was_reserved(payload: dict[str, Any], result: Any) -> Call:
        return Call("beta", "release", {"reservation": result["reservation"], "item": payload["item"]})

    def broken_undo(payload: dict[str, Any], result: Any) -> Call:
        raise KeyError("no such field")

    steps = [
        SagaStep("alpha", "reserve", {"item": "seat"}, broken_undo),
        SagaStep("beta", "reserve", {"item": "room"}, release_what_was_reserved),
        SagaStep("gamma", "refuse"),
    ]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client)
    assert journal.releases == [("beta", {"reservation": "beta-room", "item": "room"})], "no payload/result wrapping"
    assert caught.value.compensated == [steps[1]]
    assert list(caught.value.compensation_failures) == [steps[0]], "an undo that cannot be made is a failure, said"
    assert "making the undo of alpha.reserve failed" in caught.value.compensation_failures[steps[0]].message


async def test_a_compensation_that_fails_twice_is_retried_until_it_succeeds(
    mesh: Mesh, client: Coordinator, journal: Journal
) -> None:
    await mesh.serve(Alpha(journal))
    await mesh.serve(Beta(journal, release_failures=2))
    await mesh.serve(Gamma(journal))
    steps = [reserve("alpha", "seat"), reserve("beta", "room"), SagaStep("gamma", "refuse")]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client)
    assert journal.entries[3:] == ["beta.release_failed", "beta.release_failed", "beta.release", "alpha.release"]
    assert caught.value.compensated == [steps[1], steps[0]]
    assert caught.value.compensation_failures == {}
    # beta remembers each failure under its message_id: only a new one has the release really run again.
    assert len(set(journal.release_message_ids[:3])) == 3


async def test_a_compensation_whose_outcome_is_unknown_is_retried_under_the_same_message_id(
    mesh: Mesh, client: Coordinator, journal: Journal
) -> None:
    await mesh.serve(Beta(journal, release_stalls=1))
    await mesh.serve(Gamma(journal))
    steps = [
        SagaStep("beta", "reserve", {"item": "room"}, compensate=Call("beta", "release", timeout_ms=300)),
        SagaStep("gamma", "refuse"),
    ]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client)
    assert journal.entries == ["beta.reserve", "gamma.refuse", "beta.release_stalled", "beta.release"]
    first, second = journal.release_message_ids
    assert first == second, "had the first attempt's reply been lost, beta would answer the retry from memory"
    assert caught.value.compensated == [steps[0]]


async def test_a_compensation_that_keeps_failing_is_reported_and_the_rest_are_still_undone(
    mesh: Mesh, client: Coordinator, journal: Journal
) -> None:
    await mesh.serve(Alpha(journal))
    await mesh.serve(Beta(journal, release_failures=99))
    await mesh.serve(Gamma(journal))
    steps = [reserve("alpha", "seat"), reserve("beta", "room"), SagaStep("gamma", "refuse")]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client)
    failed = caught.value
    assert journal.entries[3:] == ["beta.release_failed"] * 3 + ["alpha.release"], "three attempts, then go on"
    assert list(failed.compensation_failures) == [steps[1]]
    assert isinstance(failed.compensation_failures[steps[1]], ActionFailed)
    assert failed.compensated == [steps[0]]
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED, "the failing step's code, not the compensation's"
    assert "could not compensate beta.reserve" in str(failed)
    assert not failed.retryable


async def test_a_cancelled_saga_compensates_the_completed_steps_and_audits_it_cancelled(
    workers: Mesh, client: Coordinator, journal: Journal, broker: BrokerServer
) -> None:
    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        audit = await bus.subscribe(AUDIT_LOG)
        steps = [reserve("alpha", "seat"), SagaStep("beta", "hang", compensate=("beta", "release"))]
        running = asyncio.create_task(Saga(steps, bus=bus, name="trip").run(client))
        await asyncio.wait_for(journal.hang_started.wait(), 5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # Undone before the cancellation went on, on the agent itself.
        assert journal.entries == ["alpha.reserve", "alpha.release"], "the step cut short is not compensated"
        assert journal.releases == [("alpha", {"payload": {"item": "seat"}, "result": {"reservation": "alpha-seat"}})]
        async with asyncio.timeout(5):
            events: list[Event] = [await anext(audit) for _ in range(5)]
    await asyncio.wait_for(journal.hang_cancelled.wait(), 5)  # the cancellation reached beta's handler
    assert [(e.payload["step"], e.payload["status"]) for e in events] == [
        ("alpha.reserve", "started"),
        ("alpha.reserve", "completed"),
        ("beta.hang", "started"),
        ("alpha.reserve", "compensated"),
        ("", "cancelled"),
    ]
    assert len({e.payload["saga_id"] for e in events}) == 1


async def test_compensations_run_even_after_the_workflow_s_deadline_has_passed(
    workers: Mesh, client: Coordinator, journal: Journal
) -> None:
    steps = [reserve("alpha", "seat"), SagaStep("beta", "hang")]
    with pytest.raises(SagaFailed) as caught:
        await Saga(steps).run(client.scope(timeout_ms=300))
    assert isinstance(caught.value.cause, DeadlineExceeded)
    assert journal.entries == ["alpha.reserve", "alpha.release"]
    assert caught.value.compensated == [steps[0]]


async def test_a_saga_publishes_its_steps_and_outcome_on_the_audit_log(
    workers: Mesh, client: Coordinator, broker: BrokerServer
) -> None:
    async with GrpcEventBus(broker.address, source_agent="test") as bus:
        audit = await bus.subscribe(AUDIT_LOG)
        scoped = client.scope()
        with pytest.raises(SagaFailed) as caught:
            await Saga([reserve("alpha", "seat"), SagaStep("beta", "refuse")], bus=bus, name="trip").run(scoped)
        async with asyncio.timeout(5):
            events: list[Event] = [await anext(audit) for _ in range(6)]
    assert [(e.payload["step"], e.payload["status"]) for e in events] == [
        ("alpha.reserve", "started"),
        ("alpha.reserve", "completed"),
        ("beta.refuse", "started"),
        ("beta.refuse", "failed"),
        ("alpha.reserve", "compensated"),
        ("", "rolled_back"),
    ]
    assert {e.payload["saga_id"] for e in events} == {caught.value.saga_id}
    assert {e.payload["saga"] for e in events} == {"trip"}
    assert {e.message.correlation_id for e in events} == {scoped.correlation_id}
    assert events[3].payload["error"] == "RESOURCE_EXHAUSTED"
    assert events[5].payload["failed_step"] == "beta.refuse"


async def test_an_audit_bus_that_fails_never_changes_the_saga_s_outcome(
    workers: Mesh, client: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    gone = BrokerServer(address="127.0.0.1:0")
    await gone.start()
    await gone.stop(0)  # nothing listens at its address any more
    async with GrpcEventBus(gone.address) as bus:
        with caplog.at_level(logging.WARNING, logger="kosmos_grpc.patterns"):
            result = await Saga([reserve("alpha", "seat")], bus=bus).run(client)
    assert [r.result for r in result.responses] == [{"reservation": "alpha-seat"}]
    failed = [r.getMessage() for r in caplog.records if "could not publish" in r.getMessage()]
    assert len(failed) == 1, "the first audit failed; the others (completed, the outcome) were not waited for"
    assert "alpha.reserve started" in failed[0]


def test_a_failed_saga_still_names_the_agent_whose_failure_it_was() -> None:
    cause = AgentUnavailable("athena is down", metadata={"origin": "athena"})
    failed = SagaFailed("saga saga-1 failed at step athena", cause=cause, step=SagaStep("athena", "answer"))
    # Whoever called the agent that ran the saga must not blame (nor retry) that agent for it.
    assert failed.origin == "athena"
    assert failed.code == grpc.StatusCode.UNAVAILABLE


def test_an_open_circuit_is_no_final_answer() -> None:
    # A compensation retried after one keeps its message_id: the call may well have run before.
    assert not is_final(CircuitOpen("the circuit to 'athena' is open", retry_after=1.0))
    assert not is_final(AgentUnavailable("down"))
    assert is_final(ActionFailed("athena.answer failed: RuntimeError"))


async def test_undoing_a_cancelled_saga_ends_in_the_cancellation_even_when_undoing_fails() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def failing_undo() -> None:
        started.set()
        await release.wait()
        raise RuntimeError("the channel closed while undoing")

    runner = asyncio.create_task(_to_the_end(failing_undo()))
    await asyncio.wait_for(started.wait(), 5)
    runner.cancel()  # while undoing; the undo fails only after
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)
