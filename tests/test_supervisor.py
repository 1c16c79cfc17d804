"""`kosmos up` as a supervisor, with real processes: restarts, crash loops, stops, a second `up`.

Each test runs `python -m kosmos_grpc.cli --config <tmp config> up` as a subprocess on port-0
addresses (fixed free ports where the test is about them) and stops it, and every child it saw,
by PID.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kosmos_grpc import Coordinator
from kosmos_grpc.bus import BrokerServer, GrpcEventBus
from kosmos_grpc.config import BusConfig, MeshConfig
from kosmos_grpc.subjects import SYSTEM_HEALTH
from kosmos_grpc.supervisor import (
    CRASH_LOOP_RESTARTS,
    HealthEvents,
    OutputTail,
    Restarts,
    describe_exit,
    should_restart,
)

from .conftest import Processes, environment
from .test_cli import Lines, alive, free_port, wait_gone

MESH = """
[mesh]
grace_seconds = 2

[breaker]
failure_threshold = 2
recovery_timeout_seconds = 1

[agents.zeus]
object = "agents.zeus:Zeus"
address = "{zeus}"

[agents.athena]
object = "agents.athena:Athena"
address = "127.0.0.1:0"
fallback = "dionysus"
restart = "{athena_restart}"

[agents.dionysus]
object = "agents.dionysus:Dionysus"
address = "127.0.0.1:0"
"""

FLAKY = '''
"""An agent that exits at once on start while a file named `crash` lies next to it."""

import os
from pathlib import Path

from kosmos_grpc import Agent, action


class Flaky(Agent):
    name = "flaky"

    async def on_start(self) -> None:
        if Path(__file__).with_name("crash").exists():
            os._exit(3)

    @action
    async def ping(self, ctx, payload):
        return {"pong": True}
'''

SLOW = '''
"""An agent whose start takes long; it writes down its PID and every SIGINT or SIGTERM it gets."""

import asyncio
import io
import os
import signal
from pathlib import Path

from kosmos_grpc import Agent

NOTES = Path(__file__).with_name("slow-signals")


def note(text):
    with NOTES.open("a") as notes:
        notes.write(text + "\\n")


class Slow(Agent):
    name = "slow"

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, note, sig.name)
        note(f"pid {os.getpid()}")
        print("slow: starting", flush=True)
        await asyncio.sleep(30)
'''

ASK_ATHENA = {"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}


class ErrLines(Lines):
    """Every line a process writes to stderr, read as it comes."""

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def rest(self, timeout: float = 30) -> list[str]:
        """The lines up to the end of the stream; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.01, deadline - time.monotonic()))) is not None:
            self.seen.append(line)
        return self.seen


class Up:
    """One `kosmos up` subprocess: its stdout and stderr lines, and name -> (address, pid) from its table."""

    def __init__(self, processes: Processes, config: Path, **popen: Any) -> None:
        self.process = processes.start(sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "up", **popen)
        self.out = Lines(self.process)
        self.err = ErrLines(self.process)
        self.table: dict[str, tuple[str, int]] = {}
        self._processes = processes

    def wait_up(self) -> Up:
        lines = self.out.until("mesh up", timeout=60)
        header = next(i for i, line in enumerate(lines) if line.startswith("AGENT"))
        for line in lines[header + 1 : -1]:
            name, address, health, pid, _metrics = line.split()
            assert health == "SERVING"
            self.table[name] = (address, int(pid))
            self._processes.adopt(int(pid))
        return self

    def address(self, name: str) -> str:
        return self.table[name][0]

    def pid(self, name: str) -> int:
        return self.table[name][1]


def number(pattern: str, line: str) -> float:
    """The number ``pattern``'s group catches in ``line`` (which must hold it)."""
    found = re.search(pattern, line)
    assert found is not None, f"no {pattern!r} in {line!r}"
    return float(found.group(1))


def mesh_config(tmp_path: Path, *, zeus: str = "127.0.0.1:0", athena_restart: str = "on-failure") -> Path:
    path = tmp_path / "kosmos.toml"
    path.write_text(MESH.format(zeus=zeus, athena_restart=athena_restart))
    return path


def client_of(up: Up) -> Coordinator:
    """A client of the mesh with no resilience of its own: what it sees is what Zeus did."""
    return Coordinator({name: address for name, (address, _) in up.table.items()}, resilience=False)


@pytest.mark.timeout(120)
async def test_a_killed_agent_comes_back_under_load_and_its_circuit_in_zeus_closes(
    processes: Processes, tmp_path: Path
) -> None:
    up = Up(processes, mesh_config(tmp_path))
    await asyncio.to_thread(up.wait_up)
    answers: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def load(client: Coordinator) -> None:
        while not stop.is_set():
            response = await client.delegate("zeus", "delegate", ASK_ATHENA, timeout_ms=20_000)
            answers.append(response.result)
            await asyncio.sleep(0.02)  # pacing only: every call must succeed, however many there are

    async with client_of(up) as client:
        loading = asyncio.create_task(load(client))
        try:
            first = await client.describe("athena")
            assert first.restarts == 0
            assert first.pid == up.pid("athena")
            os.kill(up.pid("athena"), signal.SIGKILL)
            lines = await asyncio.to_thread(up.err.until, "kosmos: agent 'athena' is back at", 60)
            exited = next(line for line in lines if "agent 'athena' exited" in line)
            assert "exited with code -9 (SIGKILL); restarting in" in exited
            assert "(restart 1)" in exited
            back = lines[-1]
            assert f"is back at {up.address('athena')} " in back, "she binds the address her first process got"
            new_pid = int(number(r"pid (\d+)", back))
            processes.adopt(new_pid)
            assert new_pid != up.pid("athena")
            seen_back = len(answers)
            deadline = time.monotonic() + 60
            while True:  # her circuit in Zeus half-opens, a probe goes through, it closes
                circuits = {c.target: c.state for c in (await client.describe("zeus")).circuits}
                by_athena = [a for a in answers[seen_back:] if a["agent"] == "athena" and "fallback_for" not in a]
                if circuits.get("athena") == "closed" and by_athena:
                    break
                assert not loading.done(), loading.exception()
                assert time.monotonic() < deadline, f"circuits {circuits}, answers {answers[-3:]}"
                await asyncio.sleep(0.1)
            again = await client.describe("athena")  # at her first address, as everyone else calls her
            assert (again.pid, again.restarts) == (new_pid, 1)
            direct = await client.delegate("zeus", "delegate", ASK_ATHENA, timeout_ms=20_000)
            assert direct.result["agent"] == "athena"
            assert "fallback_for" not in direct.result
        finally:
            stop.set()
            await loading  # any failed call fails the test here
    fallbacks = [a for a in answers if a.get("fallback_for") == "athena"]
    assert fallbacks, "while she was down, Dionysus answered in her place"
    assert {a["agent"] for a in fallbacks} == {"dionysus"}
    assert up.process.poll() is None, "the mesh kept running"


def test_an_agent_with_restart_never_stays_down_and_the_rest_runs(processes: Processes, tmp_path: Path) -> None:
    up = Up(processes, mesh_config(tmp_path, athena_restart="never")).wait_up()
    os.kill(up.pid("athena"), signal.SIGTERM)
    line = up.err.until("agent 'athena' exited", timeout=30)[-1]
    assert (
        line
        == "kosmos: agent 'athena' exited with code -15 (SIGTERM); it stays down (restart = 'never'); its last output:"
    )

    async def check() -> None:
        async with client_of(up) as client:
            response = await client.delegate("zeus", "delegate", ASK_ATHENA, timeout_ms=20_000)
            assert response.result["agent"] == "dionysus"
            assert response.result["fallback_for"] == "athena"
            assert await client.health("zeus") == "SERVING"

    asyncio.run(check())
    assert not alive(up.pid("athena"))
    assert up.process.poll() is None, "the mesh still runs"
    assert not any("is back" in line for line in up.err.seen)


def test_the_mesh_stops_when_every_agent_is_down_for_good(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.athena]\nobject = "agents.athena:Athena"\naddress = "127.0.0.1:0"\nrestart = "never"\n')
    up = Up(processes, config).wait_up()
    os.kill(up.pid("athena"), signal.SIGTERM)
    assert up.process.wait(30) == 1
    assert "kosmos: every agent is down and none will be restarted; stopping the mesh" in up.err.rest()
    up.out.until("mesh stopped")


@pytest.mark.timeout(180)
def test_a_crash_loop_is_reported_and_backs_off_further_without_stopping_the_others(
    processes: Processes, tmp_path: Path
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    config = tmp_path / "kosmos.toml"
    config.write_text(
        '[agents.flaky]\nobject = "flaky:Flaky"\naddress = "127.0.0.1:0"\n'
        '[agents.zeus]\nobject = "agents.zeus:Zeus"\naddress = "127.0.0.1:0"\n'
    )
    up = Up(processes, config).wait_up()
    (tmp_path / "crash").touch()  # from now on each of its processes exits at once
    os.kill(up.pid("flaky"), signal.SIGKILL)
    lines = up.err.until("in a crash loop", timeout=150)
    exits = [line for line in lines if line.startswith("kosmos: agent 'flaky'")]
    assert len(exits) == CRASH_LOOP_RESTARTS + 1, exits
    assert all("exited with code 3" in line for line in exits[1:]), "each restart exits at once"
    crash = exits[-1]
    assert f"in a crash loop ({CRASH_LOOP_RESTARTS} restarts within 60 s)" in crash
    delays = [number(r"restarting in ([\d.]+) s", line) for line in exits]
    assert delays[:-1] == sorted(delays[:-1]), "the backoff grows"
    assert delays[-1] >= 5.0, "a crash loop backs off further"
    assert up.process.poll() is None

    async def zeus_answers() -> str:
        async with Coordinator({"zeus": up.address("zeus")}, resilience=False) as client:
            return await client.health("zeus")

    assert asyncio.run(zeus_answers()) == "SERVING", "the others go on"


def test_sigterm_to_up_stops_every_child_even_restarted_ones(processes: Processes, tmp_path: Path) -> None:
    config = mesh_config(tmp_path)
    config.write_text(config.read_text() + '\n[bus]\naddress = "127.0.0.1:0"\n')
    up = Up(processes, config).wait_up()
    assert "(broker)" in up.table
    os.kill(up.pid("dionysus"), signal.SIGKILL)
    back = up.err.until("agent 'dionysus' is back", timeout=60)[-1]
    restarted = int(number(r"pid (\d+)", back))
    processes.adopt(restarted)
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(30) == 0
    up.out.until("mesh stopped")
    children = [pid for _, pid in up.table.values() if pid != up.pid("dionysus")] + [restarted]
    assert wait_gone(children) == []


def test_kosmos_agents_shows_restarts_and_uptime(processes: Processes, tmp_path: Path) -> None:
    up = Up(processes, mesh_config(tmp_path)).wait_up()
    os.kill(up.pid("dionysus"), signal.SIGKILL)
    back = up.err.until("agent 'dionysus' is back", timeout=60)[-1]
    processes.adopt(int(number(r"pid (\d+)", back)))
    live = tmp_path / "live.toml"
    live.write_text(
        "".join(
            f'[agents.{name}]\nobject = "agents.{name}:{name.title()}"\naddress = "{address}"\n'
            for name, (address, _) in up.table.items()
        )
    )
    agents = subprocess.run(
        [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(live), "agents"],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment({}),
    )
    assert agents.returncode == 0, agents.stderr
    header, *rows = agents.stdout.splitlines()
    assert header.split()[:5] == ["AGENT", "ADDRESS", "HEALTH", "RESTARTS", "UPTIME"]
    restarts = {row.split()[0]: (row.split()[3], row.split()[4]) for row in rows}
    assert restarts["dionysus"][0] == "1"
    assert restarts["zeus"][0] == restarts["athena"][0] == "0"
    assert all(re.fullmatch(r"\d+s|\d+m\d\ds", uptime) for _, uptime in restarts.values()), restarts


def test_ctrl_c_while_the_mesh_starts_reaches_only_up_and_ends_in_one_line(
    processes: Processes, tmp_path: Path
) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    config = tmp_path / "kosmos.toml"
    config.write_text(
        '[mesh]\ngrace_seconds = 1\n[agents.slow]\nobject = "slow:Slow"\naddress = "127.0.0.1:0"\n'
        '[agents.zeus]\nobject = "agents.zeus:Zeus"\naddress = "127.0.0.1:0"\n'
    )
    # In a session of its own, as a shell runs a command: a Ctrl-C goes to its whole process group.
    up = Up(processes, config, start_new_session=True)
    up.out.until("slow: starting", timeout=60)
    notes = tmp_path / "slow-signals"
    slow = int(notes.read_text().split()[1])
    processes.adopt(slow)
    os.killpg(up.process.pid, signal.SIGINT)
    assert up.process.wait(30) == 0
    assert up.out.until("mesh stopped")[-1] == "mesh stopped"
    assert up.err.rest() == [], "no traceback, no other line"
    assert notes.read_text().split()[2:] == ["SIGTERM"], "the child got no SIGINT, only the supervisor's SIGTERM"
    assert wait_gone([slow]) == []


def test_a_second_up_says_a_mesh_is_already_running(processes: Processes, tmp_path: Path) -> None:
    zeus = f"127.0.0.1:{free_port()}"
    config = mesh_config(tmp_path, zeus=zeus)
    Up(processes, config).wait_up()
    second = subprocess.run(
        [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "up"],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment({}),
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"kosmos: a mesh is already running: zeus answers at {zeus} (stop it first, or use another config)"
    ]


def test_up_on_a_port_something_else_holds_names_the_agent_and_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        zeus = f"127.0.0.1:{holder.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(mesh_config(tmp_path, zeus=zeus)), "up"],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment({}),
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"kosmos: agent 'zeus' cannot listen on {zeus}: the port is in use by something else "
        "(stop it, or give the agent another address in the config)"
    ]


def test_restart_policies() -> None:
    assert [should_restart("on-failure", code) for code in (0, 1, -9)] == [False, True, True]
    assert [should_restart("always", code) for code in (0, 1, -9)] == [True, True, True]
    assert [should_restart("never", code) for code in (0, 1, -9)] == [False, False, False]
    assert describe_exit(-15) == "exited with code -15 (SIGTERM)"
    assert describe_exit(3) == "exited with code 3"


def test_backoff_grows_and_a_crash_loop_waits_longer_then_calms_down() -> None:
    restarts = Restarts()
    plans = [restarts.plan(100.0 + i) for i in range(CRASH_LOOP_RESTARTS + 1)]
    assert not any(plan.crash_loop for plan in plans[:-1])
    for i, plan in enumerate(plans[:-1]):
        assert 0.2 * 2**i <= plan.delay <= 0.2 * 2**i + 0.2
    assert plans[-1].crash_loop
    assert 5.0 <= plans[-1].delay <= 6.0
    later = restarts.plan(100.0 + 61 + CRASH_LOOP_RESTARTS)  # out of the window: starts short again
    assert not later.crash_loop
    assert later.delay <= 0.4


def test_output_tail_is_bounded_in_lines_and_bytes() -> None:
    tail = OutputTail(lines=3, size=10)
    for line in ("aaaa\n", "bbbb\n", "cccc\n", "dddd\n"):
        tail.add(line)
    assert tail.lines() == ["cccc", "dddd"]  # three lines would be 12 bytes
    tail.add("x" * 50)
    assert tail.lines() == ["x" * 10]


async def test_health_events_reach_the_bus() -> None:
    broker = BrokerServer(address="127.0.0.1:0")
    await broker.start()
    try:
        async with GrpcEventBus(broker.address, source_agent="test") as watcher:
            subscription = await watcher.subscribe(SYSTEM_HEALTH)
            events = HealthEvents(MeshConfig(agents={}, bus=BusConfig(address="127.0.0.1:0")), io.StringIO())
            events.start(broker.address)  # the real address, as `kosmos up` hands it out
            events.announce("athena", "exited", exit_code=-9, restarts=0)
            events.announce("athena", "restarted", exit_code=None, restarts=1, pid=42)
            async with asyncio.timeout(20):
                got = [(await anext(subscription)).payload for _ in range(2)]
            await events.close()
    finally:
        await broker.stop(0)
    assert got == [
        {"agent": "athena", "state": "exited", "exit_code": -9, "restarts": 0},
        {"agent": "athena", "state": "restarted", "exit_code": None, "restarts": 1, "pid": 42},
    ]


async def test_a_bus_that_cannot_be_reached_is_reported_once_and_stops_nothing() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    err = io.StringIO()
    events = HealthEvents(MeshConfig(agents={}, bus=BusConfig(address=nowhere)), err)
    events.start(nowhere)
    for restarts in range(3):
        events.announce("athena", "exited", exit_code=1, restarts=restarts)
    await events.close(flush=30)
    lines = err.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kosmos: cannot announce agent health on the bus (")
    assert lines[0].endswith("); the mesh goes on")
