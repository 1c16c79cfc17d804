"""The broker lost and found again: how a bus waits for it, and what the log says meanwhile.

A subscription whose broker goes away (a restart by ``kosmos up``, say) subscribes again with
capped exponential backoff and jitter, and the publish stream reopens; :class:`Outage` says so
once when the broker is lost, at most once every 30 s while it stays away, and once when the
subscriptions and the publish stream are all back, never a line per attempt. The embedded broker
is at-most-once: what is published while the broker is away is not delivered.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tenacity.wait import wait_exponential_jitter

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RESUBSCRIBE_WAIT", "SUMMARY_EVERY", "Outage"]

log = logging.getLogger("kosmos_grpc.bus.client")

#: The wait before each new attempt: 0.1 s doubling to a cap of 2 s (the gRPC channel's own
#: reconnect backoff stops there too, so waiting longer would only delay a broker that is back).
RESUBSCRIBE_WAIT = wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2)
#: How often, at most, an outage still under way is reported.
SUMMARY_EVERY = 30.0


class Outage:
    """The parts of one bus (its subscriptions, its publish stream) that have lost the broker at ``address``.

    ``clock`` (monotonic seconds) is injectable so that tests need not wait 30 s.
    """

    def __init__(
        self, address: str, *, clock: Callable[[], float] = time.monotonic, every: float = SUMMARY_EVERY
    ) -> None:
        self.address = address
        #: Failed attempts to reach the broker again since it was lost.
        self.attempts = 0
        #: Events published since it was lost that never reached it.
        self.lost_events = 0
        self._clock = clock
        self._every = every
        self._away: set[object] = set()
        self._lost_at = 0.0
        self._reported_at = 0.0

    @property
    def lost(self) -> bool:
        """Whether some part is still away."""
        return bool(self._away)

    def lose(self, part: object, cause: str, events: int = 0) -> None:
        """``part`` lost the broker (and ``events`` with it): a warning when it is the first to,
        a failed attempt when it had been lost already (a publish stream that broke again)."""
        if not self._away:
            self._lost_at = self._reported_at = self._clock()
            self.attempts = self.lost_events = 0
            log.warning(
                "lost the event broker at %s (%s); trying again (events published meanwhile are not delivered)",
                self.address,
                cause,
            )
        elif part in self._away:
            self.failed(cause)
        self._away.add(part)
        self.lost_events += events

    def failed(self, cause: str) -> None:
        """An attempt to reach the broker again failed: counted, and summarised when a summary is due."""
        self.attempts += 1
        now = self._clock()
        if now - self._reported_at >= self._every:
            self._reported_at = now
            log.warning(
                "still trying the event broker at %s (%d failed attempts, %.0f s; last: %s)",
                self.address,
                self.attempts,
                now - self._lost_at,
                cause,
            )

    def found(self, part: object) -> None:
        """``part`` reached the broker again: one line once every part has."""
        if part not in self._away:
            return
        self._away.discard(part)
        if not self._away:
            lost = f"; {self.lost_events} events published meanwhile were lost" if self.lost_events else ""
            log.warning(
                "the event broker at %s is back after %d failed attempts (%.1f s)%s",
                self.address,
                self.attempts,
                self._clock() - self._lost_at,
                lost,
            )

    def is_away(self, part: object) -> bool:
        """Whether ``part`` lost the broker and has not reached it again."""
        return part in self._away

    def forget(self, part: object) -> None:
        """``part`` was closed by its owner while away: no longer waited for, said nothing."""
        self._away.discard(part)
