"""Apollo on a real mesh: health from every agent's Watch stream, its changes published, circuits, event rates."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents.apollo import Apollo
from agents.event_rates import OTHER, EventRates
from agents.health_watch import UNREACHABLE
from kosmos_grpc import AgentUnavailable, ConfigError, InvalidEnvelope, NotFound, ResiliencePolicy
from kosmos_grpc.resilience import BreakerPolicy, RetryPolicy
from kosmos_grpc.subjects import SYSTEM_HEALTH
from tests.helpers.agents import Echo, Forward
from tests.helpers.bus_mesh import BusMesh, next_event, until
from tests.helpers.toys import Athena, Dionysus

from .conftest import ManualClock, free_port

FAST = {"watch_backoff_max_seconds": 0.2, "registry_poll_seconds": 0.1, "watch_connect_timeout_seconds": 1.0}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[BusMesh]:
    mesh = BusMesh(tmp_path)
    await mesh.start()
    try:
        for agent in (Athena(), Dionysus(), Echo()):
            await mesh.serve(agent)
        yield mesh
    finally:
        await mesh.close()


async def status(mesh: BusMesh, **payload: Any) -> dict[str, Any]:
    response = await mesh.client().delegate("apollo", "get_status", payload, timeout_ms=5_000)
    result: dict[str, Any] = response.result
    return result


async def healths(mesh: BusMesh) -> dict[str, str]:
    return {name: entry["health"] for name, entry in (await status(mesh))["agents"].items()}


async def test_get_status_shows_every_agent_serving_since_when(mesh: BusMesh) -> None:
    apollo = Apollo()
    await mesh.serve(apollo, settings=FAST)
    everyone = {"apollo": "SERVING", "athena": "SERVING", "dionysus": "SERVING", "echo": "SERVING"}

    async def all_serving() -> bool:
        return await healths(mesh) == everyone

    await until(all_serving)
    reply = await status(mesh)
    assert reply["source"] == "apollo"
    for entry in reply["agents"].values():
        since = datetime.datetime.fromisoformat(entry["since"])
        assert abs((datetime.datetime.now(datetime.UTC) - since).total_seconds()) < 30
        assert entry["circuits"] == []
    assert set((await status(mesh, agent="athena"))["agents"]) == {"athena"}


async def test_a_stopped_agent_turns_unreachable_is_published_and_comes_back_at_its_address(mesh: BusMesh) -> None:
    await mesh.serve(Apollo(), settings=FAST)
    await until(lambda: _health_is(mesh, "echo", "SERVING"))
    first_since = (await status(mesh, agent="echo"))["agents"]["echo"]["since"]
    events = await mesh.bus().subscribe(SYSTEM_HEALTH)

    address = await mesh.stop("echo")
    down = await next_event(events, {"agent": "echo", "previous": "SERVING"})
    assert down.payload["status"] in {"NOT_SERVING", UNREACHABLE}
    assert datetime.datetime.fromisoformat(down.payload["since"])
    await until(lambda: _health_is(mesh, "echo", UNREACHABLE))

    await mesh.serve(Echo(), address=address)
    up = await next_event(events, {"agent": "echo", "status": "SERVING"})
    assert up.payload["previous"] == UNREACHABLE
    entry = (await status(mesh, agent="echo"))["agents"]["echo"]
    assert entry["health"] == "SERVING"
    assert entry["since"] == up.payload["since"] > first_since


async def _health_is(mesh: BusMesh, agent: str, health: str) -> bool:
    return bool((await status(mesh, agent=agent))["agents"][agent]["health"] == health)


async def test_a_watched_agent_drains_without_waiting_for_apollo_to_hang_up(mesh: BusMesh) -> None:
    class Patient(Echo):
        name = "patient"

    patient = await mesh.serve(Patient(), grace=10)
    await mesh.serve(Apollo(), settings=FAST)
    await until(lambda: _health_is(mesh, "patient", "SERVING"))
    started = time.monotonic()
    await asyncio.wait_for(patient.stop(), 5)  # Apollo's stream held open would hold the drain 10 s
    assert time.monotonic() - started < 2
    del mesh.servers["patient"]


async def test_an_agent_joining_later_is_watched(mesh: BusMesh) -> None:
    await mesh.serve(Apollo(), settings=FAST)

    class Late(Echo):
        name = "late"

    await mesh.serve(Late())
    await until(lambda: _health_is(mesh, "late", "SERVING"))


async def test_events_are_counted_per_subject_with_their_rate(mesh: BusMesh) -> None:
    await mesh.serve(Apollo(), settings=FAST)
    bus = mesh.bus()
    for _ in range(3):
        await bus.publish("kosmos.events.x.y", {"n": 1}, acknowledge=True)
    await bus.publish("kosmos.events.a.b", {}, acknowledge=True)
    await bus.publish("kosmos.commands.scale.up", {}, acknowledge=True)  # not an event: not counted

    async def counted() -> dict[str, Any] | None:
        events: dict[str, Any] = (await status(mesh))["events"]
        return events if events.get("kosmos.events.x.y", {}).get("total") == 3 else None

    events = await until(counted)
    assert events["kosmos.events.a.b"]["total"] == 1
    assert 0 < events["kosmos.events.x.y"]["per_second"] <= 3
    assert not any(subject.startswith("kosmos.commands") for subject in events)


async def test_a_circuit_opened_by_a_caller_shows_under_its_target(mesh: BusMesh) -> None:
    mesh.registry.set("ghost", f"127.0.0.1:{free_port()}")  # nothing listens there
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(failure_threshold=2))
    await mesh.serve(Forward(), resilience=policy)
    await mesh.serve(Apollo(), settings=FAST)
    client = mesh.client(resilience=False)
    for _ in range(2):
        with pytest.raises(AgentUnavailable):
            await client.delegate("forward", "forward", {"agent": "ghost", "action": "echo"}, timeout_ms=5_000)

    async def ghost() -> dict[str, Any] | None:
        entry: dict[str, Any] = (await status(mesh, agent="ghost"))["agents"]["ghost"]
        return entry if entry["health"] == UNREACHABLE else None

    entry = await until(ghost)
    assert entry["circuits"] == [{"caller": "forward", "state": "open", "failures": 2}]
    assert (await status(mesh, agent="echo"))["agents"]["echo"]["circuits"] == []


async def test_bad_input_is_named(mesh: BusMesh) -> None:
    await mesh.serve(Apollo(), settings=FAST)
    with pytest.raises(NotFound, match=r"payload\.agent: no agent named 'hades'"):
        await status(mesh, agent="hades")
    with pytest.raises(InvalidEnvelope, match=r"payload\.agent"):
        await status(mesh, agent="x" * 129)
    with pytest.raises(InvalidEnvelope, match=r"payload"):
        await status(mesh, agents="all")


async def test_stopping_apollo_ends_every_task_it_started(mesh: BusMesh) -> None:
    apollo = Apollo()
    await mesh.serve(apollo, settings=FAST)
    await until(lambda: _health_is(mesh, "athena", "SERVING"))
    started = [task for task in asyncio.all_tasks() if task.get_name().startswith("apollo")]
    assert sorted(task.get_name() for task in started) == [
        "apollo registry",
        *(f"apollo watching {name}" for name in ("apollo", "athena", "dionysus", "echo")),
    ]
    await mesh.stop("apollo")
    assert all(task.done() for task in started)


def test_settings_have_defaults_and_bounds() -> None:
    assert Apollo.checked_settings({}) == {
        "watch_backoff_max_seconds": 5.0,
        "watch_connect_timeout_seconds": 3.0,
        "registry_poll_seconds": 2.0,
        "describe_timeout_seconds": 1.0,
    }
    with pytest.raises(ConfigError, match=r"agents\.apollo\.settings\.watch_backoff_max_seconds"):
        Apollo.checked_settings({"watch_backoff_max_seconds": 0})
    with pytest.raises(ConfigError, match="must not contain"):
        Apollo.checked_settings({"backoff": 1})


def test_rates_come_from_the_last_minute_of_per_second_counts() -> None:
    clock = ManualClock()
    rates = EventRates(clock=clock)
    for _ in range(10):
        rates.record("kosmos.events.a")
    clock.advance(0.5)
    assert rates.snapshot() == {"kosmos.events.a": {"total": 10, "per_second": 10.0}}, "within the first second"
    clock.advance(9.5)  # 10 s since counting began
    rates.record("kosmos.events.a")
    assert rates.snapshot()["kosmos.events.a"] == {"total": 11, "per_second": 1.1}
    clock.advance(55)  # the first ten fell out of the window; the last one is still in
    assert rates.snapshot()["kosmos.events.a"] == {"total": 11, "per_second": round(1 / 60, 4)}
    clock.advance(60)
    assert rates.snapshot()["kosmos.events.a"] == {"total": 11, "per_second": 0.0}


def test_subjects_past_the_bound_are_counted_as_other() -> None:
    rates = EventRates(max_subjects=3, clock=ManualClock())
    for i in range(10):
        rates.record(f"kosmos.events.s{i}")
    rates.record("kosmos.events.s0")
    snapshot = rates.snapshot()
    assert set(snapshot) == {"kosmos.events.s0", "kosmos.events.s1", "kosmos.events.s2", OTHER}
    assert snapshot["kosmos.events.s0"]["total"] == 2
    assert snapshot[OTHER]["total"] == 7
