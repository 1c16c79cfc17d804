"""How a process gets the event bus its config names: NATS, or the embedded broker's client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kosmos_grpc.bus.client import GrpcEventBus
from kosmos_grpc.bus.nats_backend import NatsEventBus

if TYPE_CHECKING:
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.config import MeshConfig

__all__ = ["open_bus"]


async def open_bus(config: MeshConfig, source_agent: str, *, broker: str | None = None) -> EventBus:
    """The bus the config names, connected: NATS when ``[bus] nats`` is set, else the embedded broker.

    ``broker`` overrides the embedded broker's address (``kosmos up`` hands out the real one).
    """
    bus, payload_limit = config.bus, config.limits.payload_limit
    if bus.nats_url:
        nats = NatsEventBus(
            bus.nats_url,
            source_agent=source_agent,
            payload_limit=payload_limit,
            durable=bus.durable,
            max_deliveries=bus.max_deliveries,
        )
        return await nats.connect()
    return GrpcEventBus(broker or bus.broker_address(), source_agent=source_agent, payload_limit=payload_limit)
