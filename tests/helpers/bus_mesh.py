"""A mesh for the monitoring tests: a real embedded broker, and agents served in-process each with its bus."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kosmos_grpc import Agent, AgentServer, Coordinator, KosmosError, Registry, ResiliencePolicy, ServerSettings
from kosmos_grpc.bus import BrokerServer, Event, GrpcEventBus, Subscription


class BusMesh:
    """Agents on loopback port 0 sharing one registry and one embedded broker; :meth:`close` stops them all."""

    def __init__(self, state: Path) -> None:
        self.registry = Registry()
        self.broker = BrokerServer(address="127.0.0.1:0")
        self.servers: dict[str, AgentServer] = {}
        self._state = state
        self._buses: list[GrpcEventBus] = []
        self._clients: list[Coordinator] = []

    async def start(self) -> None:
        await self.broker.start()

    async def serve(
        self,
        agent: Agent,
        *,
        address: str = "127.0.0.1:0",
        settings: dict[str, Any] | None = None,
        resilience: ResiliencePolicy | bool = True,
        metrics: dict[str, str] | None = None,
        grace: float = 1.0,
    ) -> AgentServer:
        """Serve ``agent`` with a bus of its own to the broker (closed with its server)."""
        server = AgentServer(
            agent,
            ServerSettings(address=address, grace_seconds=grace),
            registry=self.registry,
            bus=GrpcEventBus(self.broker.address, source_agent=agent.name),
            resilience=resilience,
            agent_settings=settings,
            state_dir=self._state / agent.name,
            metrics=metrics,
        )
        await server.start()
        self.servers[agent.name] = server
        return server

    async def stop(self, name: str) -> str:
        """Stop agent ``name``; the address it listened on."""
        server = self.servers.pop(name)
        await server.stop(0)
        return server.address

    def bus(self) -> GrpcEventBus:
        """A bus of the test's own (closed by :meth:`close`)."""
        bus = GrpcEventBus(self.broker.address, source_agent="test")
        self._buses.append(bus)
        return bus

    def client(self, **kwargs: Any) -> Coordinator:
        """A client of the mesh (closed by :meth:`close`)."""
        client = Coordinator(self.registry, **kwargs)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for server in list(self.servers.values()):
            await server.stop(0)
        for bus in self._buses:
            await bus.close()
        for client in self._clients:
            await client.close()
        await self.broker.stop(0)


async def next_event(subscription: Subscription[Event], match: dict[str, Any], seconds: float = 10) -> Event:
    """The next event on ``subscription`` whose payload has every item of ``match`` (within ``seconds``)."""
    async with asyncio.timeout(seconds):
        async for event in subscription:
            if all(event.payload.get(key) == value for key, value in match.items()):
                return event
    raise AssertionError(f"the subscription ended before an event matching {match}")


async def until(check: Any, seconds: float = 10, every: float = 0.05) -> Any:
    """Await ``check()`` until it returns something true (a KosmosError counts as not yet); that value."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                found = await check()
            except KosmosError:
                found = None
            if found:
                return found
            await asyncio.sleep(every)
