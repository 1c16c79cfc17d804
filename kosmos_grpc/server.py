"""Serve an agent: a grpc.aio server with AgentService, standard health and server reflection, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from kosmos_grpc._grpc import AGENT_SERVICE, add_agent_service, quiet_hang_ups, server_options
from kosmos_grpc.admission import Admission
from kosmos_grpc.agent import AgentHost
from kosmos_grpc.client import Coordinator
from kosmos_grpc.config import DEFAULT_STATE_DIR, ServerSettings
from kosmos_grpc.idempotency import ExecutedCalls
from kosmos_grpc.memory import FreeMemory
from kosmos_grpc.registry import Registry
from kosmos_grpc.runtime import until
from kosmos_grpc.servicer import AgentServicer
from kosmos_grpc.standard_services import add_health_service, add_reflection_service
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from kosmos_grpc.agent import Agent
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.interceptors.client_chain import OutboundFactory
    from kosmos_grpc.interceptors.server_chain import InboundFactory
    from kosmos_grpc.resilience import ResiliencePolicy

__all__ = ["AGENT_SERVICE", "AgentServer", "serve_forever"]

log = logging.getLogger(__name__)


class AgentServer:
    """One agent served over gRPC, with health and reflection; an async context manager.

    Health reports NOT_SERVING until :meth:`start` finishes (or :meth:`set_serving` when
    ``serving=False`` was asked for) and again from the moment :meth:`stop` begins.
    """

    def __init__(
        self,
        agent: Agent,
        settings: ServerSettings | None = None,
        *,
        registry: Registry | Mapping[str, str] | None = None,
        bus: EventBus | None = None,
        resilience: ResiliencePolicy | bool = True,
        interceptors: Sequence[InboundFactory] = (),
        client_interceptors: Sequence[OutboundFactory] = (),
        grpc_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        grpc_client_interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        agent_settings: Mapping[str, Any] | None = None,
        state_dir: str | Path | None = None,
        metrics: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``agent`` as ``settings`` say (default: :class:`ServerSettings`'s, on a free loopback port).

        Args:
            agent: The agent whose actions are served.
            settings: Where and how, with which limits.
            registry: Where the agents it delegates to listen; it is added once bound.
            bus: The event bus of ``ctx.bus`` and of its announcements (:meth:`attach_bus` later).
            resilience: The policy of its own delegations (True: the defaults; False: none).
            interceptors: Its own inbound interceptors, each made from the next link of the chain.
            client_interceptors: Outbound interceptors for its own delegations.
            grpc_interceptors: Standard ``grpc.aio`` server interceptors (opentelemetry-instrumentation-grpc's, say).
            grpc_client_interceptors: Standard ``grpc.aio`` client interceptors for its delegations' channels.
            agent_settings: ``[agents.<name>.settings]``, checked against the agent's ``settings_schema``.
            state_dir: The agent's own folder for what it keeps (default: ``.kosmos/<name>`` in the working folder).
            metrics: Agent name -> ``/metrics`` URL, for the agents that serve one.

        Raises:
            ConfigError: ``agent_settings`` are not what the agent's ``settings_schema`` describes.
        """
        settings = settings or ServerSettings()
        self.agent = agent
        self.settings = settings
        self.bus: EventBus | None = None
        self.grace_seconds = settings.grace_seconds
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        #: The client of its handlers' delegations (``ctx.client``).
        self.coordinator = Coordinator(
            self.registry,
            source_agent=agent.name,
            payload_limit=settings.payload_limit,
            resilience=resilience,
            telemetry=settings.telemetry,
            interceptors=client_interceptors,
            grpc_interceptors=grpc_client_interceptors,
        )
        agent.hosted_by(
            AgentHost(
                settings=agent.checked_settings(agent_settings or {}),
                state_dir=Path(DEFAULT_STATE_DIR, agent.name).absolute() if state_dir is None else Path(state_dir),
                registry=self.registry,
                client=self.coordinator,
                metrics=dict(metrics or {}),
            )
        )
        self._agent_started = self._agent_ready = False
        self.health = health.aio.HealthServicer()
        quiet_hang_ups()
        # No maximum_concurrent_rpcs for gRPC: the admission below is the one limit (see admission.py).
        self._server = grpc.aio.server(
            interceptors=list(grpc_interceptors) or None, options=server_options(settings.payload_limit)
        )
        idempotency = settings.idempotency
        self.servicer = AgentServicer(
            agent,
            self.coordinator,
            payload_limit=settings.payload_limit,
            admission=_admission(settings),
            max_stream_seconds=settings.max_stream_seconds,
            stream_idle_seconds=settings.stream_idle_seconds,
            max_payload_values=settings.max_payload_values,
            max_ttl_ms=settings.max_ttl_ms,
            executed=None
            if idempotency is None
            else ExecutedCalls(idempotency.seconds, idempotency.entries, idempotency.bytes),
            telemetry=settings.telemetry,
            interceptors=interceptors,
            intercepted=bool(grpc_interceptors),
            max_hops=settings.max_hops,
        )
        refusals = BurstLog(log)  # one line a burst for what this server could not decode, on every service
        add_agent_service(self.servicer, self._server, refusals)
        if bus is not None:
            self.attach_bus(bus)
        add_health_service(self.health, self._server, refusals)
        add_reflection_service([AGENT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server, refusals)
        self.port = 0
        #: Set once a stop is asked for (a signal, :meth:`request_stop` or :meth:`stop`).
        self.stop_requested = asyncio.Event()
        self._stopping: asyncio.Future[None] | None = None
        #: Gives memory freed after a load back to the system (see :mod:`kosmos_grpc.memory`).
        self.free_memory = FreeMemory()

    @property
    def address(self) -> str:
        """``host:port`` the server is bound to (the real port when 0 was asked for)."""
        host = self.settings.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self, *, serving: bool = True) -> None:
        """Bind, start, run the agent's ``on_start`` and, unless told otherwise, its ``on_ready`` and
        report SERVING (else :meth:`set_serving` does, once the mesh's addresses and bus are known).

        Raises:
            OSError: the address cannot be listened on (in use, or not this machine's).
        """
        requested = self.settings.address
        try:
            self.port = self._server.add_insecure_port(requested)
        except RuntimeError:  # grpcio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            await self._server.stop(0)  # never started, but it holds resources until stopped
            raise OSError(
                f"agent {self.agent.name!r} cannot listen on {requested}: the address is in use or not available"
            )
        self.registry.set(self.agent.name, self.address)
        for service in ("", AGENT_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        self.free_memory.start()
        try:
            self.agent.host.state_dir.mkdir(parents=True, exist_ok=True)
            await self.agent.on_start()
        except BaseException:
            await self.free_memory.stop()
            await self._server.stop(0)
            raise
        self._agent_started = True
        if serving:
            await self.set_serving()

    async def set_serving(self) -> None:
        """Run the agent's ``on_ready`` (the first time), then report SERVING to health checks."""
        if not self._agent_ready:
            await self.agent.on_ready()
            self._agent_ready = True
        for service in ("", AGENT_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def attach_bus(self, bus: EventBus) -> None:
        """Give handlers ``ctx.bus`` and, unless turned off, announce delegations on it; closed with the server."""
        self.bus = self.servicer.bus = self.agent.host.bus = bus
        if self.settings.delegation_events:
            self.coordinator.announce_on(bus)

    def request_stop(self) -> None:
        """Ask :func:`serve_forever` to drain and stop (safe from a signal handler)."""
        self.stop_requested.set()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls for ``grace`` seconds, then close.

        Every caller waits for the same, single drain, however many call it and however often.
        """
        self.stop_requested.set()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(self.grace_seconds if grace is None else grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        await self.free_memory.stop()
        if self._agent_started:  # while its client and bus are open still, for its last words
            await self.agent.on_stop()
        self.servicer.close()
        await self.coordinator.close()
        if self.bus is not None:
            await self.bus.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _admission(settings: ServerSettings) -> Admission | None:
    """The server's admission: its priority queue when ``max_concurrency`` is set, else a plain cap
    of ``max_concurrent_rpcs`` calls at once (with the CRITICAL reserve); None when neither is."""
    most = settings.max_concurrent_rpcs
    streams: dict[str, Any] = {
        "streams_per_connection": settings.max_streams_per_connection,
        "max_open_streams": most,
        "max_stream_bytes": settings.max_open_stream_bytes,
        "streams_per_peer": settings.max_streams_per_peer,
    }
    if settings.max_concurrency is not None:
        return Admission(settings.max_concurrency, settings.queue_limit, **streams)
    if most is not None:
        return Admission(most, 0, **streams)
    return None


async def serve_forever(
    server: AgentServer,
    *,
    ready: Callable[[AgentServer], Awaitable[None]] | None = None,
) -> None:
    """Run ``server`` until SIGTERM or SIGINT, then drain within its grace period.

    ``ready`` runs once the server is bound, before it reports SERVING (``kosmos up`` uses it
    to learn the port and hand over the mesh's addresses); a signal cuts it, or the agent's
    ``on_start``, short.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:  # a signal cuts a slow on_start short too
        if not await until(server.stop_requested, server.start(serving=ready is None)):
            return
        if ready is not None:
            if not await until(server.stop_requested, ready(server)):
                return
            if not await until(server.stop_requested, server.set_serving()):
                return
        log.info("%s serving on %s", server.agent.name, server.address)
        await server.stop_requested.wait()
        log.info("%s draining (grace %.1f s)", server.agent.name, server.grace_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
