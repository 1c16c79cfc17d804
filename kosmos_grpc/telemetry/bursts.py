"""Warnings said once per burst: the first of a kind at once, then how many more, at most every ``every`` seconds.

A hostile or overloaded peer can make the same warning happen thousands of times a second;
a log that repeats it costs more than the event and hides everything else.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

__all__ = ["BurstLog"]

#: How many kinds of warning are tracked at once; the longest quiet is forgotten first.
MAX_KINDS = 256


class BurstLog:
    """Logs ``warn(kind, ...)`` once, then says how many more of ``kind`` came, at most every ``every`` seconds."""

    def __init__(
        self, logger: logging.Logger, *, every: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        # kind -> [when it was last said, how many since]
        self._kinds: dict[str, list[float]] = {}

    def warn(self, kind: str, message: str, *args: object) -> bool:
        """Warn ``message % args`` unless ``kind`` was said in the last ``every`` seconds; True when said."""
        now = self._clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.every:
            state[1] += 1
            return False
        more = 0 if state is None else int(state[1])
        if state is None and len(self._kinds) >= MAX_KINDS:
            del self._kinds[min(self._kinds, key=lambda k: self._kinds[k][0])]
        self._kinds[kind] = [now, 0]
        if more:
            self.logger.warning(message + " (and %d more like it in the last %.0f s)", *args, more, now - state[0])  # type: ignore[index]
        else:
            self.logger.warning(message, *args)
        return True
