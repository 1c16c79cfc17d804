"""``kosmos up``: run every agent of a config in its own process and stop them all together.

Each child binds its configured address (port 0 picks a free one) and reports the address it
got, and where it serves ``/metrics`` if it does, on a line of its own (``KOSMOS-READY {...}``)
on stdout; then it reads the whole mesh's addresses as one JSON line on stdin before it reports
SERVING. Anything else a child prints is passed through to the launcher's stdout. A child also
stops when its stdin closes, so no agent outlives its launcher, even one killed without a chance
to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from kosmos_grpc.agent import import_object, load_agent
from kosmos_grpc.bus import BrokerServer, open_bus
from kosmos_grpc.client import Coordinator
from kosmos_grpc.errors import ConfigError, KosmosError
from kosmos_grpc.runtime import until
from kosmos_grpc.server import AgentServer, serve_forever
from kosmos_grpc.tables import format_table
from kosmos_grpc.telemetry.instrumentation import grpc_client_interceptors, grpc_server_interceptors
from kosmos_grpc.telemetry.metrics import serve_metrics
from kosmos_grpc.telemetry.tracing import configure_tracing

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kosmos_grpc.config import AgentConfig, MeshConfig

__all__ = [
    "BROKER_NAME",
    "READY_MARK",
    "START_TIMEOUT",
    "MeshProcess",
    "agent_server",
    "run_mesh",
    "serve_agent",
    "serve_broker",
]

#: Seconds the whole mesh has to start: every agent bound, addresses exchanged, SERVING.
START_TIMEOUT = 60.0
READY_MARK = "KOSMOS-READY "
#: How ``kosmos up`` lists the embedded event broker among the agents.
BROKER_NAME = "(broker)"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MeshProcess:
    """One agent's process under ``kosmos up``."""

    name: str
    process: asyncio.subprocess.Process
    address: str = ""
    #: Its ``/metrics`` URL, or None when it serves none.
    metrics: str | None = None
    health: str = "UNKNOWN"
    output: asyncio.Task[None] | None = None


def _observe(stack: contextlib.ExitStack, service: str, address: str, metrics_port: int | None) -> str | None:
    """Trace as ``service`` and, when a port is configured, serve ``/metrics`` on ``address``'s host.

    ``stack`` stops both (flushing the last spans); returns the metrics URL, if any.
    """
    provider = configure_tracing(service)
    if provider is not None:
        stack.callback(provider.shutdown)
    if metrics_port is None:
        return None
    endpoint = serve_metrics(address.rsplit(":", 1)[0], metrics_port)
    stack.callback(endpoint.close)
    return endpoint.url


async def serve_agent(config: MeshConfig, name: str, *, handshake: bool = False) -> None:
    """Serve one agent of ``config`` until SIGTERM/SIGINT (or, with ``handshake``, until stdin closes)."""
    spec = config.agent(name)
    with contextlib.ExitStack() as stack:
        metrics = _observe(stack, name, spec.address, spec.metrics_port)
        await _serve_agent(config, spec, metrics, handshake=handshake)


def agent_server(config: MeshConfig, name: str) -> AgentServer:
    """Agent ``name`` of ``config``, loaded and ready to start, with the interceptors the config names."""
    folder = config.path.parent if config.path else None
    grpc_instrumentation = config.telemetry.grpc_instrumentation
    return AgentServer(
        load_agent(config.agent(name).object, folder),
        config.server(name),
        registry=config.addresses(),
        resilience=config.resilience,
        interceptors=[import_object(spec, folder) for spec in config.interceptors.inbound],
        client_interceptors=[import_object(spec, folder) for spec in config.interceptors.outbound],
        grpc_interceptors=grpc_server_interceptors() if grpc_instrumentation else (),
        grpc_client_interceptors=grpc_client_interceptors() if grpc_instrumentation else (),
    )


async def _serve_agent(config: MeshConfig, spec: AgentConfig, metrics: str | None, *, handshake: bool) -> None:
    name = spec.name
    server = agent_server(config, name)

    async def attach(broker: str | None) -> None:
        if config.bus.configured:
            server.attach_bus(await open_bus(config, name, broker=broker))

    if not handshake:
        if metrics is not None:
            log.info("%s metrics on %s", name, metrics)
        await attach(None)
        await serve_forever(server)
        return
    stdin = await _open_stdin()
    watcher: asyncio.Task[None] | None = None

    async def ready(server: AgentServer) -> None:
        nonlocal watcher
        mesh = await _handshake(stdin, name, server.address, metrics)
        server.registry.update_from(mesh["agents"])
        await attach(mesh.get("bus"))
        watcher = asyncio.create_task(_stop_on_eof(stdin, server.request_stop))

    try:
        await serve_forever(server, ready=ready)
    finally:
        if watcher is not None:
            watcher.cancel()


async def serve_broker(config: MeshConfig, *, handshake: bool = False) -> None:
    """Run the embedded event broker at the config's ``[bus] address`` until SIGTERM/SIGINT (or stdin closes)."""
    with contextlib.ExitStack() as stack:
        metrics = _observe(stack, "kosmos-broker", config.bus.broker_address(), config.bus.metrics_port)
        await _serve_broker(config, metrics, handshake=handshake)


async def _serve_broker(config: MeshConfig, metrics: str | None, *, handshake: bool) -> None:
    bus = config.bus
    broker = BrokerServer(
        address=bus.broker_address(),
        payload_limit=config.limits.payload_limit,
        grace_seconds=1.0,
        nats_url=bus.nats_url,
        durable=bus.durable,
        max_deliveries=bus.max_deliveries,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    try:
        await broker.start()
        if handshake:
            stdin = await _open_stdin()
            if not await until(stop, _handshake(stdin, BROKER_NAME, broker.address, metrics)):
                return
            watcher = asyncio.create_task(_stop_on_eof(stdin, stop.set))
        elif metrics is not None:
            log.info("event broker metrics on %s", metrics)
        log.info("event broker serving on %s", broker.address)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
        await broker.stop()


async def _open_stdin() -> asyncio.StreamReader:
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    return stdin


async def _handshake(stdin: asyncio.StreamReader, name: str, address: str, metrics: str | None) -> dict[str, Any]:
    """Tell ``kosmos up`` where we listen (calls, and ``/metrics``); the mesh's addresses it answers with."""
    print(READY_MARK + json.dumps({"agent": name, "address": address, "metrics": metrics}), flush=True)
    try:
        line = await asyncio.wait_for(stdin.readline(), START_TIMEOUT)
    except TimeoutError:
        raise ConfigError(f"no mesh addresses from `kosmos up` within {START_TIMEOUT:.0f} s") from None
    if not line:
        raise ConfigError("`kosmos up` went away before the mesh started")
    mesh: dict[str, Any] = json.loads(line)
    return mesh


async def _stop_on_eof(stdin: asyncio.StreamReader, stop: Callable[[], None]) -> None:
    while await stdin.readline():
        pass
    stop()


async def _pass_through(stream: asyncio.StreamReader, out: TextIO) -> None:
    """Copy a child's output to ours, line by line, so its pipe never fills."""
    while line := await stream.readline():
        out.write(line.decode(errors="replace"))
        out.flush()


async def _start(config: MeshConfig, children: list[MeshProcess], out: TextIO, options: Sequence[str] = ()) -> None:
    """Start the broker and every agent, each in its own process, into ``children`` (so a failure
    leaves them to stop), and hand out the addresses. ``options`` go before each child's command."""
    assert config.path is not None
    commands = [(BROKER_NAME, ["broker"])] if config.bus.address is not None else []
    commands += [(name, ["serve", name]) for name in config.agents]
    for name, command in commands:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kosmos_grpc.cli",
            "--config",
            str(config.path),
            *options,
            *command,
            "--handshake",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        children.append(MeshProcess(name, process))
    for child in children:
        assert child.process.stdout is not None
        while True:
            line = (await child.process.stdout.readline()).decode(errors="replace")
            if not line:
                code = await child.process.wait()
                raise ConfigError(f"agent {child.name!r} exited with code {code} while starting (its error is above)")
            if line.startswith(READY_MARK):
                ready = json.loads(line.removeprefix(READY_MARK))
                child.address, child.metrics = ready["address"], ready.get("metrics")
                break
            out.write(line)
    agents = {child.name: child.address for child in children if child.name != BROKER_NAME}
    bus = next((child.address for child in children if child.name == BROKER_NAME), None)
    addresses = json.dumps({"agents": agents, "bus": bus}) + "\n"
    for child in children:
        assert child.process.stdin is not None
        assert child.process.stdout is not None
        child.process.stdin.write(addresses.encode())
        await child.process.stdin.drain()
        child.output = asyncio.create_task(_pass_through(child.process.stdout, out))


async def _wait_serving(children: list[MeshProcess]) -> None:
    """Poll each agent's gRPC health until it says SERVING (the caller bounds the wait)."""
    async with Coordinator({c.name: c.address for c in children}) as client:
        for child in children:
            while True:
                if child.process.returncode is not None:
                    raise ConfigError(f"agent {child.name!r} exited with code {child.process.returncode}")
                with contextlib.suppress(KosmosError):
                    child.health = await client.health(child.name, timeout_ms=1000)
                if child.health == "SERVING":
                    break
                await asyncio.sleep(0.05)


async def _stop(children: list[MeshProcess], grace: float) -> None:
    """Close every child's stdin, SIGTERM it, wait for the drain, SIGKILL what is left."""
    for child in children:
        if child.process.stdin is not None:
            child.process.stdin.close()
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(c.process.wait()) for c in children]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=grace + 5)
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for child in children:  # the child is gone: its last output is in the pipe or nowhere
        if child.output is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(child.output, 1)


async def _bounded_start(config: MeshConfig, children: list[MeshProcess], out: TextIO, options: Sequence[str]) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await _start(config, children, out, options)
            await _wait_serving(children)
    except TimeoutError:
        waiting = [c.name for c in children if c.health != "SERVING"]
        raise ConfigError(f"the mesh did not start within {START_TIMEOUT:.0f} s (waiting for {waiting})") from None


async def run_mesh(config: MeshConfig, out: TextIO = sys.stdout, *, options: Sequence[str] = ()) -> int:
    """Run the whole mesh until SIGINT/SIGTERM or until an agent dies; the exit code to return.

    ``options`` are ``kosmos`` options every child gets, such as ``("--log-format", "json")``.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: list[MeshProcess] = []
    try:
        if not await until(stop, _bounded_start(config, children, out, options)):
            return 0
        rows = [(c.name, c.address, c.health, str(c.process.pid), c.metrics or "-") for c in children]
        print(format_table(("AGENT", "ADDRESS", "HEALTH", "PID", "METRICS"), rows), file=out)
        agents = sum(child.name != BROKER_NAME for child in children)
        broker = " and the event broker" if agents < len(children) else ""
        print(f"mesh up: {agents} agents{broker}. Ctrl-C stops them.", file=out, flush=True)
        exits = {asyncio.ensure_future(c.process.wait()): c for c in children}
        stopping = asyncio.ensure_future(stop.wait())
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
        await _stop(children, config.limits.grace_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if children:
            print("mesh stopped", file=out, flush=True)
