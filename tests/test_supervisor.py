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
from kosmos_grpc.child_output import LINE_BYTES, Output, OutputLines, OutputTail
from kosmos_grpc.config import BusConfig, MeshConfig
from kosmos_grpc.errors import KosmosError
from kosmos_grpc.subjects import SYSTEM_HEALTH
from kosmos_grpc.supervisor import (
    CRASH_LOOP_MAX_SECONDS,
    CRASH_LOOP_RESTARTS,
    STABLE_SECONDS,
    Child,
    HealthEvents,
    Restarts,
    describe_exit,
    should_restart,
    stop_children,
)

from .conftest import ManualClock, Processes, environment
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
object = "tests.helpers.toys:Athena"
address = "127.0.0.1:0"
fallback = "dionysus"
restart = "{athena_restart}"

[agents.dionysus]
object = "tests.helpers.toys:Dionysus"
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


def end_by(sig):
    """Note ``sig``, then end by it at once, as a drained agent does."""
    note(sig.name)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


class Slow(Agent):
    name = "slow"

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, end_by, sig)
        note(f"pid {os.getpid()}")
        print("slow: starting", flush=True)
        await asyncio.sleep(600)
'''

STUBBORN = '''
"""An agent that writes down its PID and every SIGTERM it gets, and stays in its start until SIGKILL."""

import asyncio
import os
import signal
from pathlib import Path

from kosmos_grpc import Agent

NOTES = Path(__file__).with_name("stubborn-notes")


def note(text):
    with NOTES.open("a") as notes:
        notes.write(text + "\\n")


class Stubborn(Agent):
    name = "stubborn"

    async def on_start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, note, "SIGTERM")
        note(f"pid {os.getpid()}")
        await asyncio.sleep(600)
'''

HANG = '''
"""An agent whose start hangs, its PID written down, while a file named `hang` lies next to it."""

import asyncio
import os
from pathlib import Path

from kosmos_grpc import Agent, action


class Hang(Agent):
    name = "hang"

    async def on_start(self) -> None:
        if Path(__file__).with_name("hang").exists():
            with Path(__file__).with_name("hang-pids").open("a") as pids:
                pids.write(f"{os.getpid()}\\n")
            await asyncio.sleep(600)

    @action
    async def ping(self, ctx, payload):
        return {"pong": True}
'''

LOUD = '''
"""An agent whose actions print a line of 300 kB, or 300 kB with no newline at all, to stdout."""

import sys

from kosmos_grpc import Agent, action


class Loud(Agent):
    name = "loud"

    @action
    async def shout(self, ctx, payload):
        print("x" * 300_000, flush=True)
        return {"shouted": True}

    @action
    async def mumble(self, ctx, payload):
        sys.stdout.write("y" * 300_000)
        sys.stdout.flush()
        return {"mumbled": True}

    @action
    async def ping(self, ctx, payload):
        print("pong", flush=True)
        return {"pong": True}
'''

GRANDPARENT = '''
"""An agent that starts a grandchild holding its stdout and stderr, writes down its PID, and exits."""

import os
import subprocess
import sys
from pathlib import Path

from kosmos_grpc import Agent


class Grandparent(Agent):
    name = "grandparent"

    async def on_start(self) -> None:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(__file__).with_name("grandchild").write_text(str(child.pid))
        os._exit(3)
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


def refused_up(processes: Processes, config: Path) -> tuple[int, str, str]:
    """Run a `kosmos up` expected to refuse: its exit code, stdout and stderr. Should it start agents
    after all, the PIDs of its table are adopted, so they are stopped too."""
    process = processes.start(sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "up")
    out, err = process.communicate(timeout=60)
    for line in out.splitlines():
        if (fields := line.split())[3:4] and fields[3].isdigit():
            processes.adopt(int(fields[3]))
    return process.returncode, out, err


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
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(30) == 0
    everything = up.err.rest()  # to the end of its stderr: no restart was ever tried
    assert not [line for line in everything if "restarting" in line or "is back" in line], everything


def test_the_mesh_stops_when_every_agent_is_down_for_good(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(
        '[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "127.0.0.1:0"\nrestart = "never"\n'
    )
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
    # However slowly they come, failures in a row count: none of its processes ever serves.
    lines = up.err.until("in a crash loop", timeout=150)
    exits = [line for line in lines if line.startswith("kosmos: agent 'flaky'")]
    assert len(exits) == CRASH_LOOP_RESTARTS + 1, exits
    assert all("exited with code 3" in line for line in exits[1:]), "each restart exits at once"
    crash = exits[-1]
    loop = f"in a crash loop ({CRASH_LOOP_RESTARTS + 1} exits in a row, none after {STABLE_SECONDS:.0f} s of serving)"
    assert loop in crash
    delays = [number(r"restarting in ([\d.]+) s", line) for line in exits]
    assert delays[:-1] == sorted(delays[:-1]), "the backoff grows"
    assert delays[-1] >= 5.0, "a crash loop backs off further"
    assert up.process.poll() is None

    async def zeus_answers() -> str:
        async with Coordinator({"zeus": up.address("zeus")}, resilience=False) as client:
            return await client.health("zeus")

    assert asyncio.run(zeus_answers()) == "SERVING", "the others go on"
    # SIGTERM during the crash loop's backoff of 5 s or more: nothing is restarted after it.
    seen = len(up.err.seen)
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0
    after = up.err.rest()[seen:]
    assert [line for line in after if line.startswith("kosmos: agent 'flaky'")] == [], after
    up.out.until("mesh stopped")
    assert wait_gone(list(up.pid(name) for name in up.table)) == []


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
    # A grace of a minute: a child that did not end by the SIGTERM would hold `up` past the wait below.
    config.write_text(
        '[mesh]\ngrace_seconds = 60\n[agents.slow]\nobject = "slow:Slow"\naddress = "127.0.0.1:0"\n'
        '[agents.zeus]\nobject = "agents.zeus:Zeus"\naddress = "127.0.0.1:0"\n'
    )
    # In a session of its own, as a shell runs a command: a Ctrl-C goes to its whole process group.
    up = Up(processes, config, start_new_session=True)
    up.out.until("slow: starting", timeout=60)
    notes = tmp_path / "slow-signals"
    slow = int(notes.read_text().split()[1])
    processes.adopt(slow)
    os.killpg(up.process.pid, signal.SIGINT)
    assert up.process.wait(45) == 0, "the child ended by the supervisor's SIGTERM, not by a SIGKILL after the grace"
    assert up.out.until("mesh stopped") == ["mesh stopped"], "one line"
    assert up.err.rest() == [], "no traceback, no other line"
    assert notes.read_text().split()[2:] == ["SIGTERM"], "the child got no SIGINT, only the supervisor's SIGTERM"
    assert wait_gone([slow]) == []


def test_a_second_up_says_a_mesh_is_already_running(processes: Processes, tmp_path: Path) -> None:
    zeus = f"127.0.0.1:{free_port()}"
    config = mesh_config(tmp_path, zeus=zeus)
    Up(processes, config).wait_up()
    code, out, err = refused_up(processes, config)
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        f"kosmos: a mesh is already running: zeus answers at {zeus} (stop it first, or use another config)"
    ]


def test_up_on_a_port_something_else_holds_names_the_agent_and_address(processes: Processes, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        zeus = f"127.0.0.1:{holder.getsockname()[1]}"
        code, out, err = refused_up(processes, mesh_config(tmp_path, zeus=zeus))
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        f"kosmos: agent 'zeus' cannot listen on {zeus}: the port is in use by something else "
        "(stop it, or give the agent another address in the config)"
    ]


def poll(condition: Any, what: str, timeout: float = 60) -> None:
    """Wait until ``condition()`` holds, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def loud_config(tmp_path: Path, address: str = "127.0.0.1:0") -> Path:
    (tmp_path / "loud.py").write_text(LOUD)
    config = tmp_path / "kosmos.toml"
    config.write_text(f'[agents.loud]\nobject = "loud:Loud"\naddress = "{address}"\n')
    return config


async def call_loud(address: str) -> list[Any]:
    """Shout, mumble, then ping twice: each answers, and its health stays SERVING."""
    async with Coordinator({"loud": address}, resilience=False) as client:
        answers = [
            (await client.delegate("loud", action, {}, timeout_ms=20_000)).result
            for action in ("shout", "mumble", "ping", "ping")
        ]
        return [*answers, await client.health("loud", timeout_ms=10_000)]


ANSWERS = [{"shouted": True}, {"mumbled": True}, {"pong": True}, {"pong": True}, "SERVING"]


@pytest.mark.timeout(120)
def test_an_agent_printing_a_huge_line_or_no_newline_keeps_answering(processes: Processes, tmp_path: Path) -> None:
    up = Up(processes, loud_config(tmp_path)).wait_up()
    assert asyncio.run(call_loud(up.address("loud"))) == ANSWERS
    lines = up.out.until("pong", timeout=60)
    assert "x" * 300_000 in lines, "every byte is passed through"
    assert lines[-1] == "y" * 300_000 + "pong"
    os.kill(up.pid("loud"), signal.SIGKILL)
    exited = up.err.until("    pong", timeout=60)  # its last output, reported with its exit
    assert "    " + "x" * (1024 - 6) + " [cut]" in exited, exited[-4:]
    back = up.err.until("agent 'loud' is back", timeout=60)[-1]
    processes.adopt(int(number(r"pid (\d+)", back)))
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(30) == 0
    rest = up.err.rest()
    assert not [line for line in rest if "Traceback" in line or "exception" in line.lower()], rest


@pytest.mark.timeout(120)
def test_a_closed_stdout_of_up_stops_nothing(processes: Processes, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = loud_config(tmp_path, address)
    process = processes.start(sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), "up")
    assert process.stdout is not None
    process.stdout.close()  # as `kosmos up | head -1` once head is gone: every write to it fails
    err = ErrLines(process)

    async def serving() -> bool:
        async with Coordinator({"loud": address}, resilience=False) as client:
            try:
                return await client.health("loud", timeout_ms=1_000) == "SERVING"
            except KosmosError:
                return False

    poll(lambda: asyncio.run(serving()), "SERVING from loud")
    assert asyncio.run(call_loud(address)) == ANSWERS
    assert process.poll() is None, "the mesh runs on"
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    rest = err.rest()
    assert not [line for line in rest if not line.startswith("20")], rest  # log lines only: no traceback


@pytest.mark.timeout(120)
def test_sigterm_to_up_while_a_restart_is_starting_stops_that_process_too(processes: Processes, tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(HANG)
    config = tmp_path / "kosmos.toml"
    config.write_text('[mesh]\ngrace_seconds = 1\n[agents.hang]\nobject = "hang:Hang"\naddress = "127.0.0.1:0"\n')
    up = Up(processes, config).wait_up()
    (tmp_path / "hang").touch()  # from now on its processes hang in their start
    os.kill(up.pid("hang"), signal.SIGKILL)
    pids = tmp_path / "hang-pids"
    poll(lambda: pids.exists() and pids.read_text().endswith("\n"), "restarted process")
    restarting = int(pids.read_text())
    processes.adopt(restarting)
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0
    up.out.until("mesh stopped")
    assert wait_gone([up.pid("hang"), restarting], timeout=30) == []


async def test_stop_children_stops_a_process_a_restart_spawns_during_the_stop(
    processes: Processes, tmp_path: Path
) -> None:
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.stubborn]\nobject = "stubborn:Stubborn"\naddress = "127.0.0.1:0"\n')
    notes = tmp_path / "stubborn-notes"
    child = Child("stubborn", ("serve", "stubborn"))
    sink = Output(io.StringIO())

    async def noted(what: str) -> None:
        await asyncio.to_thread(poll, lambda: notes.exists() and what in notes.read_text(), repr(what))

    await child.spawn(config, (), sink, sink)
    first = child.process
    assert first is not None
    processes.adopt(first.pid)
    await noted(f"pid {first.pid}\n")
    stopping = asyncio.create_task(stop_children([child], grace=1))
    await noted("SIGTERM")  # the stop took its processes and waits for them: the first ignores SIGTERM
    await child.spawn(config, (), sink, sink)  # as a restart whose spawn just finished
    second = child.process
    assert second is not None
    processes.adopt(second.pid)
    async with asyncio.timeout(60):
        await stopping
    assert first.returncode == -signal.SIGKILL
    # The second was stopped too: by SIGKILL after ignoring SIGTERM, or by the SIGTERM itself when it
    # came before the agent (on a loaded machine) had set up its refusal of it.
    assert second.returncode in (-signal.SIGKILL, -signal.SIGTERM)


async def test_ended_cancels_readers_of_pipes_a_grandchild_still_holds(processes: Processes, tmp_path: Path) -> None:
    (tmp_path / "grandparent.py").write_text(GRANDPARENT)
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.grandparent]\nobject = "grandparent:Grandparent"\naddress = "127.0.0.1:0"\n')
    child = Child("grandparent", ("serve", "grandparent"))
    sink = Output(io.StringIO())
    await child.spawn(config, (), sink, sink)
    assert child.process is not None
    processes.adopt(child.process.pid)
    try:
        async with asyncio.timeout(60):
            assert await child.ended() == 3
        readers = child._readers
        assert readers
        await asyncio.sleep(0)  # let the cancellations land
        assert all(reader.done() for reader in readers), "no reader left behind"
    finally:
        grandchild = tmp_path / "grandchild"
        if grandchild.exists():
            pid = int(grandchild.read_text())
            processes.adopt(pid)
            os.kill(pid, signal.SIGKILL)
            pipes = (child.process.stdout, child.process.stderr)
            # The pipes close when it is gone: their transports with them.
            await asyncio.to_thread(poll, lambda: all(p is None or p.at_eof() for p in pipes), "end of the pipes")
            await asyncio.sleep(0)


def test_restart_policies() -> None:
    assert [should_restart("on-failure", code) for code in (0, 1, -9)] == [False, True, True]
    assert [should_restart("always", code) for code in (0, 1, -9)] == [True, True, True]
    assert [should_restart("never", code) for code in (0, 1, -9)] == [False, False, False]
    assert describe_exit(-15) == "exited with code -15 (SIGTERM)"
    assert describe_exit(3) == "exited with code 3"


def test_a_lasting_crash_loop_backs_off_up_to_the_cap_and_only_a_stable_run_resets_it() -> None:
    clock = ManualClock()
    restarts = Restarts(clock)
    plans = []
    for _ in range(CRASH_LOOP_RESTARTS + 8):  # each process serves a while, never STABLE_SECONDS
        plans.append(restarts.plan())
        clock.advance(plans[-1].delay)
        restarts.serving()
        clock.advance(STABLE_SECONDS / 2)
    for i, plan in enumerate(plans[:CRASH_LOOP_RESTARTS]):  # 0.2 s, 0.4 s ... 3.2 s
        assert 0.2 * 2**i <= plan.delay <= 0.2 * 2**i + 0.2, plans
        assert not plan.crash_loop
    looping = plans[CRASH_LOOP_RESTARTS:]
    assert all(plan.crash_loop for plan in looping), "a lasting loop stays one, announced as such each time"
    for i, plan in enumerate(looping):  # 5 s, 10 s, 20 s, 40 s, then the cap
        low = min(5.0 * 2**i, CRASH_LOOP_MAX_SECONDS)
        assert low <= plan.delay <= min(low + 1, CRASH_LOOP_MAX_SECONDS), plans
    assert [plan.delay for plan in looping[-4:]] == [CRASH_LOOP_MAX_SECONDS] * 4
    assert [plan.failures for plan in plans] == list(range(1, CRASH_LOOP_RESTARTS + 9))
    restarts.serving()
    clock.advance(STABLE_SECONDS)  # one process serves stably: the next end is a first failure again
    calm = restarts.plan()
    assert (calm.failures, calm.crash_loop) == (1, False)
    assert calm.delay <= 0.4
    clock.advance(10 * STABLE_SECONDS)  # a process that never served is a failure, however long it took
    assert restarts.plan().failures == 2


def test_output_tail_is_bounded_in_lines_and_bytes() -> None:
    tail = OutputTail(lines=3, size=10)
    for line in ("aaaa\n", "bbbb\n", "cccc\n", "dddd\n"):
        tail.add(line)
    assert tail.lines() == ["cccc", "dddd"]  # three lines would be 12 bytes
    tail.add("x" * 50)
    assert tail.lines() == ["xxxx [cut]"]


def test_output_lines_pass_any_output_through_and_keep_long_lines_cut() -> None:
    out, tail = io.StringIO(), OutputTail()
    caught: list[str] = []

    def catch(line: str) -> bool:
        if line.startswith("READY"):
            caught.append(line)
            return True
        return False

    lines = OutputLines(tail, Output(out), catch)
    data = b"READY {}\nfirst\n" + b"x" * 200_000 + b"\n" + "é".encode() * 70_000 + b"\nlast"
    for start in range(0, len(data), 65536):  # chunks cut lines, and a character, anywhere
        lines.feed(data[start : start + 65536])
    lines.end()
    assert caught == ["READY {}\n"]
    assert out.getvalue() == data.removeprefix(b"READY {}\n").decode()
    first, xs, es, last = tail.lines()
    assert (first, last) == ("first", "last")
    assert xs == "x" * (LINE_BYTES - 6) + " [cut]"
    assert es.endswith(" [cut]")
    assert len(es.encode()) <= LINE_BYTES


def test_output_to_a_closed_stream_stops_quietly() -> None:
    stream = io.StringIO()
    output = Output(stream)
    stream.close()
    print("lost", file=output, flush=True)  # no ValueError
    assert output.closed
    lines = OutputLines(OutputTail(), output)
    lines.feed(b"still kept\n")
    lines.end()


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


@pytest.mark.parametrize("moment", ["while kosmos loads", "once the mesh is up"])
def test_ctrl_c_on_make_run_ends_in_one_line(processes: Processes, tmp_path: Path, moment: str) -> None:
    """`make run`, then Ctrl-C: at most "mesh stopped", and neither make's '*** [run] ...' nor a traceback."""
    config = mesh_config(tmp_path)
    loading = moment == "while kosmos loads"
    make = processes.start(
        "make",
        "--no-print-directory",
        "run",
        f"CONFIG={config}",
        start_new_session=True,
        env={"PYTHONPROFILEIMPORTTIME": "1"} if loading else {},
    )
    out, err = Lines(make), ErrLines(make)
    if loading:  # kosmos has read its command line and not yet taken charge of signals
        err.until("| kosmos_grpc.commandline", timeout=60)
    else:
        lines = out.until("mesh up", timeout=60)
        for line in lines[next(i for i, x in enumerate(lines) if x.startswith("AGENT")) + 1 : -1]:
            processes.adopt(int(line.split()[3]))
    os.killpg(make.pid, signal.SIGINT)  # a terminal's Ctrl-C: make, its shell, kosmos
    assert make.wait(45) == -signal.SIGINT, "make ends by the Ctrl-C, as a terminal expects"
    if not loading:
        assert out.until("mesh stopped") == ["mesh stopped"]
    rest = [line for line in err.rest() if not line.startswith("import time:")]
    assert not [line for line in rest if line.startswith("make:") or "Traceback" in line], rest
