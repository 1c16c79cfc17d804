"""How a process gets the event bus its config names: NATS, or the embedded broker's client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kosmos_grpc.bus.client import GrpcEventBus
from kosmos_grpc.bus.nats_backend import NatsEventBus

if TYPE_CHECKING:
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.config import BusConfig

__all__ = ["open_bus"]


async def open_bus(config: BusConfig, source_agent: str, payload_limit: int, *, broker: str | None = None) -> EventBus:
    """The bus ``config`` names, connected: NATS when ``[bus] nats`` is set, else the embedded broker.

    ``broker`` overrides the embedded broker's address (``kosmos up`` hands out the real one).
    """
    if config.nats_url:
        nats = NatsEventBus(
            config.nats_url,
            source_agent=source_agent,
            payload_limit=payload_limit,
            durable=config.durable,
            max_deliveries=config.max_deliveries,
        )
        return await nats.connect()
    return GrpcEventBus(broker or config.broker_address(), source_agent=source_agent, payload_limit=payload_limit)
