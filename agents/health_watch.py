"""Follows one agent's ``grpc.health.v1.Health/Watch`` stream, reconnecting with bounded backoff.

The stream is held only while the agent reports SERVING. On any other status (a server that is
draining reports NOT_SERVING first) the watcher hangs up and looks again after a backoff: a
stream left open would hold the agent's drain for its whole grace period. An agent that cannot
be reached, or does not answer within ``connect_timeout``, reads as :data:`UNREACHABLE`.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["SERVING", "UNKNOWN", "UNREACHABLE", "Backoff", "HealthWatch", "status_name"]

SERVING = "SERVING"
#: What an agent reads as before its health is first known.
UNKNOWN = "UNKNOWN"
#: The health of an agent whose server cannot be reached (not one of gRPC's own statuses).
UNREACHABLE = "UNREACHABLE"

# A health reply is a few bytes: nothing bigger is taken from a peer.
_OPTIONS = [("grpc.max_receive_message_length", 4096), ("grpc.max_send_message_length", 4096)]


def status_name(status: int) -> str:
    """The name of a ``HealthCheckResponse.ServingStatus`` value (UNKNOWN for one gRPC does not know)."""
    try:
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except ValueError:
        return UNKNOWN
    return name


class Backoff:
    """Exponential delays from ``initial`` doubling up to ``maximum``, with up to 10 % of jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.failures = 0

    def reset(self) -> None:
        """Start again from ``initial`` (the agent answered)."""
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, and count one more failure."""
        # The exponent is capped, so a watcher failing for days computes no huge power.
        delay = min(self.maximum, self.initial * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay * (1 + random.random() / 10)  # jitter spreads reconnects


class HealthWatch:
    """One agent's health as its Watch stream tells it: :attr:`status` and since when."""

    def __init__(
        self,
        name: str,
        address: Callable[[], str | None],
        on_change: Callable[[str, str, str | None, float], Awaitable[None]],
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        name: The agent's name.
        address: Where it listens now (read before every attempt; None: it left the mesh, stop).
        on_change: Awaited with (agent, status, previous, since) whenever its health changes.
        backoff_initial, backoff_max: The bounds of the delay between attempts, in seconds.
        connect_timeout: How long an attempt may wait for the stream's first reply.
        clock: Wall-clock seconds, for ``since``.
        """
        self.name = name
        self._address = address
        self._on_change = on_change
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._connect_timeout = connect_timeout
        self._clock = clock
        #: The last status seen (None until the first attempt ends).
        self.status: str | None = None
        #: When :attr:`status` was first seen, wall-clock seconds.
        self.since: float | None = None
        self._closed = False

    def close(self) -> None:
        """Have :meth:`run` end at its next turn (a cancellation a library swallows cannot keep it going)."""
        self._closed = True

    async def _see(self, status: str) -> None:
        if status == self.status:
            return
        previous, self.status, self.since = self.status, status, self._clock()
        await self._on_change(self.name, status, previous, self.since)

    async def run(self) -> None:
        """Follow the agent until cancelled or closed, or until it leaves the registry."""
        while not self._closed and (address := self._address()) is not None:
            if await self._follow(address):
                self._backoff.reset()  # it was SERVING: look again soon
            await asyncio.sleep(self._backoff.next_delay())

    async def _follow(self, address: str) -> bool:
        """Hold one Watch stream to ``address`` while it says SERVING; whether it said so."""
        served = False
        async with grpc.aio.insecure_channel(address, options=_OPTIONS) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reply = await call.read()
                while reply is not grpc.aio.EOF:
                    status = status_name(reply.status)
                    await self._see(status)
                    if status != SERVING:
                        return served
                    served = True
                    reply = await call.read()  # no timeout: a healthy agent says nothing more
            except (grpc.aio.AioRpcError, TimeoutError):
                pass
            finally:
                call.cancel()
        if not served:  # refused, timed out, or ended before saying anything
            await self._see(UNREACHABLE)
        return served
