"""The broker lost and found again: how a subscription waits for it, and what the log says meanwhile.

A subscription whose broker goes away (a restart by ``kosmos up``, say) subscribes again with
capped exponential backoff and jitter; :class:`Outage` says so once when the broker is lost, at
most once every 30 s while it stays away, and once when every subscription is back, never a line
per attempt. The embedded broker is at-most-once: what is published while a subscription is away
is not delivered to it.
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
    """The subscriptions of one bus that have lost the broker at ``address``, told of in a few lines.

    ``clock`` (monotonic seconds) is injectable so that tests need not wait 30 s.
    """

    def __init__(
        self, address: str, *, clock: Callable[[], float] = time.monotonic, every: float = SUMMARY_EVERY
    ) -> None:
        self.address = address
        #: Failed attempts to subscribe again since the broker was lost.
        self.attempts = 0
        self._clock = clock
        self._every = every
        self._away: set[object] = set()
        self._lost_at = 0.0
        self._reported_at = 0.0

    @property
    def lost(self) -> bool:
        """Whether some subscription is still away."""
        return bool(self._away)

    def lose(self, subscription: object, cause: str) -> None:
        """``subscription`` lost the broker: a warning when it is the first to."""
        if not self._away:
            self._lost_at = self._reported_at = self._clock()
            self.attempts = 0
            log.warning(
                "lost the event broker at %s (%s); subscribing again (events published meanwhile are not delivered)",
                self.address,
                cause,
            )
        self._away.add(subscription)

    def failed(self, cause: str) -> None:
        """An attempt to subscribe again failed: counted, and summarised when a summary is due."""
        self.attempts += 1
        now = self._clock()
        if now - self._reported_at >= self._every:
            self._reported_at = now
            log.warning(
                "still subscribing again to the event broker at %s (%d attempts, %.0f s; last: %s)",
                self.address,
                self.attempts,
                now - self._lost_at,
                cause,
            )

    def found(self, subscription: object) -> None:
        """``subscription`` is in place again: one line once every subscription is."""
        if subscription not in self._away:
            return
        self._away.discard(subscription)
        if not self._away:
            log.warning(
                "subscribed again to the event broker at %s after %d failed attempts (%.1f s)",
                self.address,
                self.attempts,
                self._clock() - self._lost_at,
            )

    def forget(self, subscription: object) -> None:
        """``subscription`` was closed by its owner while away: no longer waited for, said nothing."""
        self._away.discard(subscription)
