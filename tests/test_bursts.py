"""One warning per burst of fallbacks, not one per fallback: the first said at once, then a count per interval."""

from __future__ import annotations

import logging

import pytest

from kosmos_grpc.resilience import Resilience, ResiliencePolicy, RetryPolicy

from .conftest import ManualClock, Mesh, free_port
from .helpers.agents import Echo

LOGGER = "kosmos_grpc.resilience.fallback"


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
    assert len(lines) == 2
    assert lines[1].startswith("zeus: echo answered for down (127.0.0.1:")
    assert lines[1].endswith("(and 79 more like it in the last 30 s)")
