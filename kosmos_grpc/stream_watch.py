"""A served stream's watchdog: it ends the stream at its deadline, or when one write has waited
``idle`` seconds for a client that does not read, whatever the stream is doing then.

HTTP/2 flow control holds a write while the client reads nothing, so a timer around the
handler's steps alone never fires for such a stream: this one cancels the serving task
itself, and the servicer tells that cancellation from the caller's by :meth:`StreamWatch.expired`.
One timer per stream, moved only when it fires, so a chunk costs a clock read and two
attribute writes.
"""

from __future__ import annotations

import asyncio

__all__ = ["StreamWatch"]


class StreamWatch:
    """Cancels the current task at ``deadline`` (the loop's clock) or once a write has waited ``idle`` seconds."""

    __slots__ = ("_handle", "_loop", "_task", "deadline", "fired", "idle", "writing_since")

    def __init__(self, deadline: float, idle: float | None) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a stream is served in a task"
        self._loop = loop
        self._task = task
        self.deadline = deadline
        self.idle = idle
        #: When the write under way began (the loop's clock), None between writes.
        self.writing_since: float | None = None
        #: What ended the stream: "deadline" or "idle", None while it runs.
        self.fired: str | None = None
        self._handle = loop.call_at(self._next(loop.time()), self._check)

    def _next(self, now: float) -> float:
        if self.idle is None:
            return self.deadline
        start = self.writing_since
        return min(self.deadline, (now if start is None else start) + self.idle)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self.deadline:
            self._fire("deadline")
        elif self.idle is not None and self.writing_since is not None and now - self.writing_since >= self.idle:
            self._fire("idle")
        else:
            self._handle = self._loop.call_at(self._next(now), self._check)

    def _fire(self, why: str) -> None:
        self.fired = why
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: whether this watch fired, taking its cancellation back; False as
        well when another cancellation is pending (the caller's), which then goes on."""
        return self.fired is not None and self._task.uncancel() == 0

    def close(self) -> None:
        """The stream has ended: no timer is left behind."""
        self._handle.cancel()
