"""The message_ids a server has executed, so that a retried call is answered without running twice."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Generic, TypeVar

from kosmos_grpc.errors import DuplicateMessage

if TYPE_CHECKING:
    from collections.abc import Callable

    from kosmos_grpc.errors import KosmosError

__all__ = ["ExecutedCall", "ExecutedCalls"]

R = TypeVar("R")

# Expired entries are answered as new when looked up; sweeping them out is amortized over this many claims.
_SWEEP_EVERY = 1024


class ExecutedCall(Generic[R]):
    """One claimed message_id: how its call ended, once it has (``outcome``), and who waits for that."""

    __slots__ = ("_settled", "expires", "outcome", "size")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.size = 0  # bytes of the reply kept
        #: (reply, None) or (None, error) once the call ended; (None, None) if it never finished.
        self.outcome: tuple[R | None, KosmosError | None] | None = None
        self._settled: asyncio.Future[None] | None = None  # made only when a duplicate has to wait

    async def wait(self) -> tuple[R | None, KosmosError | None]:
        """The outcome, once the first call with this message_id has one."""
        if self.outcome is None:
            if self._settled is None:
                self._settled = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._settled)
        assert self.outcome is not None
        return self.outcome

    def _settle(self, reply: R | None, error: KosmosError | None) -> None:
        self.outcome = (reply, error)
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)


class ExecutedCalls(Generic[R]):
    """message_id -> the outcome of its call, kept ``window`` seconds, for at most ``limit`` calls
    whose replies add up to at most ``max_bytes`` (the oldest go first).

    The first call with a message_id claims it and later settles it; a duplicate gets the same
    :class:`ExecutedCall` and waits on it, so one that arrives while the first is still running
    waits for it. A call that did not finish (cancelled, past its deadline, shed) is forgotten,
    so its retry runs.
    """

    def __init__(
        self,
        window: float = 300.0,
        limit: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if window <= 0 or limit < 1 or max_bytes < 1:
            raise ValueError("the idempotency window, limit and max_bytes must be above zero")
        self.window = window
        self.limit = limit
        self.max_bytes = max_bytes
        #: Bytes of the replies kept now.
        self.bytes = 0
        self._clock = clock
        # Insertion order is expiry order, as every entry lives for the same window.
        self._calls: dict[str, ExecutedCall[R]] = {}
        # The entries that keep a reply, oldest first: only they are let go to stay within max_bytes
        # (a call still running, or a stream, holds no bytes and must not be forgotten for them).
        self._sized: dict[str, ExecutedCall[R]] = {}
        self._claims = 0

    def __len__(self) -> int:
        return len(self._calls)

    def claim(self, message_id: str) -> tuple[bool, ExecutedCall[R]]:
        """Whether ``message_id`` is new (and now claimed by the caller), and its entry."""
        calls = self._calls
        now = self._clock()
        found = calls.get(message_id)
        if found is not None:
            if found.expires > now:
                return False, found
            self._forget(message_id)
        entry: ExecutedCall[R] = ExecutedCall(now + self.window)
        calls[message_id] = entry
        if len(calls) > self.limit:
            self._forget(next(iter(calls)))  # the oldest
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._sweep(now)
        return True, entry

    def settle(
        self, message_id: str, entry: ExecutedCall[R], reply: R | None, error: KosmosError | None, size: int = 0
    ) -> None:
        """Record how a claimed call ended (``size``: the reply's bytes); ``reply`` and ``error``
        both None forget it, so a retry runs."""
        calls = self._calls
        if calls.get(message_id) is entry:
            if reply is None and error is None:
                self._forget(message_id)
            elif size > self.max_bytes:
                # Kept, or the call would run again on a retry; its reply cannot be kept.
                reply, error = (
                    None,
                    DuplicateMessage(
                        f"the call under message_id {message_id!r} ran, but its reply ({size} bytes) was too "
                        "large to keep for a retry; send it again under a new message_id",
                        metadata={"field": "message_id"},
                    ),
                )
            elif size:
                entry.size = size
                self.bytes += size
                sized = self._sized
                sized[message_id] = entry
                while self.bytes > self.max_bytes:
                    self._forget(next(iter(sized)))  # the oldest reply, this one last
        entry._settle(reply, error)

    def _forget(self, message_id: str) -> None:
        entry = self._calls.pop(message_id)
        if entry.size:
            self.bytes -= entry.size
            del self._sized[message_id]

    def _sweep(self, now: float) -> None:
        calls = self._calls
        expired = []
        for message_id, entry in calls.items():
            if entry.expires > now:
                break
            expired.append(message_id)
        for message_id in expired:
            self._forget(message_id)
