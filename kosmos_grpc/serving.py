"""One child of ``kosmos up`` (or ``kosmos serve``): an agent or the event broker, served in this process.

Under ``kosmos up`` (``--handshake``) the child binds its configured address (port 0 picks a free
one; a restarted child binds what its first process got, from ``$KOSMOS_UP_BIND``) and reports the
address it got, and where it serves ``/metrics`` if it does, on a line of its own
(``KOSMOS-READY {...}``) on stdout; then it reads the whole mesh's addresses and its restart count
as one JSON line on stdin before it reports SERVING. It stops when its stdin closes, so no agent
outlives its launcher, even one killed without a chance to clean up; stopped by a signal instead,
it ends by that signal once drained, so the supervisor sees it as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from kosmos_grpc.agent import import_object, load_agent
from kosmos_grpc.bus import BrokerServer, open_bus
from kosmos_grpc.bus.metrics import label_agents
from kosmos_grpc.errors import ConfigError
from kosmos_grpc.runtime import until
from kosmos_grpc.server import AgentServer, serve_forever
from kosmos_grpc.supervisor import BIND_ENV, BROKER_NAME, READY_MARK
from kosmos_grpc.telemetry.instrumentation import grpc_client_interceptors, grpc_server_interceptors
from kosmos_grpc.telemetry.metrics import serve_metrics
from kosmos_grpc.telemetry.tracing import configure_tracing

if TYPE_CHECKING:
    from collections.abc import Callable

    from kosmos_grpc.config import AgentConfig, MeshConfig

__all__ = ["START_TIMEOUT", "agent_server", "serve_agent", "serve_broker"]

#: Seconds a child waits for the mesh's addresses from ``kosmos up``, and ``kosmos up`` for the
#: whole mesh to start, or for a restarted process to say SERVING (else it is killed).
START_TIMEOUT = 60.0

log = logging.getLogger(__name__)


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
    if handshake:
        config = _bound(config, name)
    spec = config.agent(name)
    label_agents(config.agents)
    with contextlib.ExitStack() as stack:
        metrics = _observe(stack, name, spec.address, spec.metrics_port)
        signalled = await _serve_agent(config, spec, metrics, handshake=handshake)
    _end_by(signalled)


def _bound(config: MeshConfig, name: str) -> MeshConfig:
    """``config`` with the address (and metrics port) ``kosmos up`` gave a restarted child, if it gave one."""
    given = os.environ.pop(BIND_ENV, None)
    if given is None:
        return config
    bind = json.loads(given)
    if name == BROKER_NAME:
        bus = dataclasses.replace(config.bus, address=bind["address"], metrics_port=bind["metrics_port"])
        return dataclasses.replace(config, bus=bus)
    spec = dataclasses.replace(config.agent(name), address=bind["address"], metrics_port=bind["metrics_port"])
    return dataclasses.replace(config, agents={**config.agents, name: spec})


def _end_by(signalled: signal.Signals | None) -> None:
    """End this process by the signal that stopped it, once drained: ``kosmos up`` restarts a
    child killed by a signal under ``restart = "on-failure"``, not one that exited 0."""
    if signalled is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signalled, signal.SIG_DFL)
    os.kill(os.getpid(), signalled)


def agent_server(config: MeshConfig, name: str) -> AgentServer:
    """Agent ``name`` of ``config``, loaded and ready to start, with the interceptors the config names."""
    folder = config.path.parent if config.path else None
    grpc_instrumentation = config.telemetry.grpc_instrumentation
    spec = config.agent(name)
    return AgentServer(
        load_agent(spec.object, folder),
        config.server(name),
        agent_settings=spec.settings,
        state_dir=config.agent_state_dir(name),
        metrics=_metrics_urls(config),
        registry=config.addresses(),
        resilience=config.resilience,
        interceptors=[import_object(spec, folder) for spec in config.interceptors.inbound],
        client_interceptors=[import_object(spec, folder) for spec in config.interceptors.outbound],
        grpc_interceptors=grpc_server_interceptors() if grpc_instrumentation else (),
        grpc_client_interceptors=grpc_client_interceptors() if grpc_instrumentation else (),
    )


def _metrics_urls(config: MeshConfig) -> dict[str, str]:
    """Agent name -> ``/metrics`` URL, for the agents of ``config`` with a fixed metrics port."""
    return {
        name: f"http://{spec.address.rsplit(':', 1)[0]}:{spec.metrics_port}/metrics"
        for name, spec in config.agents.items()
        if spec.metrics_port
    }


async def _serve_agent(
    config: MeshConfig, spec: AgentConfig, metrics: str | None, *, handshake: bool
) -> signal.Signals | None:
    """Serve; the signal that stopped a child of ``kosmos up`` (None when stdin closed, or not a child)."""
    name = spec.name
    server = agent_server(config, name)
    if metrics is not None:
        server.agent.host.metrics[name] = metrics

    async def attach(broker: str | None) -> None:
        if config.bus.configured:
            server.attach_bus(await open_bus(config, name, broker=broker))

    if not handshake:
        if metrics is not None:
            log.info("%s metrics on %s", name, metrics)
        await attach(None)
        await serve_forever(server)
        return None
    stdin = await _open_stdin()
    watcher: asyncio.Task[None] | None = None
    cause = _StopCause(server.request_stop)

    async def ready(server: AgentServer) -> None:
        nonlocal watcher
        mesh = await _handshake(stdin, name, server.address, metrics)
        if mesh is None:  # `kosmos up` is stopping: end quietly, as asked
            cause.on_eof()
            await asyncio.Future()  # cancelled at once by the stop just asked for
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # serve_forever's handlers, plus which signal it was
            loop.add_signal_handler(sig, cause.on_signal, sig)
        server.servicer.restarts = int(mesh.get("restarts", 0))
        server.registry.update_from(mesh["agents"])
        server.agent.host.metrics.update(mesh.get("metrics", {}))
        await attach(mesh.get("bus"))
        watcher = asyncio.create_task(_stop_on_eof(stdin, cause.on_eof))

    try:
        await serve_forever(server, ready=ready)
    finally:
        if watcher is not None:
            watcher.cancel()
    return cause.stopped_by()


class _StopCause:
    """Why a child of ``kosmos up`` stops: its stdin closed (``kosmos up`` stops it), or a signal."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.closed = False
        self.signalled: list[signal.Signals] = []

    def on_eof(self) -> None:
        self.closed = True
        self._stop()

    def on_signal(self, sig: signal.Signals) -> None:
        self.signalled.append(sig)
        self._stop()

    def stopped_by(self) -> signal.Signals | None:
        """None when stdin closed; else the signal (SIGTERM when it came before we could tell which)."""
        if self.closed:
            return None
        return self.signalled[0] if self.signalled else signal.SIGTERM


async def serve_broker(config: MeshConfig, *, handshake: bool = False) -> None:
    """Run the embedded event broker at the config's ``[bus] address`` until SIGTERM/SIGINT (or stdin closes)."""
    if handshake:
        config = _bound(config, BROKER_NAME)
    label_agents(config.agents)
    with contextlib.ExitStack() as stack:
        metrics = _observe(stack, "kosmos-broker", config.bus.broker_address(), config.bus.metrics_port)
        signalled = await _serve_broker(config, metrics, handshake=handshake)
    if handshake:
        _end_by(signalled)


async def _serve_broker(config: MeshConfig, metrics: str | None, *, handshake: bool) -> signal.Signals | None:
    bus = config.bus
    broker = BrokerServer(
        address=bus.broker_address(),
        payload_limit=config.limits.payload_limit,
        grace_seconds=1.0,
        nats_url=bus.nats_url,
        durable=bus.durable,
        max_deliveries=bus.max_deliveries,
        subscriber_buffer_bytes=bus.subscriber_buffer_bytes,
        subscriber_stall_seconds=bus.subscriber_stall_seconds,
    )
    stop = asyncio.Event()
    cause = _StopCause(stop.set)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cause.on_signal, sig)
    watcher: asyncio.Task[None] | None = None
    try:
        await broker.start()
        if handshake:
            stdin = await _open_stdin()
            handshake_task = asyncio.ensure_future(_handshake(stdin, BROKER_NAME, broker.address, metrics))
            if not await until(stop, handshake_task):
                return cause.stopped_by()
            if handshake_task.result() is None:
                return None
            watcher = asyncio.create_task(_stop_on_eof(stdin, cause.on_eof))
        elif metrics is not None:
            log.info("event broker metrics on %s", metrics)
        log.info("event broker serving on %s", broker.address)
        await stop.wait()
        return cause.stopped_by()
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


async def _handshake(
    stdin: asyncio.StreamReader, name: str, address: str, metrics: str | None
) -> dict[str, Any] | None:
    """Tell ``kosmos up`` where we listen (calls, and ``/metrics``); the mesh's addresses it answers
    with, or None when it closed our stdin first (it is stopping)."""
    print(READY_MARK + json.dumps({"agent": name, "address": address, "metrics": metrics}), flush=True)
    try:
        line = await asyncio.wait_for(stdin.readline(), START_TIMEOUT)
    except TimeoutError:
        raise ConfigError(f"no mesh addresses from `kosmos up` within {START_TIMEOUT:.0f} s") from None
    if not line:
        return None
    mesh: dict[str, Any] = json.loads(line)
    return mesh


async def _stop_on_eof(stdin: asyncio.StreamReader, stop: Callable[[], None]) -> None:
    while await stdin.readline():
        pass
    stop()
