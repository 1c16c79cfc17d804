"""A NATS connection that fails fast when the server is not there, and reconnects quietly when it goes.

The first connect tries once (nats-py's first connect would otherwise go through every
reconnect attempt, a minute of them) and fails with one line naming the server, the cause and
what to do. Once connected, nats-py reconnects on its own, for as long as the server is away
(giving up would leave an agent serving with a dead bus, and restarting the agent would not bring
NATS back); :class:`ReconnectLog` turns its callbacks into one warning when the server is lost, at
most one summary every 30 s while it is away, and one line when it is back, never a line per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoServersError, StaleConnectionError, UnexpectedEOF

from kosmos_grpc.errors import DependencyUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RECONNECT_ATTEMPTS", "ReconnectLog", "connect_nats", "describe_failure", "nats_unreachable"]

log = logging.getLogger("kosmos_grpc.bus.nats_backend")

# Once connected, reconnect 0.25 s apart for as long as it takes (nats-py's -1: no limit). What waits
# on the connection meanwhile is bounded by its own timeout, and nats-py's pending buffer by its size.
RECONNECT_WAIT = 0.25
RECONNECT_ATTEMPTS = -1
#: How often, at most, a reconnect still under way is reported.
SUMMARY_EVERY = 30.0
_HINT = "start it with '.venv/bin/nats-server -js' or set [bus] nats"


def describe_failure(error: BaseException | None, timeout: float) -> str:
    """Why a connect failed, in a few words: ``connection refused``, ``no answer within 5 s``."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError) or error is None:
        return f"no answer within {timeout:g} s"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def nats_unreachable(url: str, cause: str) -> DependencyUnavailable:
    """The one-line error for a NATS server that cannot be reached."""
    return DependencyUnavailable(f"cannot reach NATS at {url} ({cause}): {_HINT}")


class ReconnectLog:
    """nats-py's connection callbacks, logged once and then summarised.

    While the first connect is under way (``connecting``) errors are only kept, for the caller's
    one line. ``clock`` (monotonic seconds) is injectable so that tests need not wait 30 s.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.monotonic, every: float = SUMMARY_EVERY) -> None:
        self.url = url
        self.connecting = True
        #: Set before a close of our own, so that its disconnect is not reported as a loss.
        self.closing = False
        self.first_error: BaseException | None = None
        self.attempts = 0
        self._clock = clock
        self._every = every
        self._lost_at: float | None = None
        self._reported_at = 0.0
        self._cause: BaseException | None = None

    @property
    def lost(self) -> bool:
        """Whether the server is away and reconnecting is under way."""
        return self._lost_at is not None

    async def on_error(self, error: Exception) -> None:
        """An error from nats-py: kept while connecting, counted while reconnecting, else logged."""
        if self.connecting:
            if self.first_error is None:
                self.first_error = error
            return
        if self._lost_at is None:
            if isinstance(error, UnexpectedEOF | StaleConnectionError | OSError):
                self._cause = error  # the connection is going: said with the loss, just after
            elif not self.closing:
                log.warning("NATS connection to %s: %s", self.url, error)
            return
        self.attempts += 1
        now = self._clock()
        if now - self._reported_at >= self._every:
            self._reported_at = now
            log.warning(
                "still reconnecting to NATS at %s (%d attempts, %.0f s; last: %s)",
                self.url,
                self.attempts,
                now - self._lost_at,
                describe_failure(error, 0),
            )

    async def on_disconnected(self) -> None:
        """The connection went: one warning (none for our own close)."""
        if self.connecting or self.closing or self._lost_at is not None:
            return
        self._lost_at = self._reported_at = self._clock()
        self.attempts = 0
        cause = f" ({describe_failure(self._cause, 0)})" if self._cause is not None else ""
        self._cause = None
        log.warning("lost NATS at %s%s; reconnecting", self.url, cause)

    async def on_reconnected(self) -> None:
        """Back: one line saying after how long."""
        if self._lost_at is None:
            return
        log.warning(
            "reconnected to NATS at %s after %d attempts (%.1f s)",
            self.url,
            self.attempts,
            self._clock() - self._lost_at,
        )
        self._lost_at = None

    async def on_closed(self) -> None:
        """Closed for good: said when it was not our own close (with no limit to the reconnect
        attempts nats-py does not give up, so this is a last resort that should not be seen)."""
        if self._lost_at is not None and not self.closing:
            log.error(
                "gave up on NATS at %s after %d attempts (%.0f s); its subscriptions have ended",
                self.url,
                self.attempts,
                self._clock() - self._lost_at,
            )


async def connect_nats(url: str, *, name: str, connect_timeout: float, report: ReconnectLog) -> Client:
    """A nats-py client connected to ``url`` within ``connect_timeout`` seconds, reconnecting from then on.

    Raises:
        DependencyUnavailable: the server cannot be reached (the message names it and the cause).
    """
    nc = Client()
    try:
        async with asyncio.timeout(connect_timeout):
            # No reconnects for the first connect, and one attempt more at most (nats-py drops a
            # server only once its attempts are *over* the maximum): a server that is not there
            # is one line within the timeout, not a minute of warnings.
            await nc.connect(
                url,
                name=name,
                connect_timeout=max(1, round(connect_timeout)),
                reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # nats-py takes seconds as float too
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=report.on_error,
                disconnected_cb=report.on_disconnected,
                reconnected_cb=report.on_reconnected,
                closed_cb=report.on_closed,
            )
    except (OSError, NatsError, TimeoutError) as exc:
        error = report.first_error if isinstance(exc, NoServersError | TimeoutError) else exc
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 1)
        raise nats_unreachable(url, describe_failure(error or exc, connect_timeout)) from None
    report.connecting = False
    # Connected: from now on nats-py reconnects on its own, without end, and resubscribes. nats-py
    # 2.x reads these options at each reconnect (tests/test_bus_outage.py holds it to that).
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
    return nc
