"""One log line for a burst of like events (refused requests, say), not one an event."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BurstLog"]


class BurstLog:
    """Logs the first event of a burst at once, then at most one line a ``window`` seconds.

    Events inside the window are only counted; the next line logged says how many there were.
    Never a traceback: what is logged is a known condition, not a fault of the process.
    """

    __slots__ = ("_clock", "_held", "_level", "_logger", "_quiet_until", "_window")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        level: int = logging.WARNING,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._window = window
        self._clock = clock
        self._quiet_until = float("-inf")
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line was logged less than a window ago (then count it)."""
        now = self._clock()
        if now < self._quiet_until:
            self._held += 1
            return
        self._quiet_until = now + self._window
        held, self._held = self._held, 0
        if held:
            self._logger.log(self._level, f"{message} (and %d more in the %g s before)", *args, held, self._window)
        else:
            self._logger.log(self._level, message, *args)
