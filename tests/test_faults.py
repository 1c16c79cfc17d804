"""Faults with real processes: an agent killed mid-run, then restarted, seen through Zeus's resilience."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from kosmos_grpc import Coordinator

from .conftest import Processes, free_port, run_tool, tool, until_serving

MESH = """
[retry]
attempts = 3
initial_seconds = 0.05
max_seconds = 0.2
jitter_seconds = 0.01

[breaker]
failure_threshold = 5
recovery_timeout_seconds = 4

[agents.zeus]
object = "agents.zeus:Zeus"
address = "127.0.0.1:{zeus}"

[agents.athena]
object = "tests.helpers.toys:Athena"
address = "127.0.0.1:{athena}"
fallback = "dionysus"

[agents.dionysus]
object = "tests.helpers.toys:Dionysus"
address = "127.0.0.1:{dionysus}"
"""

ASK = {"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}


async def _athena_circuit(client: Coordinator) -> tuple[str, int]:
    card = await client.describe("zeus")
    (circuit,) = [c for c in card.circuits if c.target == "athena"]
    return circuit.state, circuit.failures


async def test_a_killed_agent_is_retried_then_replaced_by_its_fallback_until_it_is_back(
    tmp_path: Path, processes: Processes
) -> None:
    ports = {name: free_port() for name in ("zeus", "athena", "dionysus")}
    config = tmp_path / "kosmos.toml"
    config.write_text(MESH.format(**ports))

    def serve(name: str) -> int:
        return processes.start(tool("kosmos"), "--config", str(config), "serve", name).pid

    pids = {name: serve(name) for name in ports}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    async with Coordinator(addresses, resilience=False) as client:  # the test itself never retries
        for name in ports:
            await until_serving(client, name)
        answer = await client.delegate("zeus", "delegate", ASK)
        assert answer.result["agent"] == "athena"

        athena = next(p for p in processes.started if p.pid == pids["athena"])
        athena.send_signal(signal.SIGKILL)
        athena.wait(10)

        # Zeus tries Athena three times (one call, one counted failure), then asks Dionysus.
        answer = await client.delegate("zeus", "delegate", ASK)
        assert answer.result["agent"] == "dionysus"
        assert answer.result["fallback_for"] == "athena"
        assert await _athena_circuit(client) == ("closed", 1)
        # Each call counts once: the fifth reaches the threshold of five, and the circuit opens.
        for failures in (2, 3, 4, 5):
            answer = await client.delegate("zeus", "delegate", ASK)
            assert answer.result["agent"] == "dionysus"
            assert await _athena_circuit(client) == ("open" if failures == 5 else "closed", failures)
        # While open, Dionysus answers at once and Athena is not tried: no more failures are counted.
        answer = await client.delegate("zeus", "delegate", ASK)
        assert answer.result["agent"] == "dionysus"
        assert await _athena_circuit(client) == ("open", 5)
        code, out, _ = await run_tool(tool("kosmos"), "--config", str(config), "agents")
        assert code == 1  # athena is not SERVING
        assert "athena open (5 failures" in out

        serve("athena")
        await until_serving(client, "athena")
        for _ in range(100):  # bounded: the 4 s recovery timeout ends within the loop
            if (await _athena_circuit(client))[0] == "half_open":
                break
            await asyncio.sleep(0.1)
        assert (await _athena_circuit(client))[0] == "half_open"
        for _ in range(100):  # bounded: Zeus's channel reconnects within its 2 s backoff
            answer = await client.delegate("zeus", "delegate", ASK)
            if answer.result["agent"] == "athena":
                break
            await asyncio.sleep(0.1)
        assert answer.result["agent"] == "athena"
        assert "fallback_for" not in answer.result
        assert await _athena_circuit(client) == ("closed", 0)
