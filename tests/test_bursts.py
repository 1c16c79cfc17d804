"""One warning per burst of fallbacks, not one per fallback: the first said in full, then a count per interval."""

from __future__ import annotations

import logging

import pytest

from kosmos_grpc.resilience import Resilience, ResiliencePolicy, RetryPolicy
from kosmos_grpc.telemetry.bursts import BurstLog

from .conftest import ManualClock, Mesh, free_port
from .helpers.agents import Echo

LOGGER = "kosmos_grpc.resilience.fallback"


def test_a_burst_is_its_first_event_then_one_count_an_interval_and_a_quiet_kind_begins_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    log = logging.getLogger("tests.bursts")
    bursts: BurstLog[str] = BurstLog(log, lambda key, n, s: f"{n} more {key} in {s:.0f} s", every=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="tests.bursts"):
        for _ in range(100):
            bursts.event("drops", "dropped %d", 1)
            clock.advance(0.1)
        assert [r.getMessage() for r in caplog.records] == ["dropped 1"]
        clock.advance(21)
        bursts.event("drops", "dropped %d", 2)  # 30 s after the first line: the 100 since it, counted
        bursts.event("other", "other %d", 1)  # another kind has its own burst
        clock.advance(31)
        bursts.event("drops", "dropped %d", 3)  # quiet for an interval: a new burst, said in full
    assert [r.getMessage() for r in caplog.records] == ["dropped 1", "100 more drops in 31 s", "other 1", "dropped 3"]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


async def test_eighty_fallbacks_log_one_warning_then_one_summary(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    await mesh.serve(Echo())
    mesh.registry.set("down", f"127.0.0.1:{free_port()}")  # nothing listens there
    clock = ManualClock()
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=1), fallbacks={"down": "echo"})
    async with mesh.client(source_agent="zeus", resilience=Resilience(policy, source="zeus", clock=clock)) as client:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(80):
                answer = await client.delegate("down", "echo", {"n": 1})
                assert answer.fallback_for == "down"
            lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert len(lines) == 1
            assert lines[0].startswith("zeus: echo answered for down (127.0.0.1:")
            clock.advance(30)
            await client.delegate("down", "echo", {"n": 1})
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines[1:] == ["zeus: 80 more fallbacks from down to echo in the last 30 s"]
