"""Fixtures: agents served on loopback port 0 in the test's own event loop, and the tools' paths."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from kosmos_grpc import Agent, AgentServer, Coordinator, KosmosError, Registry, ResiliencePolicy, ServerSettings
from kosmos_grpc.interceptors.server_chain import InboundFactory

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Run as a shell's background job (`make test &`, nohup), pytest starts with SIGINT ignored, and so
# would every process it starts: the tests of what Ctrl-C does would then send a signal no one
# hears. A handler of our own is reset to the default in each child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    """A loopback port the OS just handed out for port 0 and nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ManualClock:
    """A clock for circuit breakers that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Mesh:
    """Agents served in-process on free loopback ports, sharing one registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.servers: list[AgentServer] = []

    async def serve(
        self,
        agent: Agent,
        *,
        resilience: ResiliencePolicy | bool = True,
        interceptors: Sequence[InboundFactory] = (),
        grpc_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        **settings: Any,
    ) -> AgentServer:
        """Serve ``agent`` on a free port; ``settings`` are :class:`ServerSettings` fields."""
        server = AgentServer(
            agent,
            ServerSettings(grace_seconds=1, **settings),
            registry=self.registry,
            resilience=resilience,
            interceptors=interceptors,
            grpc_interceptors=grpc_interceptors,
        )
        await server.start()
        self.servers.append(server)
        return server

    def client(self, **kwargs: Any) -> Coordinator:
        return Coordinator(self.registry, **kwargs)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    mesh = Mesh()
    try:
        yield mesh
    finally:
        for server in mesh.servers:
            await server.stop(0)


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[Coordinator]:
    async with mesh.client() as coordinator:
        yield coordinator


def tool(name: str) -> str:
    """A command installed beside this Python (grpcurl, kosmos), else on PATH."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run `make install`")
    return found


def environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment for a child, less the developer's own OTEL_* settings, plus ``extra``.

    A test that wants spans exported says where; none inherits an exporter from the shell. The
    child imports kosmos_grpc from this tree, whichever one the environment's editable install names.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    path = os.pathsep.join(p for p in (str(ROOT), inherited.get("PYTHONPATH", "")) if p)
    return {**inherited, "PYTHONPATH": path, **extra}


async def kosmos_serve(config: Path, agent: str, *options: str) -> asyncio.subprocess.Process:
    """`kosmos [options] serve agent` in a process of its own, its stderr piped (the caller stops it)."""
    return await asyncio.create_subprocess_exec(
        tool("kosmos"),
        "--config",
        str(config),
        *options,
        "serve",
        agent,
        cwd=ROOT,
        env=environment({}),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )


class Processes:
    """Processes a test starts, each stopped by its PID when the test ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def start(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        env = environment({"PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})})
        process = subprocess.Popen(
            list(args), cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
        )
        self.started.append(process)
        return process

    def adopt(self, pid: int) -> None:
        """Also stop ``pid`` (a grandchild) if it is still alive at the end."""
        self.pids.append(pid)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            for stream in (process.stdout, process.stderr, process.stdin):
                if stream is not None:
                    stream.close()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


async def run_tool(
    *args: str, limit: float = 20, stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop the in-process servers live in; killed on timeout.

    ``env`` is added to this process's environment.
    """

    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=environment(env or {}),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), limit)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class NatsServer:
    """A real nats-server with JetStream on a free loopback port, stopped by its PID.

    Restartable on the same port and the same store, which it removes when told to clean up.
    """

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.port = -1  # nats-server picks a free port the first time
        self.store = tempfile.mkdtemp(prefix="kosmos-nats-")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            tool("nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            self.store,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        async with asyncio.timeout(20):
            while True:
                line = (await self.process.stderr.readline()).decode()
                if not line:
                    raise AssertionError("nats-server exited while starting")
                if "Listening for client connections on" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                if "Server is ready" in line:
                    break
        self._drain = asyncio.create_task(self._read_rest(self.process.stderr))

    async def _read_rest(self, stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self, *, clean: bool = True) -> None:
        """Kill the server by its PID; ``clean`` also removes its JetStream store."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            self._drain.cancel()
        if clean:
            shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    server = NatsServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def until_serving(client: Coordinator, name: str) -> None:
    """Until ``name`` answers health SERVING (bounded: a process starts within seconds)."""
    for _ in range(200):  # bounded: a process starts within seconds
        try:
            if await client.health(name, timeout_ms=500) == "SERVING":
                return
        except KosmosError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reported SERVING")
