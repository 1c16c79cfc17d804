"""Retries, circuit breakers and fallbacks, against real agents on loopback."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from kosmos_grpc import (
    ActionFailed,
    AgentUnavailable,
    CircuitOpen,
    Coordinator,
    DeadlineExceeded,
    InvalidEnvelope,
    ResourceExhausted,
)
from kosmos_grpc.resilience import BreakerPolicy, CircuitState, Resilience, ResiliencePolicy, RetryPolicy
from tests.conftest import ManualClock, Mesh, free_port, run_tool
from tests.helpers.agents import Echo, Flaky, Forward

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, jitter=0.01)


def resilience(
    clock: ManualClock | None = None, *, breaker: BreakerPolicy | None = None, fallbacks: dict[str, str] | None = None
) -> Resilience:
    policy = ResiliencePolicy(retry=FAST, breaker=breaker or BreakerPolicy(), fallbacks=fallbacks or {})
    return Resilience(policy, clock=clock or ManualClock())


async def test_an_agent_that_fails_twice_then_succeeds_is_retried_under_one_message_id(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        response = await client.delegate("flaky", "fail_then_succeed", {"times": 2})
    assert response.result == {"attempt": 3}
    assert len(flaky.calls) == 3
    assert len(set(flaky.calls)) == 1  # every retry reused the message_id
    assert response.request_message_id == flaky.calls[0]


@pytest.mark.parametrize(("error", "raised"), [("internal", ActionFailed), ("invalid", InvalidEnvelope)])
async def test_an_error_that_is_not_retryable_is_not_retried(mesh: Mesh, error: str, raised: type[Exception]) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        with pytest.raises(raised):
            await client.delegate("flaky", "fail_then_succeed", {"times": 1, "error": error})
    assert len(flaky.calls) == 1


async def test_resource_exhausted_without_a_retry_delay_is_not_retried(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        with pytest.raises(ResourceExhausted):
            await client.delegate("flaky", "fail_then_succeed", {"times": 1, "error": "exhausted"})
    assert len(flaky.calls) == 1


async def test_resource_exhausted_is_retried_after_the_delay_the_server_asked_for(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        started = time.monotonic()
        response = await client.delegate(
            "flaky", "fail_then_succeed", {"times": 1, "error": "exhausted", "retry_after_s": 0.3}
        )
        waited = time.monotonic() - started
    assert response.result == {"attempt": 2}
    assert waited >= 0.3  # the client's own backoff here is at most 0.05 s: this is the server's delay


async def test_no_retry_starts_past_the_deadline(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as caught:
            await client.delegate(
                "flaky", "fail_then_succeed", {"times": 5, "error": "exhausted", "retry_after_s": 5}, timeout_ms=500
            )
        elapsed = time.monotonic() - started
    assert len(flaky.calls) == 1  # a retry after 5 s would start past the 0.5 s deadline
    assert caught.value.retry_after == pytest.approx(5)
    assert elapsed < 4


async def test_the_retries_stop_after_the_policys_attempts(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with mesh.client(resilience=resilience()) as client:
        with pytest.raises(AgentUnavailable):
            await client.delegate("flaky", "fail_then_succeed", {"times": 10})
    assert len(flaky.calls) == 3


async def test_a_circuit_opens_after_the_threshold_and_then_fails_fast_without_calling(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=3, recovery_timeout=30)
    async with mesh.client(resilience=resilience(clock, breaker=policy)) as client:
        for _ in range(3):
            with pytest.raises(ActionFailed):
                await client.delegate("flaky", "fail_then_succeed", {"times": 100, "error": "internal"})
        assert client.resilience is not None
        assert client.resilience.breaker("flaky").state is CircuitState.OPEN
        clock.advance(10)
        with pytest.raises(CircuitOpen) as caught:
            await client.delegate("flaky", "fail_then_succeed", {"times": 100, "error": "internal"})
    assert len(flaky.calls) == 3  # the fourth call never reached the agent
    error = caught.value
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "open" in str(error)
    assert "20.0 s" in str(error)  # when it will let a call through again
    assert error.retry_after == pytest.approx(20)


async def test_a_half_open_circuit_closes_on_a_successful_probe_and_reopens_on_a_failed_one(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=2, recovery_timeout=30)
    async with mesh.client(resilience=resilience(clock, breaker=policy)) as client:
        assert client.resilience is not None
        breaker = client.resilience.breaker("flaky")
        for _ in range(2):
            with pytest.raises(ActionFailed):
                await client.delegate("flaky", "fail_then_succeed", {"times": 3, "error": "internal"})
        assert breaker.state is CircuitState.OPEN
        clock.advance(30)
        assert breaker.current() is CircuitState.HALF_OPEN
        with pytest.raises(ActionFailed):  # the third failure: the probe fails, the circuit re-opens
            await client.delegate("flaky", "fail_then_succeed", {"times": 3, "error": "internal"})
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpen):
            await client.delegate("flaky", "fail_then_succeed", {"times": 3, "error": "internal"})
        clock.advance(30)
        response = await client.delegate("flaky", "fail_then_succeed", {"times": 3, "error": "internal"})
        assert response.result == {"attempt": 4}
        assert breaker.current() is CircuitState.CLOSED


async def test_a_half_open_circuit_lets_only_its_probes_through(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=1, recovery_timeout=5, half_open_max_calls=1)
    async with mesh.client(resilience=resilience(clock, breaker=policy)) as client:
        with pytest.raises(ActionFailed):
            await client.delegate("flaky", "fail_then_succeed", {"times": 1, "error": "internal"})
        clock.advance(5)
        flaky.gate.clear()
        probe = asyncio.create_task(client.delegate("flaky", "effect"))
        await asyncio.wait_for(flaky.ran.wait(), 5)
        with pytest.raises(CircuitOpen, match="half-open"):
            await client.delegate("flaky", "effect")
        flaky.gate.set()
        assert (await asyncio.wait_for(probe, 5)).result == {"effects": 1}
        assert (await client.delegate("flaky", "effect")).result == {"effects": 2}


async def test_invalid_argument_never_counts_against_the_circuit(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    counted = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL})
    policy = BreakerPolicy(failure_threshold=2, counted=counted)
    async with mesh.client(resilience=resilience(breaker=policy)) as client:
        for _ in range(4):
            with pytest.raises(InvalidEnvelope):
                await client.delegate("flaky", "fail_then_succeed", {"times": 100, "error": "invalid"})
        assert client.resilience is not None
        assert client.resilience.breaker("flaky").state is CircuitState.CLOSED
    assert len(flaky.calls) == 4


async def test_the_circuit_state_is_a_gauge(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    labels = {"source": "gauge-test", "target": "flaky"}
    policy = ResiliencePolicy(retry=FAST, breaker=BreakerPolicy(failure_threshold=1, recovery_timeout=30))
    clock = ManualClock()
    async with mesh.client(resilience=Resilience(policy, source="gauge-test", clock=clock)) as client:
        await client.delegate("flaky", "fail_then_succeed")
        assert REGISTRY.get_sample_value("kosmos_circuit_state", labels) == 0
        with pytest.raises(ActionFailed):
            await client.delegate("flaky", "fail_then_succeed", {"times": 100, "error": "internal"})
        assert REGISTRY.get_sample_value("kosmos_circuit_state", labels) == 2
        clock.advance(31)  # no call since: the gauge still tells the truth
        assert REGISTRY.get_sample_value("kosmos_circuit_state", labels) == 1


async def test_a_fallback_answers_when_the_target_is_down_and_says_who_answered(mesh: Mesh) -> None:
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")  # nothing listens there
    await mesh.serve(_named(Echo, "dionysus"))
    async with mesh.client(resilience=resilience(fallbacks={"athena": "dionysus"})) as client:
        response = await client.delegate("athena", "echo", {"q": 1})
    assert response.agent == "dionysus"
    assert response.fallback_for == "athena"
    assert response.result == {"q": 1}


async def test_a_fallback_answers_at_once_while_the_targets_circuit_is_open(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    await mesh.serve(_named(Flaky, "understudy"))
    policy = BreakerPolicy(failure_threshold=1)
    async with mesh.client(resilience=resilience(breaker=policy, fallbacks={"flaky": "understudy"})) as client:
        failing = {"times": 3, "only": "flaky"}
        # 3 attempts, each UNAVAILABLE: one failed call, which opens the circuit.
        response = await client.delegate("flaky", "fail_then_succeed", failing)
        assert response.agent == "understudy"
        response = await client.delegate("flaky", "fail_then_succeed", failing)
        assert response.agent == "understudy"
    assert len(flaky.calls) == 3  # the second call went straight to the fallback


async def test_a_fallback_chain_never_loops(mesh: Mesh) -> None:
    for name in ("ares", "eris"):
        mesh.registry.set(name, f"127.0.0.1:{free_port()}")
    fallbacks = {"ares": "eris", "eris": "ares"}
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=1), fallbacks=fallbacks)
    assert policy.chain("ares") == ["ares", "eris"]
    async with mesh.client(resilience=Resilience(policy, clock=ManualClock())) as client:
        with pytest.raises(AgentUnavailable, match="eris"):
            await asyncio.wait_for(client.delegate("ares", "echo"), 10)
        assert client.resilience is not None
        assert {name: b.failures for name, b in client.resilience.breakers.items()} == {"ares": 1, "eris": 1}


def _named(cls: type[Echo] | type[Flaky], name: str) -> Echo | Flaky:
    """An instance of ``cls`` serving under another name."""
    subclass = type(f"{cls.__name__}As{name.title()}", (cls,), {"name": name})
    agent: Echo | Flaky = subclass()
    return agent


async def test_a_stream_is_retried_and_falls_back_until_its_first_chunk(mesh: Mesh) -> None:
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")  # nothing listens there
    await mesh.serve(_named(Echo, "dionysus"))
    async with mesh.client(resilience=resilience(fallbacks={"athena": "dionysus"})) as client:
        chunks = [chunk async for chunk in client.stream("athena", "count", {"n": 3})]
        assert client.resilience is not None
        assert client.resilience.breaker("athena").failures == 1  # one call, its 3 attempts included
    assert [(c.agent, c.data) for c in chunks] == [("dionysus", {"i": i}) for i in range(3)]


async def test_a_failure_passed_on_by_a_middle_agent_is_not_blamed_on_it(mesh: Mesh) -> None:
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")  # nothing listens there
    quick = ResiliencePolicy(retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.01, jitter=0))
    forward = Forward()
    await mesh.serve(forward, resilience=quick)
    await mesh.serve(_named(Echo, "dionysus"))
    client_policy = resilience(breaker=BreakerPolicy(failure_threshold=1), fallbacks={"forward": "dionysus"})
    async with mesh.client(resilience=client_policy) as client:
        with pytest.raises(AgentUnavailable) as caught:
            await client.delegate("forward", "forward", {"agent": "athena", "action": "echo"})
        assert client.resilience is not None
        breaker = client.resilience.breaker("forward")
    # Athena is down, not the middle agent: its circuit stays closed, the call is neither
    # retried (the middle agent retried athena already) nor sent to the middle agent's fallback.
    assert caught.value.origin == "athena"
    assert "athena" in str(caught.value)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failures == 0
    server = mesh.servers[0]
    assert server.coordinator.resilience is not None
    assert server.coordinator.resilience.breaker("athena").failures == 1  # one call, both of its attempts


async def test_a_call_cancelled_while_it_probes_frees_its_probe(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=1, recovery_timeout=30)
    async with mesh.client(resilience=resilience(clock, breaker=policy)) as client:
        with pytest.raises(AgentUnavailable):
            await client.delegate("flaky", "fail_then_succeed", {"times": 100})
        assert client.resilience is not None
        breaker = client.resilience.breaker("flaky")
        assert breaker.state is CircuitState.OPEN
        clock.advance(31)
        flaky.gate.clear()
        probe = asyncio.create_task(client.delegate("flaky", "effect"))
        await asyncio.wait_for(flaky.ran.wait(), 5)
        with pytest.raises(CircuitOpen, match="probe"):  # the one probe slot is taken
            await client.delegate("flaky", "fail_then_succeed")
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        flaky.gate.set()
        response = await client.delegate("flaky", "fail_then_succeed")  # the freed slot probes
    assert response.result["attempt"] > 1
    assert breaker.current() is CircuitState.CLOSED


async def test_a_call_whose_deadline_passed_before_it_started_does_not_count_against_the_circuit(
    mesh: Mesh,
) -> None:
    await mesh.serve(Echo())
    rez = resilience(breaker=BreakerPolicy(failure_threshold=1))
    async with mesh.client(resilience=rez) as client:

        async def attempt(target: str) -> None:
            raise AssertionError("an attempt past the deadline must not start")

        with pytest.raises(DeadlineExceeded):
            await rez.call("echo", attempt, time.monotonic() - 1)
        await client.delegate("echo", "echo")
    assert rez.breaker("echo").state is CircuitState.CLOSED
    assert rez.breaker("echo").failures == 0


async def test_a_probe_that_fails_with_a_fault_of_the_callers_own_frees_its_slot() -> None:
    clock = ManualClock()
    rez = resilience(clock, breaker=BreakerPolicy(failure_threshold=1, recovery_timeout=30))
    breaker = rez.breaker("athena")
    breaker.enter()
    breaker.failed(grpc.StatusCode.UNAVAILABLE)
    clock.advance(31)

    async def broken(target: str) -> None:
        raise RuntimeError("a bug on the calling side, not an answer from athena")

    async def fine(target: str) -> str:
        return "answered"

    with pytest.raises(RuntimeError):
        await rez.call("athena", broken, None)
    assert await rez.call("athena", fine, None) == "answered"  # the probe slot was freed
    assert breaker.state is CircuitState.CLOSED


async def test_a_stream_that_fails_after_its_first_chunk_is_not_retried(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    seen: list[dict[str, object]] = []

    async def read(client: Coordinator) -> None:
        async for chunk in client.stream("flaky", "effect_stream", {"chunks": 2, "fail": True}):
            seen.append(chunk.data)

    async with mesh.client(resilience=resilience()) as client:
        with pytest.raises(AgentUnavailable, match="mid-stream"):
            await read(client)
    assert seen == [{"effects": 1, "i": 0}, {"effects": 1, "i": 1}]  # no chunk twice
    assert flaky.effects == 1


async def test_a_call_counts_once_against_the_circuit_whatever_its_retries(mesh: Mesh) -> None:
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")  # nothing listens there
    rez = resilience(breaker=BreakerPolicy(failure_threshold=5))
    assert rez.policy.retry_for("athena").attempts == 3  # each call below is 3 attempts
    async with mesh.client(resilience=rez) as client:
        breaker = rez.breaker("athena")
        for calls in range(1, 5):
            with pytest.raises(AgentUnavailable):
                await client.delegate("athena", "echo")
            assert (breaker.state, breaker.failures) == (CircuitState.CLOSED, calls)
        with pytest.raises(AgentUnavailable) as fifth:
            await client.delegate("athena", "echo")
        assert breaker.state is CircuitState.OPEN
        assert not isinstance(fifth.value, CircuitOpen)  # the fifth call was made, and opened it
        with pytest.raises(CircuitOpen):
            await client.delegate("athena", "echo")


async def test_each_attempt_of_a_call_is_made_but_the_call_counts_once(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    rez = resilience(breaker=BreakerPolicy(failure_threshold=2))
    async with mesh.client(resilience=rez) as client:
        with pytest.raises(AgentUnavailable):
            await client.delegate("flaky", "fail_then_succeed", {"times": 100})
    assert len(flaky.calls) == 3
    assert (rez.breaker("flaky").state, rez.breaker("flaky").failures) == (CircuitState.CLOSED, 1)


async def test_a_call_whose_agent_and_fallback_are_down_names_the_agent_asked(mesh: Mesh) -> None:
    athena, dionysus = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"  # nothing listens there
    mesh.registry.set("athena", athena)
    mesh.registry.set("dionysus", dionysus)
    async with mesh.client(resilience=resilience(fallbacks={"athena": "dionysus"})) as client:
        with pytest.raises(AgentUnavailable) as caught:
            await client.delegate("athena", "answer")
    error = caught.value
    assert str(error) == (
        f"agent 'athena' is unavailable at {athena} (connection refused); "
        f"its fallback 'dionysus' too ({dionysus}, connection refused): is the mesh running?"
        " (start it with 'make run' or 'kosmos up')"
    )
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "AGENT_UNAVAILABLE"
    assert error.origin == "athena"
    assert error.metadata["fallback"] == "dionysus"


async def test_an_open_circuit_and_a_fallback_down_are_both_told(mesh: Mesh) -> None:
    dionysus = f"127.0.0.1:{free_port()}"
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")
    mesh.registry.set("dionysus", dionysus)
    rez = resilience(breaker=BreakerPolicy(failure_threshold=1), fallbacks={"athena": "dionysus"})
    async with mesh.client(resilience=rez) as client:
        with pytest.raises(AgentUnavailable):
            await client.delegate("athena", "answer")  # both circuits open now
        rez.breaker("dionysus").succeeded()  # dionysus's circuit closed again: it is tried, and fails
        with pytest.raises(CircuitOpen) as caught:
            await client.delegate("athena", "answer")
    message = str(caught.value)
    assert message.startswith("the circuit to 'athena' is open after 1 failures in a row")
    assert message.endswith(
        f"; its fallback 'dionysus' too ({dionysus}, connection refused): is the mesh running?"
        " (start it with 'make run' or 'kosmos up')"
    )
    assert caught.value.origin == "athena"


async def test_a_cli_call_to_a_down_agent_and_its_down_fallback_is_one_line(tmp_path: Path) -> None:
    athena, dionysus = free_port(), free_port()
    config = tmp_path / "kosmos.toml"
    config.write_text(
        f"""
[agents.athena]
object = "tests.helpers.toys:Athena"
address = "127.0.0.1:{athena}"
fallback = "dionysus"

[agents.dionysus]
object = "tests.helpers.toys:Dionysus"
address = "127.0.0.1:{dionysus}"
"""
    )
    code, out, err = await run_tool(
        sys.executable,
        "-m",
        "kosmos_grpc.cli",
        "--config",
        str(config),
        "call",
        "athena",
        "answer",
        '{"topic": "grpc"}',
    )
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"kosmos: UNAVAILABLE: agent 'athena' is unavailable at 127.0.0.1:{athena} (connection refused); "
        f"its fallback 'dionysus' too (127.0.0.1:{dionysus}, connection refused): is the mesh running?"
        " (start it with 'make run' or 'kosmos up')"
    ]


async def test_a_fallback_that_fails_otherwise_is_its_own_error_told_of_the_agent_asked(mesh: Mesh) -> None:
    athena = f"127.0.0.1:{free_port()}"  # nothing listens there
    mesh.registry.set("athena", athena)
    await mesh.serve(_named(Flaky, "dionysus"))
    async with mesh.client(resilience=resilience(fallbacks={"athena": "dionysus"})) as client:
        with pytest.raises(ActionFailed) as caught:
            await client.delegate("athena", "fail_then_succeed", {"times": 1, "error": "internal"})
    assert str(caught.value).startswith(
        f"agent 'athena' is unavailable at {athena} (connection refused); then its fallback 'dionysus': "
    )
    assert caught.value.origin == "dionysus"
