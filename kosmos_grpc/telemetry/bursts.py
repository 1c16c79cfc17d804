"""One log line per burst: the first of many like events is said at once, the rest counted.

A hostile client can make a server meet the same trouble thousands of times a second (a
subscriber that stops reading, a request that does not decode); a line for each would flood
the log and cost more than the trouble. :class:`BurstLog` says the first, keeps quiet for a
window, and says how many it kept quiet about with the next line after the window.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BURST_WINDOW", "BurstLog"]

#: Seconds after a line during which like events are only counted.
BURST_WINDOW = 10.0


class BurstLog:
    """Log like events at most once per ``window`` seconds, saying how many were not logged."""

    __slots__ = ("_clock", "_level", "_logger", "_said_at", "_unsaid", "window")

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        window: float = BURST_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self.window = window
        self._clock = clock
        self._said_at: float | None = None
        self._unsaid = 0

    def __call__(self, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line was logged within the window; whether it was logged."""
        now = self._clock()
        if self._said_at is not None and now - self._said_at < self.window:
            self._unsaid += 1
            return False
        unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
        if unsaid:
            message += " (and %d more like it since the last such line)"
            args = (*args, unsaid)
        self._logger.log(self._level, message, *args)
        return True
