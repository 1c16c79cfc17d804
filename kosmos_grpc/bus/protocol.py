"""What every event bus backend offers, and how a process gets the one its config names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from kosmos_grpc.bus.event import Event
    from kosmos_grpc.bus.subscription import Subscription
    from kosmos_grpc.config import MeshConfig

__all__ = ["EventBus", "open_bus"]


class EventBus(Protocol):
    """Publish/subscribe on the kosmos subjects: the embedded broker's client, or NATS."""

    async def publish(
        self,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        ttl_ms: int = ...,
        correlation_id: str | None = None,
        message_id: str | None = None,
        acknowledge: bool = False,
        timeout_ms: float = ...,
    ) -> str:
        """Publish an event; its message_id."""
        ...

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]] | None = None,
        *,
        queue: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> Subscription[Event]:
        """Subscribe to a pattern."""
        ...

    async def flush(self) -> None:
        """Wait until everything published so far has left this process."""
        ...

    async def close(self) -> None:
        """Send what is pending, end every subscription, disconnect."""
        ...


async def open_bus(config: MeshConfig, source_agent: str, *, broker: str | None = None) -> EventBus:
    """The bus the config names, connected: NATS when ``[bus] nats`` is set, else the embedded broker.

    ``broker`` overrides the embedded broker's address (``kosmos up`` hands out the real one).
    """
    from kosmos_grpc.bus.client import GrpcEventBus
    from kosmos_grpc.bus.nats_backend import NatsEventBus

    if config.nats_url:
        nats = NatsEventBus(
            config.nats_url,
            source_agent=source_agent,
            payload_limit=config.payload_limit,
            durable=config.durable,
            max_deliveries=config.max_deliveries,
        )
        return await nats.connect()
    return GrpcEventBus(broker or config.bus(), source_agent=source_agent, payload_limit=config.payload_limit)
