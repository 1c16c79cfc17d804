"""How `kosmos` starts and stops: only the modules a command needs, and Ctrl-C at any moment without a traceback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from kosmos_grpc.server import AgentServer
from tests.helpers.agents import Echo, Probe

from .conftest import ROOT, Mesh, environment, run_tool, tool

# What no command that only calls an agent needs: the server side, the bus, tracing's SDK and exporters.
NOT_FOR_A_CALL = {
    "kosmos_grpc.launcher",
    "kosmos_grpc.server",
    "kosmos_grpc.servicer",
    "kosmos_grpc.bus",
    "nats",
    "uvloop",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "shtab",
}
# ... and what `kosmos --help` does not need either: gRPC, protobuf, the client, telemetry.
NOT_FOR_HELP = NOT_FOR_A_CALL | {
    "grpc",
    "google.protobuf",
    "kosmos_grpc.client",
    "kosmos_grpc.config",
    "kosmos_grpc.errors",
    "opentelemetry",
    "prometheus_client",
    "tenacity",
}
# Runs main() as the `kosmos` entry point does, then prints the modules it loaded.
LOADED = """
import json, sys
from kosmos_grpc.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def _config(tmp_path: Path, server: AgentServer, name: str, agent: str) -> Path:
    config = tmp_path / "kosmos.toml"
    config.write_text(f'[agents.{name}]\nobject = "{agent}"\naddress = "{server.address}"\n')
    return config


async def _loaded(*argv: str) -> tuple[str, set[str]]:
    code, out, err = await run_tool(sys.executable, "-c", LOADED, *argv)
    assert code == 0, err
    modules = set(json.loads(err.splitlines()[-1]))
    return out, {m for m in modules if any(m == heavy or m.startswith(heavy + ".") for heavy in NOT_FOR_HELP)}


async def test_help_loads_neither_grpc_nor_telemetry() -> None:
    out, heavy = await _loaded("--help")
    assert "examples" in out or "COMMAND" in out
    assert heavy == set()


async def test_call_loads_grpc_and_the_client_but_not_the_server_side(mesh: Mesh, tmp_path: Path) -> None:
    server = await mesh.serve(Echo())
    config = _config(tmp_path, server, "echo", "tests.helpers.agents:Echo")
    out, heavy = await _loaded("--config", str(config), "call", "echo", "echo", '{"x": 1}')
    assert json.loads(out) == {"x": 1}
    assert {"grpc", "kosmos_grpc.client"} <= heavy
    assert {m for m in heavy if any(m == n or m.startswith(n + ".") for n in NOT_FOR_A_CALL)} == set()


async def test_call_prints_keys_sorted_whatever_order_the_wire_gave(mesh: Mesh, tmp_path: Path) -> None:
    """A payload is a protobuf Struct, a map, whose order upb changes from process to process."""
    server = await mesh.serve(Echo())
    config = _config(tmp_path, server, "echo", "tests.helpers.agents:Echo")
    payload = {f"k{i:02d}": {"z": i, "a": [i]} for i in range(20)}
    code, out, err = await run_tool(
        tool("kosmos"), "call", "echo", "echo", json.dumps(payload), "--config", str(config)
    )
    assert code == 0, err
    assert out == json.dumps(payload, sort_keys=True) + "\n"


async def _interrupt(process: asyncio.subprocess.Process, after_module: str) -> str:
    """SIGINT once ``after_module`` has been imported (PYTHONPROFILEIMPORTTIME lines); the rest of stderr."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, f"{after_module} was never imported"
            if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == after_module:
                break
    process.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(process.stderr.read(), 30)
    await asyncio.wait_for(process.wait(), 30)
    return "\n".join(x for x in rest.decode().splitlines() if not x.startswith("import time:"))


# Moments while `kosmos call` loads: its grammar, halfway through grpc's C extension, the client.
@pytest.mark.parametrize("after_module", ["kosmos_grpc.commandline", "grpc._cython.cygrpc", "kosmos_grpc.client"])
async def test_ctrl_c_while_the_command_loads_ends_quietly(mesh: Mesh, tmp_path: Path, after_module: str) -> None:
    probe = Probe()
    config = _config(tmp_path, await mesh.serve(probe), "probe", "tests.helpers.agents:Probe")
    process = await asyncio.create_subprocess_exec(
        *(tool("kosmos"), "--config", str(config), "call", "probe", "hang"),
        cwd=ROOT,
        env=environment({"PYTHONPROFILEIMPORTTIME": "1"}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stderr = await _interrupt(process, after_module)
        assert "Traceback" not in stderr
        assert stderr == ""
        assert process.returncode == 130
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(("command", "action"), [("call", "hang"), ("stream", "hang_stream")])
async def test_ctrl_c_while_a_call_waits_cancels_it_and_ends_quietly(
    mesh: Mesh, tmp_path: Path, command: str, action: str
) -> None:
    probe = Probe()
    config = _config(tmp_path, await mesh.serve(probe), "probe", "tests.helpers.agents:Probe")
    process = await asyncio.create_subprocess_exec(
        *(tool("kosmos"), command, "probe", action, "--config", str(config)),
        cwd=ROOT,
        env=environment({}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(probe.started.wait(), 30)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert err.decode() == ""
        assert process.returncode == 130
        await asyncio.wait_for(probe.cancelled.wait(), 10)  # the CLI cancelled its call on the way out
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_reader_that_goes_away_ends_the_stream_quietly(mesh: Mesh, tmp_path: Path) -> None:
    """`kosmos stream ... | head -1`: the pipe closes under the command, which stops without a word."""
    config = _config(tmp_path, await mesh.serve(Echo()), "echo", "tests.helpers.agents:Echo")
    pipeline = '"$0" stream echo count \'{"n": 100000}\' --config "$1" | head -n 1; exit "${PIPESTATUS[0]}"'
    code, out, err = await run_tool("bash", "-c", pipeline, tool("kosmos"), str(config), limit=60)
    assert json.loads(out) == {"i": 0}
    assert err == ""
    assert code == 141
