"""One log line per burst of like events, not one per event: the first in full, then a count at most once an interval.

A mesh under a fault repeats itself: every call to a down agent falls back, every event to a slow
subscriber is dropped. One line each would bury the log (799 warnings for 799 fallbacks); none
would hide the fault. :class:`BurstLog` says the first event of each kind (its key) as it is,
then, while the events go on, one summary line at most every ``every`` seconds with how many
there were; once a kind has been quiet for ``every`` seconds, its next event is a new burst.
The metrics keep the exact counts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["SUMMARY_EVERY", "BurstLog"]

#: Seconds between two lines about one kind of event, by default.
SUMMARY_EVERY = 30.0

K = TypeVar("K", bound="Hashable")


class _Burst:
    __slots__ = ("count", "reported")

    def __init__(self, now: float) -> None:
        self.count = 0  # events since the last line
        self.reported = now


class BurstLog(Generic[K]):
    """Logs the first event of a burst as given, then ``summary(key, count, seconds)`` at most once
    every ``every`` seconds while events of that key go on.

    ``clock`` (monotonic seconds) is injectable so that tests need not wait. At most ``keys``
    kinds are remembered; past that the oldest is forgotten (its next event is said in full).
    """

    def __init__(
        self,
        logger: logging.Logger,
        summary: Callable[[K, int, float], str],
        *,
        every: float = SUMMARY_EVERY,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        keys: int = 256,
    ) -> None:
        self.logger = logger
        self.summary = summary
        self.every = every
        self.level = level
        self._clock = clock
        self._keys = keys
        self._bursts: dict[K, _Burst] = {}

    def event(self, key: K, message: str, *args: object) -> None:
        """One event of kind ``key``: ``message % args`` when it begins a burst, else counted."""
        now = self._clock()
        burst = self._bursts.get(key)
        if burst is not None and now - burst.reported >= self.every:
            if burst.count:  # the burst went on: say how much of it there was
                self.logger.log(self.level, "%s", self.summary(key, burst.count + 1, now - burst.reported))
                burst.count, burst.reported = 0, now
                return
            burst = None  # quiet for a whole interval: this one begins a new burst
        if burst is None:
            if key not in self._bursts and len(self._bursts) >= self._keys:
                del self._bursts[next(iter(self._bursts))]
            self._bursts[key] = _Burst(now)
            self.logger.log(self.level, message, *args)
            return
        burst.count += 1
