"""``kosmos up``: run every agent of a config in its own process and stop them all together.

Each child binds its configured address (port 0 picks a free one), reports the address it got
as one JSON line on stdout, then reads the whole mesh's addresses as one JSON line on stdin
before it reports SERVING. A child also stops when its stdin closes, so no agent outlives its
launcher, even one killed without a chance to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from kosmos_grpc.client import Coordinator
from kosmos_grpc.config import ConfigError, MeshConfig, load_agent
from kosmos_grpc.errors import KosmosError
from kosmos_grpc.server import AgentServer, serve_forever

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["MeshProcess", "run_mesh", "serve_agent"]

START_TIMEOUT = 30.0


@dataclass(slots=True)
class MeshProcess:
    """One agent's process under ``kosmos up``."""

    name: str
    process: asyncio.subprocess.Process
    address: str = ""
    health: str = "UNKNOWN"


async def serve_agent(config: MeshConfig, name: str, *, handshake: bool = False) -> None:
    """Serve one agent of ``config`` until SIGTERM/SIGINT (or, with ``handshake``, until stdin closes)."""
    spec = config.agent(name)
    agent = load_agent(spec.object, config.path.parent if config.path else None)
    server = AgentServer(
        agent,
        address=spec.address,
        registry=config.addresses(),
        payload_limit=config.payload_limit,
        grace_seconds=config.grace_seconds,
        max_concurrent_rpcs=spec.max_concurrent_rpcs or config.max_concurrent_rpcs,
    )
    if not handshake:
        await serve_forever(server)
        return
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    watcher: asyncio.Task[None] | None = None

    async def ready(server: AgentServer) -> None:
        nonlocal watcher
        print(json.dumps({"agent": name, "address": server.address}), flush=True)
        line = await asyncio.wait_for(stdin.readline(), START_TIMEOUT)
        if not line:
            raise ConfigError("the launcher went away before the mesh started")
        server.registry.update_from(json.loads(line))
        watcher = asyncio.create_task(_stop_on_eof(stdin, server))

    try:
        await serve_forever(server, ready=ready)
    finally:
        if watcher is not None:
            watcher.cancel()


async def _stop_on_eof(stdin: asyncio.StreamReader, server: AgentServer) -> None:
    while await stdin.readline():
        pass
    await server.stop()


async def _start(config: MeshConfig, children: list[MeshProcess]) -> None:
    """Start every agent's process into ``children`` (so a failure leaves them to stop) and hand out addresses."""
    assert config.path is not None
    for name in config.agents:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kosmos_grpc.cli",
            "--config",
            str(config.path),
            "serve",
            name,
            "--handshake",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        children.append(MeshProcess(name, process))
    for child in children:
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            raise ConfigError(f"agent {child.name!r} did not start within {START_TIMEOUT:.0f} s") from None
        if not line:
            code = await child.process.wait()
            raise ConfigError(f"agent {child.name!r} exited with code {code} while starting (its error is above)")
        child.address = json.loads(line)["address"]
    addresses = json.dumps({child.name: child.address for child in children}) + "\n"
    for child in children:
        assert child.process.stdin is not None
        child.process.stdin.write(addresses.encode())
        await child.process.stdin.drain()


async def _wait_serving(children: list[MeshProcess]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with Coordinator({c.name: c.address for c in children}) as client:
        for child in children:
            while True:
                if child.process.returncode is not None:
                    raise ConfigError(f"agent {child.name!r} exited with code {child.process.returncode}")
                with contextlib.suppress(KosmosError):
                    child.health = await client.health(child.name, timeout_ms=1000)
                if child.health == "SERVING":
                    break
                if loop.time() > deadline:
                    raise ConfigError(f"agent {child.name!r} is not SERVING after {START_TIMEOUT:.0f} s")
                await asyncio.sleep(0.05)


def _table(children: list[MeshProcess]) -> str:
    rows = [("AGENT", "ADDRESS", "HEALTH", "PID")]
    rows += [(c.name, c.address, c.health, str(c.process.pid)) for c in children]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def _stop(children: list[MeshProcess], grace: float) -> None:
    """SIGTERM every child, wait for the drain, SIGKILL what is left."""
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    waits = [asyncio.create_task(c.process.wait()) for c in children]
    _, pending = await asyncio.wait(waits, timeout=grace + 5)
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
    if pending:
        await asyncio.wait(pending, timeout=5)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` unless ``stop`` is set first; whether it finished."""
    task = asyncio.create_task(work)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def run_mesh(config: MeshConfig, out: TextIO = sys.stdout) -> int:
    """Run the whole mesh until SIGINT/SIGTERM or until an agent dies; the exit code to return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: list[MeshProcess] = []
    try:
        if not await _until(stop, _start(config, children)) or not await _until(stop, _wait_serving(children)):
            return 0
        print(_table(children), file=out)
        print(f"mesh up: {len(children)} agents. Ctrl-C stops them.", file=out, flush=True)
        exits = {asyncio.create_task(c.process.wait()): c for c in children}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, *exits):
            task.cancel()
        died = [exits[task] for task in done if task in exits]
        for child in died:
            print(
                f"kosmos: agent {child.name!r} exited with code {child.process.returncode}; stopping the mesh",
                file=sys.stderr,
            )
        return 1 if died else 0
    finally:
        await _stop(children, config.grace_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if children:
            print("mesh stopped", file=out, flush=True)
