"""The `kosmos` command: the whole mesh in processes, calls from the shell, one readable line on failure."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kosmos_grpc import Coordinator
from kosmos_grpc.bus import GrpcEventBus

from .conftest import ROOT, Processes, environment, kosmos_serve, run_tool, tool

MESH = """
[mesh]
grace_seconds = 5

[agents.zeus]
object = "agents.zeus:Zeus"
address = "{zeus}"

[agents.athena]
object = "tests.helpers.toys:Athena"
address = "{athena}"
"""


def write_config(path: Path, zeus: str = "127.0.0.1:0", athena: str = "127.0.0.1:0") -> Path:
    path.write_text(MESH.format(zeus=zeus, athena=athena))
    return path


class Lines:
    """Every line a process writes to stdout, read as it comes (so its pipe never fills)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, marker: str, timeout: float = 30) -> list[str]:
        """Lines up to the next one containing ``marker``; fails after ``timeout`` seconds."""
        taken: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {marker!r} within {timeout} s; got {taken[-20:]}")
            if line is None:
                pytest.fail(f"output ended before {marker!r}: {taken[-20:]}")
            taken.append(line)
            self.seen.append(line)
            if marker in line:
                return taken


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kosmos(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kosmos"), "--config", str(config), *args],
        cwd=ROOT,
        env=environment({}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


Mesh = tuple[subprocess.Popen[str], Lines, dict[str, tuple[str, int]]]


def start_mesh(processes: Processes, tmp_path: Path) -> Mesh:
    """`kosmos up` on a two-agent config with free ports: the process, its output, and name -> (address, pid)."""
    config = write_config(tmp_path / "kosmos.toml")
    up = processes.start(tool("kosmos"), "--config", str(config), "up")
    output = Lines(up)
    lines = output.until("mesh up")
    assert f"from {config.resolve()}." in lines[-1], "kosmos up names the config it read"
    table = {}
    for line in lines[lines.index(next(x for x in lines if x.startswith("AGENT"))) + 1 : -1]:
        name, address, health, pid, metrics = line.split()
        assert metrics == "-", "the config names no metrics port"
        assert health == "SERVING"
        table[name] = (address, int(pid))
        processes.adopt(int(pid))
    return up, output, table


def test_up_serves_every_agent_and_the_shell_commands_reach_them(processes: Processes, tmp_path: Path) -> None:
    up, _output, table = start_mesh(processes, tmp_path)
    assert set(table) == {"zeus", "athena"}
    assert len({pid for _, pid in table.values()} | {up.pid}) == 3, "each agent has its own process"
    live = write_config(tmp_path / "live.toml", table["zeus"][0], table["athena"][0])

    call = kosmos(
        live,
        "call",
        "zeus",
        "delegate",
        '{"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}',
    )
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["agent"] == "athena"
    assert json.loads(call.stdout)["result"]["topic"] == "grpc"

    stream = kosmos(
        live,
        "stream",
        "zeus",
        "relay",
        '{"agent": "athena", "action": "explain", "payload": {"topic": "nats", "pause_ms": 0}}',
    )
    assert stream.returncode == 0, stream.stderr
    assert [json.loads(line)["index"] for line in stream.stdout.splitlines()] == [0, 1, 2]

    health = kosmos(live, "health")
    assert health.returncode == 0, health.stderr
    assert [line.split()[-1] for line in health.stdout.splitlines()] == ["HEALTH", "SERVING", "SERVING"]

    agents = kosmos(live, "agents")
    assert agents.returncode == 0, agents.stderr
    assert "answer, explain (stream)" in agents.stdout
    assert "delegate, relay (stream)" in agents.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_up_stops_every_agent_process(processes: Processes, tmp_path: Path, sig: signal.Signals) -> None:
    up, output, table = start_mesh(processes, tmp_path)
    up.send_signal(sig)
    assert up.wait(20) == 0
    assert wait_gone([pid for _, pid in table.values()]) == []
    output.until("mesh stopped")


def test_stream_prints_each_chunk_as_it_arrives(processes: Processes, tmp_path: Path) -> None:
    _, _, table = start_mesh(processes, tmp_path)
    live = write_config(tmp_path / "live.toml", table["zeus"][0], table["athena"][0])
    stream = processes.start(
        tool("kosmos"), "--config", str(live), "stream", "athena", "explain", '{"topic": "grpc", "pause_ms": 1500}'
    )
    first = Lines(stream).until('"index": 0', timeout=20)
    # The other two sentences take another 3 s to make: the first was printed before them.
    assert stream.poll() is None, "the first chunk was printed only when the stream ended"
    assert json.loads(first[-1])["index"] == 0
    assert stream.wait(20) == 0


def test_agent_output_passes_through_up_and_never_blocks_the_agent(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.chatty]\nobject = "tests.helpers.agents:Chatty"\naddress = "127.0.0.1:0"\n')
    up = processes.start(tool("kosmos"), "--config", str(config), "up")
    output = Lines(up)
    lines = output.until("mesh up")
    assert "chatty: hello from on_start" in lines
    address = next(line.split()[1] for line in lines if line.startswith("chatty "))
    live = tmp_path / "live.toml"
    live.write_text(f'[agents.chatty]\nobject = "tests.helpers.agents:Chatty"\naddress = "{address}"\n')
    for _ in range(3):  # 900 KiB of output in all: far more than a pipe holds
        result = kosmos(live, "call", "chatty", "talk", "--timeout-ms", "20000")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"printed": 3000}
    output.until("chatty line 02999")


def test_agents_stop_when_their_launcher_is_killed(processes: Processes, tmp_path: Path) -> None:
    up, _output, table = start_mesh(processes, tmp_path)
    up.kill()  # no chance to clean up: the children notice their stdin close
    up.wait(10)
    assert wait_gone([pid for _, pid in table.values()]) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["call", "nobody", "x"], 1, "kosmos: NOT_FOUND: no agent named 'nobody'"),
        (["call", "athena", "answer", "{bad json"], 2, "kosmos: payload is not valid JSON"),
        (["call", "athena", "answer", "[1, 2]"], 2, "kosmos: payload must be a JSON object"),
        (["call", "athena", "answer", "--priority", "urgent"], 2, "priority 'urgent' is not one of"),
        (["call", "athena", "answer"], 1, "kosmos: UNAVAILABLE: agent 'athena' is unavailable"),
        (["health", "athena"], 1, "kosmos: UNAVAILABLE"),
        (["serve", "hermes"], 1, "kosmos: no agent named 'hermes' in the config"),
        (["call", "athena", "answer", "--timeout-ms", "nan"], 2, "'nan' is not a number of milliseconds above zero"),
        (["call", "athena", "answer", "--timeout-ms", "0"], 2, "'0' is not a number of milliseconds above zero"),
        (["stream", "athena", "explain", "--timeout-ms", "soon"], 2, "'soon' is not a number of milliseconds"),
    ],
)
def test_a_failure_is_one_readable_line(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    config = write_config(tmp_path / "kosmos.toml", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    result = kosmos(config, *args)
    assert result.returncode == code
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_config_is_one_readable_line(tmp_path: Path) -> None:
    result = kosmos(tmp_path / "absent.toml", "agents")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"kosmos: config file {tmp_path / 'absent.toml'} not found (given); "
        "choose one with --config FILE or $KOSMOS_CONFIG"
    ), "a config error is the user's file, not a gRPC status"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_check_prints_one_summary_line(tmp_path: Path, where: str) -> None:
    config = write_config(tmp_path / "mesh.toml", "127.0.0.1:50001", "127.0.0.1:50002")
    config.write_text(config.read_text() + '\n[bus]\naddress = "127.0.0.1:50000"\n')
    args = ["config", "check", str(config)] if where == "after" else ["--config", str(config), "config", "check"]
    result = subprocess.run([tool("kosmos"), *args], cwd=ROOT, env=environment({}), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config}: ok; 2 agents (zeus, athena); bus: 127.0.0.1:50000\n"


def test_config_check_prints_the_config_error_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[agents.zeus]\naddress = 7\n")
    result = subprocess.run(
        [tool("kosmos"), "config", "check", str(config)], cwd=ROOT, env=environment({}), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("kosmos: ")
    assert str(config) in line, "the error names the file"
    assert "FAILED_PRECONDITION" not in line


def test_serve_on_a_taken_address_is_one_readable_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = kosmos(write_config(tmp_path / "kosmos.toml", zeus=taken), "serve", "zeus")
    assert result.returncode == 1
    assert result.stderr == f"kosmos: agent 'zeus' cannot listen on {taken}: the address is in use or not available\n"


def test_grpc_core_logs_only_when_the_user_asks(tmp_path: Path) -> None:
    """gRPC's C core says ``E1203 ... add_port.cc:83] Failed to add port`` on a clash, unless GRPC_VERBOSITY=NONE."""
    config = tmp_path / "kosmos.toml"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        write_config(config, zeus=f"127.0.0.1:{holder.getsockname()[1]}")
        quiet, asked = (
            subprocess.run(
                [tool("kosmos"), "--config", str(config), "serve", "zeus"],
                cwd=ROOT,
                env={k: v for k, v in environment(env).items() if k != "GRPC_VERBOSITY" or env},
                capture_output=True,
                text=True,
                timeout=30,
            )
            for env in ({}, {"GRPC_VERBOSITY": "debug"})
        )
    assert "add_port.cc" not in quiet.stderr
    assert len(quiet.stderr.splitlines()) == 1
    assert "add_port.cc" in asked.stderr, "a user who sets GRPC_VERBOSITY sees the C core's lines"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_drains_the_call_in_flight_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.echo]\nobject = "tests.helpers.agents:Echo"\naddress = "127.0.0.1:0"\n')
    process = await kosmos_serve(config, "echo")
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        assert "echo serving on" in line
        address = line.rsplit(" ", 1)[1].strip()
        async with Coordinator({"echo": address}) as client:
            call = asyncio.create_task(client.delegate("echo", "sleep", {"ms": 1000}, timeout_ms=10_000))
            async with asyncio.timeout(10):  # until the handler says it started: the call is in flight
                while "sleeping 1000 ms" not in (line := (await process.stderr.readline()).decode()):
                    assert line, "kosmos serve exited"
            process.send_signal(sig)
            assert (await call).result == {"slept_ms": 1000}
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


SLOW_START = """
import asyncio
import sys

from kosmos_grpc import Agent


class SlowStart(Agent):
    name = "slow"

    async def on_start(self) -> None:
        print("on_start begun", file=sys.stderr, flush=True)
        await asyncio.sleep(120)  # far longer than the test waits: only a signal ends it in time
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_ends_serve_while_the_agents_on_start_runs(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "slowstart.py").write_text(SLOW_START)
    config = tmp_path / "kosmos.toml"
    config.write_text('[agents.slow]\nobject = "slowstart:SlowStart"\naddress = "127.0.0.1:0"\n')
    process = await kosmos_serve(config, "slow")
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):  # until on_start runs
            while "on_start begun" not in (line := (await process.stderr.readline()).decode()):
                assert line, "kosmos serve exited before on_start"
        process.send_signal(sig)
        assert await asyncio.wait_for(process.wait(), 20) == 0, "the signal did not end on_start"
        assert b"Traceback" not in await process.stderr.read()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_pid_helper_sees_this_process() -> None:
    assert alive(os.getpid())


def test_broker_publish_and_subscribe_from_the_shell(processes: Processes, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port for the broker, which must be named in the config
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "kosmos.toml")
    config.write_text(config.read_text() + f'\n[bus]\naddress = "127.0.0.1:{port}"\n')
    broker = processes.start(tool("kosmos"), "--config", str(config), "broker")
    deadline = time.monotonic() + 20
    while kosmos(config, "publish", "kosmos.events.system.health", "{}").returncode != 0:
        assert broker.poll() is None, "the broker exited"
        assert time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.1)
    subscriber = processes.start(tool("kosmos"), "--config", str(config), "subscribe", "kosmos.events.>")
    assert subscriber.stderr is not None
    assert "subscribed to kosmos.events.>" in subscriber.stderr.readline()
    published = kosmos(config, "publish", "kosmos.events.audit.log", '{"who": "zeus"}', "--header", "trace=abc")
    assert published.returncode == 0, published.stderr
    (line,) = Lines(subscriber).until("kosmos.events.audit.log")
    event = json.loads(line)
    assert event == {
        "subject": "kosmos.events.audit.log",
        "message_id": published.stdout.strip(),
        "payload": {"who": "zeus"},
        "headers": {"trace": "abc"},
    }
    subscriber.send_signal(signal.SIGINT)  # Ctrl-C is how a subscription is meant to end: status 0
    assert subscriber.wait(10) == 0
    assert subscriber.stderr.read() == "", "nothing after the subscribed line: no traceback"
    bad = kosmos(config, "publish", "kosmos.events.*", "{}")
    assert bad.returncode == 1
    assert "kosmos: INVALID_ARGUMENT: subject 'kosmos.events.*' has a wildcard" in bad.stderr


async def test_up_runs_the_broker_and_delegations_are_announced_on_it(processes: Processes, tmp_path: Path) -> None:
    config = write_config(tmp_path / "kosmos.toml")
    config.write_text(config.read_text() + '\n[bus]\naddress = "127.0.0.1:0"\n')
    up = processes.start(tool("kosmos"), "--config", str(config), "up")
    output = Lines(up)
    lines = await asyncio.to_thread(output.until, "mesh up")
    rows = [line.split() for line in lines if line.startswith(("zeus", "athena", "(broker)"))]
    table = {row[0]: row[1] for row in rows}
    for row in rows:
        processes.adopt(int(row[3]))
    assert set(table) == {"zeus", "athena", "(broker)"}
    live = write_config(tmp_path / "live.toml", table["zeus"], table["athena"])
    async with GrpcEventBus(table["(broker)"]) as bus:
        announced = await bus.subscribe("kosmos.agents.athena.*")
        code, _, err = await run_tool(
            tool("kosmos"),
            "--config",
            str(live),
            "call",
            "zeus",
            "delegate",
            '{"agent": "athena", "action": "answer", "payload": {"topic": "nats"}}',
        )
        assert code == 0, err
        async with asyncio.timeout(10):
            request, outcome = await anext(announced), await anext(announced)
    assert request.subject == "kosmos.agents.athena.requests"
    assert request.payload["action"] == "answer"
    assert request.payload["source_agent"] == "zeus"
    assert outcome.subject == "kosmos.agents.athena.responses"
    assert outcome.payload["status"] == "OK"
    assert outcome.payload["answered_by"] == "athena"
    assert request.message.correlation_id == outcome.message.correlation_id
    up.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(up.wait, 20) == 0
