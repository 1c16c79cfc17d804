"""The seven agents and the event broker served in-process, on an event loop of their own in a thread.

A test (or a probe by hand) talks to them over plain synchronous gRPC, as a hostile client
would: :meth:`Seven.call` sends one envelope to one action and answers how it ended, and
:meth:`Seven.stream` reads a streamed action under a bound. The agents run as ``make run`` has
them: Athena on the repository's ``corpus/``, the seed's fallbacks, one bus each to the embedded
broker, and Prometheus reading a real ``/metrics`` page of this process for every agent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from agents.apollo import Apollo
from agents.athena import Athena
from agents.demeter import Demeter
from agents.dionysus import Dionysus
from agents.hermes import Hermes
from agents.prometheus import Prometheus
from agents.zeus import Zeus
from kosmos_grpc import AgentServer, Registry, ResiliencePolicy, ServerSettings, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bus import BrokerServer, GrpcEventBus
from kosmos_grpc.envelope import struct_to_dict
from kosmos_grpc.telemetry.metrics import MetricsEndpoint, serve_metrics

from .hostile_checks import HEALTH_SERVICE, Answer
from .hostile_inputs import field_one

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from kosmos_grpc import Agent

__all__ = ["CORPUS", "NAMES", "Reply", "Seven"]

_T = TypeVar("_T")

CORPUS = Path(__file__).resolve().parent.parent.parent / "corpus"
NAMES = ("zeus", "athena", "dionysus", "hermes", "demeter", "apollo", "prometheus")
_AGENT = "kosmos.v1.AgentService"
_SETTINGS: dict[str, dict[str, Any]] = {
    "athena": {"corpus": str(CORPUS), "refresh_seconds": 3600},
}


@dataclass
class Reply:
    """How a call ended, and what came back: the result (unary) or the chunks (a stream)."""

    answer: Answer
    data: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    def result(self) -> dict[str, Any]:
        """The result of a unary call that answered OK."""
        assert self.answer.code == grpc.StatusCode.OK, self.answer
        return struct_to_dict(agent_pb2.ExecuteResponse.FromString(self.data[0]).response.result)


class Seven:
    """The mesh of seven on free loopback ports; :meth:`start` then :meth:`stop` (or use it as a context)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.registry = Registry()
        self.servers: dict[str, AgentServer] = {}
        self.channels: dict[str, grpc.Channel] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="seven", daemon=True)
        self._broker: BrokerServer | None = None
        self._buses: list[GrpcEventBus] = []
        self._metrics: MetricsEndpoint | None = None

    def __enter__(self) -> Seven:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def run(self, work: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
        """Run ``work`` on the mesh's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._metrics = serve_metrics("127.0.0.1", 0)
        try:
            self.run(self._start())
        except BaseException:
            self.stop()
            raise
        for name, server in self.servers.items():
            self.channels[name] = grpc.insecure_channel(
                server.address,
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )

    async def _start(self) -> None:
        self._broker = BrokerServer(address="127.0.0.1:0", grace_seconds=1)
        await self._broker.start()
        assert self._metrics is not None
        urls = dict.fromkeys(NAMES, self._metrics.url)
        agents: list[Agent] = [Zeus(), Athena(), Dionysus(), Hermes(), Demeter(), Apollo(), Prometheus()]
        for agent in agents:
            bus = GrpcEventBus(self._broker.address, source_agent=agent.name)
            self._buses.append(bus)
            self.servers[agent.name] = AgentServer(
                agent,
                ServerSettings(grace_seconds=1),
                registry=self.registry,
                bus=bus,
                resilience=ResiliencePolicy(fallbacks={"athena": "dionysus", "apollo": "prometheus"}),
                agent_settings=_SETTINGS.get(agent.name, {}),
                state_dir=self.state / agent.name,
                metrics=urls if agent.name == "prometheus" else None,
            )
        # Bound first (Athena's index is built then), all at once, as `kosmos up` starts them.
        await asyncio.gather(*(server.start() for server in self.servers.values()))

    def stop(self) -> None:
        for channel in self.channels.values():
            channel.close()
        if self._loop.is_running():
            try:
                self.run(self._stop(), timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()  # else collected later, with a ResourceWarning in whichever test runs then
        if self._metrics is not None:
            self._metrics.close()

    async def _stop(self) -> None:
        await asyncio.gather(*(server.stop(0) for server in self.servers.values()), return_exceptions=True)
        for bus in self._buses:
            await bus.close()
        if self._broker is not None:
            await self._broker.stop(0)

    def serving(self, name: str, timeout: float = 5) -> bool:
        """Whether ``name``'s health says SERVING."""
        check = self.channels[name].unary_unary(
            f"/{HEALTH_SERVICE}/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def call(self, agent: str, action: str, payload: dict[str, Any], *, timeout: float = 10, ttl_ms: int = 0) -> Reply:
        """Execute ``agent.action`` with ``payload`` (any JSON, NaN included) under a gRPC deadline of ``timeout`` s."""
        message = new_message(action, payload, target_agent=agent, ttl_ms=ttl_ms)
        return self.raw(agent, message.SerializeToString(), timeout=timeout)

    def raw(self, agent: str, message: bytes, *, timeout: float = 10) -> Reply:
        """Execute the serialized envelope ``message`` on ``agent``."""
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channels[agent].unary_unary(f"/{_AGENT}/Execute")
        started = time.monotonic()
        try:
            data = method(field_one(message), timeout=timeout)
        except grpc.RpcError as error:
            return Reply(Answer.of(error), seconds=time.monotonic() - started)
        return Reply(Answer(grpc.StatusCode.OK), [data], time.monotonic() - started)

    def stream(
        self, agent: str, action: str, payload: dict[str, Any], *, timeout: float = 10, ttl_ms: int = 0, most: int = 200
    ) -> Reply:
        """Stream ``agent.action``, reading at most ``most`` chunks (then cancelling)."""
        message = new_message(action, payload, target_agent=agent, ttl_ms=ttl_ms)
        method: grpc.UnaryStreamMultiCallable[bytes, bytes] = self.channels[agent].unary_stream(f"/{_AGENT}/Stream")
        started = time.monotonic()
        responses = method(field_one(message.SerializeToString()), timeout=timeout)
        got: list[bytes] = []
        try:
            for chunk in responses:
                got.append(chunk)
                if len(got) >= most:
                    responses.cancel()
                    break
        except grpc.RpcError as error:
            return Reply(Answer.of(error), got, time.monotonic() - started)
        return Reply(Answer(grpc.StatusCode.OK), got, time.monotonic() - started)
