"""How a process gets the event bus its config names: NATS, or the embedded broker's client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kosmos_grpc.bus.client import GrpcEventBus
from kosmos_grpc.bus.nats_backend import CONNECT_TIMEOUT, NatsEventBus

if TYPE_CHECKING:
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.config import MeshConfig

__all__ = ["open_bus"]


async def open_bus(
    config: MeshConfig, source_agent: str, *, broker: str | None = None, connect_timeout: float = CONNECT_TIMEOUT
) -> EventBus:
    """The bus the config names, connected: NATS when ``[bus] nats`` is set, else the embedded broker.

    ``broker`` overrides the embedded broker's address (``kosmos up`` hands out the real one).
    ``connect_timeout`` (seconds) bounds the connect to NATS; the broker's client connects on first use.

    Raises:
        DependencyUnavailable: NATS cannot be reached (one line naming it and what to do).
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
        return await nats.connect(connect_timeout)
    return GrpcEventBus(broker or bus.broker_address(), source_agent=source_agent, payload_limit=payload_limit)
