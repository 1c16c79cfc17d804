"""What every event bus backend offers: the EventBus protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from kosmos_grpc.bus.event import Event
    from kosmos_grpc.bus.subscription import Subscription

__all__ = ["EventBus"]


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
