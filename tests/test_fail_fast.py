"""A dependency that is down is one line naming it, within the command's timeout; reconnects are summarised."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from kosmos_grpc.bus import NatsEventBus
from kosmos_grpc.bus.nats_connection import ReconnectLog
from kosmos_grpc.config import load_config
from kosmos_grpc.errors import DependencyUnavailable
from kosmos_grpc.preflight import check_dependencies
from tests.conftest import Mesh, NatsServer, free_port, run_tool, tool
from tests.helpers.agents import Echo
from tests.test_cli import kosmos

ATHENA = '[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "127.0.0.1:0"\n'
NATS_CONFIG = '[bus]\nnats = "{url}"\n\n' + ATHENA
BROKER_CONFIG = '[bus]\naddress = "{address}"\n\n' + ATHENA
HINT = "start it with '.venv/bin/nats-server -js' or set [bus] nats"


def nats_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kosmos.toml"
    path.write_text(NATS_CONFIG.format(url=url))
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "kosmos.events.x", "{}", "--timeout-ms", "1000"],
        ["subscribe", "kosmos.events.>"],
        ["serve", "athena"],
    ],
)
def test_nats_that_is_not_running_is_one_line_naming_it(tmp_path: Path, args: list[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = kosmos(nats_config(tmp_path, url), *args, timeout=30)  # it was 61 s and 241 warnings
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"kosmos: cannot reach NATS at {url} (connection refused): {HINT}"]


def test_nats_that_never_answers_fails_within_the_commands_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # takes the connection, never says INFO
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        result = kosmos(nats_config(tmp_path, url), "publish", "kosmos.events.x", "--timeout-ms", "1000")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"kosmos: cannot reach NATS at {url} (no answer within 1 s): {HINT}"]


@pytest.mark.parametrize("args", [["publish", "kosmos.events.x", "{}"], ["subscribe", "kosmos.events.>"]])
def test_a_broker_that_is_not_running_is_one_line_asking_whether_the_mesh_is(tmp_path: Path, args: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "kosmos.toml"
    config.write_text(BROKER_CONFIG.format(address=address))
    result = kosmos(config, *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"kosmos: cannot reach the event broker at {address} (connection refused): is the mesh running?"
        " (start it with 'make run' or 'kosmos up')"
    ]


async def test_preflight_names_a_nats_server_that_is_not_running(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    config = load_config(nats_config(tmp_path, url))
    with pytest.raises(DependencyUnavailable) as caught:
        await check_dependencies(config, timeout=5)
    assert caught.value.message == f"cannot reach NATS at {url} (connection refused): {HINT}"


async def test_preflight_names_a_nats_server_that_never_answers(tmp_path: Path) -> None:
    with socket.socket() as silent:  # takes the connection, never says INFO
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DependencyUnavailable) as caught:
            await check_dependencies(load_config(nats_config(tmp_path, url)), timeout=1)
    assert caught.value.message.startswith(f"cannot reach NATS at {url} (no answer within 1 s)")


async def test_preflight_passes_with_nats_running_and_without_nats(tmp_path: Path, nats_server: NatsServer) -> None:
    await check_dependencies(load_config(nats_config(tmp_path, nats_server.url)), timeout=5)
    broker = tmp_path / "broker.toml"
    broker.write_text(BROKER_CONFIG.format(address=f"127.0.0.1:{free_port()}"))  # kosmos up starts the broker
    await check_dependencies(load_config(broker), timeout=5)


async def test_preflight_names_a_nats_server_without_jetstream(tmp_path: Path) -> None:
    plain = await asyncio.create_subprocess_exec(
        tool("nats-server"),
        "-a",
        "127.0.0.1",
        "-p",
        str(port := free_port()),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        assert plain.stderr is not None
        async with asyncio.timeout(20):
            while b"Server is ready" not in await plain.stderr.readline():
                assert plain.returncode is None, "nats-server exited while starting"
        with pytest.raises(DependencyUnavailable, match=r"has no JetStream .*: run it with -js"):
            await check_dependencies(load_config(nats_config(tmp_path, f"nats://127.0.0.1:{port}")), timeout=5)
    finally:
        plain.kill()
        await plain.wait()


def reconnect_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(("kosmos_grpc.bus", "nats"))]


async def test_a_lost_nats_server_is_reported_once_and_its_return_once(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with NatsEventBus(nats_server.url, durable=()) as bus:
        await nats_server.stop(clean=False)
        deadline = time.monotonic() + 30
        while bus.reconnects.attempts < 4:  # several attempts fail while it is away
            assert time.monotonic() < deadline, "nats-py did not try to reconnect"
            await asyncio.sleep(0.05)
        await nats_server.start()  # the same port
        while bus.reconnects.lost:
            assert time.monotonic() < deadline + 30, "nats-py did not reconnect"
            await asyncio.sleep(0.05)
        await bus.publish("kosmos.events.x", {"after": "reconnect"}, acknowledge=True)
    lines = reconnect_lines(caplog)
    assert lines[0] == f"lost NATS at {nats_server.url} (nats: unexpected EOF); reconnecting"
    assert lines[1].startswith(f"reconnected to NATS at {nats_server.url} after ")
    assert len(lines) == 2, lines  # no line per attempt (it was one a quarter second)


async def test_reconnecting_is_summarised_at_most_every_30_seconds(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    report = ReconnectLog("nats://127.0.0.1:4222", clock=lambda: now[0])
    report.connecting = False
    await report.on_disconnected()
    for _ in range(400):  # a minute and a half of attempts, 0.25 s apart
        now[0] += 0.25
        await report.on_error(ConnectionRefusedError(111, "Connection refused"))
    await report.on_reconnected()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "lost NATS at nats://127.0.0.1:4222; reconnecting",
        "still reconnecting to NATS at nats://127.0.0.1:4222 (120 attempts, 30 s; last: connection refused)",
        "still reconnecting to NATS at nats://127.0.0.1:4222 (240 attempts, 60 s; last: connection refused)",
        "still reconnecting to NATS at nats://127.0.0.1:4222 (360 attempts, 90 s; last: connection refused)",
        "reconnected to NATS at nats://127.0.0.1:4222 after 400 attempts (100.0 s)",
    ]


async def test_our_own_close_is_not_a_lost_server(nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with NatsEventBus(nats_server.url, durable=()):
        pass
    assert reconnect_lines(caplog) == []


NO_MESH = "kosmos: no agent answers: is the mesh running? (start it with 'make run' or 'kosmos up')"


def two_agents(tmp_path: Path, echo: str, down: str) -> Path:
    path = tmp_path / "two.toml"
    path.write_text(
        f'[agents.echo]\nobject = "tests.helpers.agents:Echo"\naddress = "{echo}"\n\n'
        f'[agents.down]\nobject = "tests.helpers.agents:Echo"\naddress = "{down}"\n'
    )
    return path


@pytest.mark.parametrize("command", ["health", "agents"])
async def test_health_and_agents_fail_when_an_agent_is_not_serving(mesh: Mesh, tmp_path: Path, command: str) -> None:
    server = await mesh.serve(Echo())
    config = two_agents(tmp_path, server.address, f"127.0.0.1:{free_port()}")
    code, out, err = await run_tool(tool("kosmos"), "--config", str(config), command, "--timeout-ms", "2000")
    assert code == 1, out  # agents exited 0 whatever the agents' health
    assert "SERVING" in out
    assert "UNAVAILABLE" in out
    assert err == ""  # an agent answered: the mesh is running


@pytest.mark.parametrize("command", ["health", "agents"])
async def test_health_and_agents_ask_whether_the_mesh_runs_when_no_agent_answers(tmp_path: Path, command: str) -> None:
    config = two_agents(tmp_path, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    code, out, err = await run_tool(tool("kosmos"), "--config", str(config), command, "--timeout-ms", "2000")
    assert code == 1
    assert out.count("UNAVAILABLE") == 2
    assert err.splitlines() == [NO_MESH]


async def test_health_and_agents_pass_when_every_agent_serves(mesh: Mesh, tmp_path: Path) -> None:
    server = await mesh.serve(Echo())
    config = tmp_path / "one.toml"
    config.write_text(f'[agents.echo]\nobject = "tests.helpers.agents:Echo"\naddress = "{server.address}"\n')
    for command in ("health", "agents"):
        code, out, err = await run_tool(tool("kosmos"), "--config", str(config), command)
        assert (code, err) == (0, ""), out


@pytest.mark.parametrize(
    ("command", "who"), [(["serve", "athena"], "agent 'athena'"), (["broker"], "the event broker")]
)
def test_a_taken_port_is_one_line_naming_who_and_where(tmp_path: Path, command: list[str], who: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        config = tmp_path / "kosmos.toml"
        config.write_text(
            f'[bus]\naddress = "{taken}"\n\n'
            f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "{taken}"\n'
        )
        result = kosmos(config, *command)
    assert result.returncode == 1
    # gRPC's own C-core lines are kept out by GRPC_VERBOSITY (elsewhere); ours is one line.
    ours = [line for line in result.stderr.splitlines() if "add_port.cc" not in line]
    assert ours == [f"kosmos: {who} cannot listen on {taken}: the address is in use or not available"]
