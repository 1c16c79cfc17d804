"""Counts events per subject, with each subject's rate over the last minute from a ring of per-second counts.

Memory is bounded whatever is published: at most ``max_subjects`` subjects are counted by name,
every other one under :data:`OTHER`, and each keeps one ring of ``window`` per-second counts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_SUBJECTS", "OTHER", "WINDOW_SECONDS", "EventRates"]

#: Where the events of subjects past the first ``max_subjects`` are counted (no subject is one word).
OTHER = "other"
MAX_SUBJECTS = 256
WINDOW_SECONDS = 60


class _Ring:
    """One subject's total, and its counts of the last ``window`` seconds (slot = second % window)."""

    __slots__ = ("counts", "seconds", "total")

    def __init__(self, window: int) -> None:
        self.total = 0
        self.counts = [0] * window
        # Which second each slot's count is of: a slot is reused, and cleared, a window later.
        self.seconds = [-1] * window

    def add(self, second: int) -> None:
        self.total += 1
        slot = second % len(self.counts)
        if self.seconds[slot] != second:
            self.seconds[slot], self.counts[slot] = second, 0
        self.counts[slot] += 1

    def recent(self, now: int) -> int:
        """Events in the ``window`` seconds up to and including second ``now``."""
        window = len(self.counts)
        return sum(c for c, s in zip(self.counts, self.seconds, strict=True) if 0 <= now - s < window)


class EventRates:
    """Events seen per subject: how many in all, and how many a second over the last ``window`` seconds.

    The rate divides by the window, or by the time since counting began when that is shorter
    (at least a second), so that a minute-old monitor does not under-report a busy first minute.
    """

    def __init__(
        self,
        *,
        max_subjects: int = MAX_SUBJECTS,
        window: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_subjects < 1 or window < 1:
            raise ValueError("max_subjects and window must be at least 1")
        self.max_subjects = max_subjects
        self.window = window
        self._clock = clock
        self._started = clock()
        self._rings: dict[str, _Ring] = {}
        self._named = 0  # subjects counted by name

    def record(self, subject: str) -> None:
        """Count one event on ``subject``."""
        ring = self._rings.get(subject)
        if ring is None:
            if self._named < self.max_subjects and subject != OTHER:
                self._named += 1
                ring = self._rings[subject] = _Ring(self.window)
            else:
                ring = self._rings.get(OTHER) or self._rings.setdefault(OTHER, _Ring(self.window))
        ring.add(int(self._clock()))

    def snapshot(self) -> dict[str, dict[str, int | float]]:
        """subject -> {"total": events in all, "per_second": events a second over the last window}."""
        now = self._clock()
        second = int(now)
        span = min(float(self.window), max(1.0, now - self._started))
        return {
            subject: {"total": ring.total, "per_second": round(ring.recent(second) / span, 4)}
            for subject, ring in sorted(self._rings.items())
        }
