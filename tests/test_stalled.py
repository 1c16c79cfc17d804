"""A stalled callee (a frozen process, a handler that never answers) is cut off by its attempt's own timeout:
its breaker counts it, its circuit opens, and its fallback answers within the caller's deadline."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agents.zeus import Zeus
from kosmos_grpc import Agent, Context, Coordinator, action, load_config
from kosmos_grpc.errors import ConfigError
from kosmos_grpc.resilience import BreakerPolicy, CircuitState, Resilience, ResiliencePolicy, RetryPolicy
from tests.helpers.toys import Dionysus

from .conftest import Mesh, Processes, free_port, tool, until_serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ASK = {"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}
ONCE = RetryPolicy(attempts=1)


async def test_a_frozen_agent_opens_its_circuit_and_its_fallback_answers_within_the_callers_deadline(
    tmp_path: Path, processes: Processes, mesh: Mesh
) -> None:
    port = free_port()
    config = tmp_path / "kosmos.toml"
    config.write_text(f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "127.0.0.1:{port}"\n')
    athena = processes.start(tool("kosmos"), "--config", str(config), "serve", "athena")
    mesh.registry.set("athena", f"127.0.0.1:{port}")
    await mesh.serve(Dionysus())
    policy = ResiliencePolicy(
        retry=ONCE, breaker=BreakerPolicy(failure_threshold=3, recovery_timeout=600), fallbacks={"athena": "dionysus"}
    )
    zeus = await mesh.serve(Zeus(), resilience=policy)
    assert zeus.coordinator.resilience is not None
    breaker = zeus.coordinator.resilience.breaker("athena")
    async with Coordinator(mesh.registry, resilience=False) as client:
        await until_serving(client, "athena")
        assert (await client.delegate("zeus", "delegate", ASK)).result["agent"] == "athena"
        os.kill(athena.pid, signal.SIGSTOP)
        try:
            # Each call has two seconds; Zeus's attempt to Athena gets half of them, then Dionysus answers.
            for failures in (1, 2, 3):
                answer = await client.delegate("zeus", "delegate", ASK, timeout_ms=2_000)
                assert answer.result["agent"] == "dionysus"
                assert answer.result["fallback_for"] == "athena"
                assert breaker.failures == failures
            assert breaker.current() is CircuitState.OPEN
            # Open: Dionysus answers without Athena being tried, and nothing more is counted.
            answer = await client.delegate("zeus", "delegate", ASK, timeout_ms=2_000)
            assert answer.result["agent"] == "dionysus"
            assert breaker.failures == 3
        finally:
            os.kill(athena.pid, signal.SIGCONT)  # so that the fixture's SIGTERM is heard


class Stall(Agent):
    """Answers nothing until the test lets it."""

    name = "stall"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    @action
    async def answer(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Wait for the release."""
        self.entered += 1
        await self.release.wait()
        return {"from": "stall"}

    @action
    async def explain(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Wait for the release, then stream."""
        self.entered += 1
        await self.release.wait()
        yield {"from": "stall"}


class Spare(Agent):
    """Stands in for Stall."""

    name = "spare"

    @action
    async def answer(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer at once."""
        return {"from": "spare"}

    @action
    async def explain(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream at once."""
        yield {"from": "spare"}


async def test_a_stalled_handler_is_cut_off_by_its_attempt_timeout_for_calls_and_streams(mesh: Mesh) -> None:
    stall = Stall()
    await mesh.serve(stall)
    await mesh.serve(Spare())
    policy = ResiliencePolicy(
        retry=ONCE,
        retries={"stall": RetryPolicy(attempts=1, attempt_timeout=0.1)},
        breaker=BreakerPolicy(failure_threshold=2, recovery_timeout=600),
        fallbacks={"stall": "spare"},
    )
    resilience = Resilience(policy)
    try:
        async with mesh.client(resilience=resilience) as client:
            # A stream's attempt bounds the wait for its first chunk; then Spare streams instead.
            chunks = [chunk.data async for chunk in client.stream("stall", "explain", timeout_ms=20_000)]
            assert chunks == [{"from": "spare"}]
            assert resilience.breaker("stall").failures == 1
            answer = await client.delegate("stall", "answer", timeout_ms=20_000)
            assert (answer.result, answer.fallback_for) == ({"from": "spare"}, "stall")
            assert resilience.breaker("stall").current() is CircuitState.OPEN
            answer = await client.delegate("stall", "answer", timeout_ms=20_000)
            assert answer.result == {"from": "spare"}
            assert stall.entered == 2  # the open circuit sent nothing more to Stall
    finally:
        stall.release.set()


def test_an_attempt_gets_a_share_of_the_time_left_and_no_more_than_its_timeout() -> None:
    policy = ResiliencePolicy(retries={"slow": RetryPolicy(attempt_timeout=0.5)})
    assert policy.attempt_seconds("any", 10.0, falls_back=True) == 5.0
    assert policy.attempt_seconds("any", 10.0, falls_back=False) == 9.5
    assert policy.attempt_seconds("slow", 10.0, falls_back=False) == 0.5
    assert policy.attempt_seconds("slow", 0.4, falls_back=True) == 0.2


def test_attempt_timeout_seconds_comes_from_the_config_per_agent(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        "[retry]\nattempt_timeout_seconds = 4\n"
        "[agents.a]\nobject='m:C'\naddress='h:1'\n[agents.a.retry]\nattempt_timeout_seconds = 0.25\n"
        "[agents.b]\nobject='m:C'\naddress='h:2'\n"
    )
    policy = load_config(path).resilience
    assert (policy.retry_for("a").attempt_timeout, policy.retry_for("b").attempt_timeout) == (0.25, 4)
    path.write_text("[retry]\nattempt_timeout_seconds = 0\n[agents.a]\nobject='m:C'\naddress='h:1'\n")
    with pytest.raises(ConfigError, match="attempt_timeout_seconds"):
        load_config(path)
