"""A subscription: a bounded buffer of events, read by async iteration or by a handler task.

A publisher never waits for a subscriber: when the buffer is full (in events, or in bytes when
the subscription weighs its events) the newest event is dropped and counted; drops are logged
once per burst, whatever the number of subscriptions dropping. A handler's exception is logged and counted and never
ends the subscription; each subscription's handler runs in its own task, so a slow handler
holds up only its own subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from kosmos_grpc.bus.event import Event
from kosmos_grpc.bus.metrics import DROPPED, subject_label
from kosmos_grpc.quoting import echo
from kosmos_grpc.telemetry.bursts import BurstLog
from kosmos_grpc.telemetry.tracing import finish_span, start_consumer_span

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_CAPACITY", "Subscription"]

log = logging.getLogger(__name__)
_bursts = BurstLog(log)

DEFAULT_CAPACITY = 1024
T = TypeVar("T")
_CLOSED = object()  # put in the buffer to wake a waiting reader when the subscription ends


class Subscription(Generic[T]):
    """Events matching ``pattern`` (for one member of ``queue``, when set), in arrival order."""

    def __init__(
        self,
        pattern: str,
        queue: str | None = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_unsubscribe: Callable[[Subscription[T]], Awaitable[None]] | None = None,
        expired: Callable[[T], bool] | None = None,
        backend: str = "embedded",
        max_bytes: int | None = None,
        weigh: Callable[[T], int] | None = None,
    ) -> None:
        self.pattern = pattern
        self.queue = queue
        #: Events dropped because the buffer was full.
        self.dropped = 0
        #: Handler calls that raised.
        self.handler_errors = 0
        #: Why the subscription ended, when it was not unsubscribed (the broker refused it, say).
        self.error: str | None = None
        self._buffer: asyncio.Queue[T | object] = asyncio.Queue(capacity)
        self._closed = False
        self._on_unsubscribe = on_unsubscribe
        self._expired = expired
        self._handler_task: asyncio.Task[None] | None = None
        self.backend = backend
        self._dropped_metric = DROPPED.labels(backend, subject_label(pattern))
        #: With ``weigh``: the most bytes buffered (one event is always taken into an empty buffer).
        self.max_bytes = max_bytes
        self._weigh = weigh if max_bytes is not None else None
        #: What the buffered events weigh, when weighed.
        self.buffered_bytes = 0

    @property
    def full(self) -> bool:
        """Whether the buffer has no room left (in events, or bytes when weighed)."""
        return self._buffer.full() or (self.max_bytes is not None and self.buffered_bytes >= self.max_bytes)

    @property
    def empty(self) -> bool:
        """Whether nothing waits in the buffer."""
        return self._buffer.empty()

    def offer(self, event: T) -> bool:
        """Buffer ``event`` without waiting; False (and counted) when it had to be dropped."""
        if self._closed:
            return False
        weight = 0
        if self._weigh is not None:
            weight = self._weigh(event)
            if self.buffered_bytes and self.buffered_bytes + weight > self.max_bytes:  # type: ignore[operator]
                return self._drop()
        try:
            self._buffer.put_nowait(event)
        except asyncio.QueueFull:
            return self._drop()
        self.buffered_bytes += weight
        return True

    def _drop(self) -> bool:
        self.dropped += 1
        self._dropped_metric.inc()
        if self.dropped == 1:
            _bursts.warn("drops", "subscription %s is not keeping up: dropping events (counted)", echo(self.pattern))
        return False

    def _taken(self, event: T) -> None:
        if self._weigh is not None:
            self.buffered_bytes -= self._weigh(event)

    def discard(self) -> None:
        """End the subscription and let go of everything buffered at once (a reader that is cut off)."""
        self.close()
        buffer = self._buffer
        while not buffer.empty():
            buffer.get_nowait()
        self.buffered_bytes = 0
        with contextlib.suppress(asyncio.QueueFull):
            buffer.put_nowait(_CLOSED)

    def close(self) -> None:
        """End the subscription; iteration stops once the buffer is read."""
        if self._closed:
            return
        self._closed = True
        # Wakes a reader waiting on an empty buffer; a full buffer has no reader waiting, and
        # the reader stops when it finds the buffer empty after this.
        with contextlib.suppress(asyncio.QueueFull):
            self._buffer.put_nowait(_CLOSED)

    async def unsubscribe(self) -> None:
        """Stop receiving events and end iteration and the handler task."""
        if self._closed and self._on_unsubscribe is None:
            return
        self.close()
        callback, self._on_unsubscribe = self._on_unsubscribe, None
        if callback is not None:
            await callback(self)
        task, self._handler_task = self._handler_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while True:
            if self._closed and self._buffer.empty():
                raise StopAsyncIteration
            event = await self._buffer.get()
            if event is _CLOSED:
                raise StopAsyncIteration
            self._taken(event)  # type: ignore[arg-type]
            if self._expired is not None and self._expired(event):  # type: ignore[arg-type]
                continue  # its TTL ran out while it waited here: never delivered
            return event  # type: ignore[return-value]

    def take_ready(self, limit: int, budget: int = 0, weigh: Callable[[T], int] | None = None) -> list[T]:
        """Up to ``limit`` more events already buffered, without waiting (expired ones skipped).

        With ``weigh``, taking stops once the events taken weigh ``budget`` or more.
        """
        taken: list[T] = []
        buffer = self._buffer
        weight = 0
        while len(taken) < limit and not buffer.empty() and (weigh is None or weight < budget):
            event = buffer.get_nowait()
            if event is _CLOSED:
                with contextlib.suppress(asyncio.QueueFull):
                    buffer.put_nowait(_CLOSED)  # keep the wake-up for the next read
                break
            self._taken(event)  # type: ignore[arg-type]
            if self._expired is None or not self._expired(event):  # type: ignore[arg-type]
                taken.append(event)  # type: ignore[arg-type]
                if weigh is not None:
                    weight += weigh(event)  # type: ignore[arg-type]
        return taken

    def start_handler(self, handler: Callable[[T], Awaitable[None]]) -> None:
        """Call ``handler`` for each event in a task of this subscription's own."""

        async def run() -> None:
            async for event in self:
                # Each event's handling is a span continuing its publish (from the event's headers).
                traced = None
                if isinstance(event, Event):
                    traced = start_consumer_span(event.subject, event.headers, self.backend)
                try:
                    await handler(event)
                except Exception as exc:
                    self.handler_errors += 1
                    log.exception("handler of subscription %r failed (the subscription goes on)", self.pattern)
                    finish_span(traced, "ERROR", exc)
                except BaseException:
                    finish_span(traced, "CANCELLED")
                    raise
                else:
                    finish_span(traced, "OK")

        # A context of its own: a subscription made while serving a call must not make every
        # event's handling look like part of that call (its span, its log fields).
        self._handler_task = asyncio.create_task(
            run(), name=f"kosmos-subscription {self.pattern}", context=contextvars.Context()
        )
