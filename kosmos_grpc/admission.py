"""A server's admission control: at most N handlers at once, the rest waiting by priority in a
bounded queue, a reserve for CRITICAL calls, and a cap on the streams one connection holds.

It is the mesh's own, and the only limit on concurrent calls: gRPC's (``maximum_concurrent_rpcs``,
its pending-call backlog) would refuse or cancel calls before their priority is known, without a
RetryInfo.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from kosmos_grpc.envelope import Priority
from kosmos_grpc.errors import DeadlineExceeded, ResourceExhausted

__all__ = ["Admission"]


@dataclass(order=True, slots=True)
class _Waiter:
    """A waiting call; ordered best first. A settled ``slot`` marks one that left the queue."""

    neg_rank: int
    arrival: int
    slot: asyncio.Future[None] = field(compare=False)


class Admission:
    """Lets ``max_concurrency`` calls run; later ones wait, served by priority, then arrival.

    At most ``queue_limit`` calls wait. When one more arrives, the lowest-priority waiting call
    (the latest of those) is shed with RESOURCE_EXHAUSTED and a RetryInfo of ``retry_after``
    seconds, or the newcomer is when nothing waiting ranks below it: CRITICAL is shed last. A
    CRITICAL call finding every slot taken runs at once in one of ``critical_reserve`` more. A
    call whose deadline passes while it waits is answered DEADLINE_EXCEEDED and never run.

    Streams count per connection too, until gRPC is done with them: at most
    ``streams_per_connection`` from one, ``streams_per_peer`` from one host when set,
    ``max_open_streams`` in all, and their requests at most ``max_stream_bytes``.
    """

    def __init__(
        self,
        max_concurrency: int,
        queue_limit: int = 100,
        *,
        retry_after: float = 0.25,
        critical_reserve: int | None = None,
        streams_per_connection: int | None = None,
        max_open_streams: int | None = None,
        max_stream_bytes: int = 64 * 1024 * 1024,
        streams_per_peer: int | None = None,
    ) -> None:
        if max_concurrency < 1 or queue_limit < 0:
            raise ValueError("max_concurrency must be at least 1 and queue_limit not negative")
        self.max_concurrency = max_concurrency
        self.queue_limit = queue_limit
        self.retry_after = retry_after
        #: Slots beyond ``max_concurrency`` only CRITICAL calls may take (default: 1/16 of them, at least 1).
        self.critical_reserve = max(1, max_concurrency // 16) if critical_reserve is None else critical_reserve
        #: Streams one connection may hold at once (default: half the slots, at least 1).
        self.streams_per_connection = streams_per_connection or max(1, max_concurrency // 2)
        #: Streams open at once from every connection (default: 4 times the slots, at least 64).
        self.max_open_streams = max_open_streams or max(64, 4 * max_concurrency)
        self.open_streams = 0
        #: Streams one peer (a client host, whatever its connections) may hold (None: no cap of its
        #: own; on one machine every peer is 127.0.0.1, agents included).
        self.streams_per_peer = streams_per_peer
        self._peers: dict[str, int] = {}
        #: Bytes of requests the open streams may hold in all: gRPC keeps a stream's request until
        #: it is done with the call, which for a client that reads nothing is when it hangs up.
        #: (One stream is let through whatever its size.)
        self.max_stream_bytes = max_stream_bytes
        self.stream_bytes = 0
        self.running = 0
        self.waiting = 0
        self._heap: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._streams: dict[str, int] = {}

    async def acquire(self, priority: int, seconds_left: float | None, agent: str, action: str) -> None:
        """Wait up to ``seconds_left`` for a slot; :meth:`release` it when the call ends."""
        if self.running < self.max_concurrency and not self.waiting:
            self.running += 1
            return
        rank = priority or Priority.NORMAL
        if rank >= Priority.CRITICAL and self.running < self.max_concurrency + self.critical_reserve:
            self.running += 1
            return
        what = f"{agent}.{action}"
        if self.waiting >= self.queue_limit:
            self._shed(rank, what)
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, _Waiter(-rank, next(self._arrivals), slot))
        self.waiting += 1
        try:
            async with asyncio.timeout(seconds_left):
                await slot
        except BaseException as exc:
            # Cancelling this task (a timeout, the caller leaving) cancels the future it awaits.
            if not slot.done() or slot.cancelled():
                slot.cancel()
                self.waiting -= 1
                self._compact()
            elif slot.exception() is None:
                self.release()  # the slot was granted just as the wait ended: hand it on
            if isinstance(exc, TimeoutError):
                raise self.expired(what) from None
            raise

    @staticmethod
    def expired(what: str) -> DeadlineExceeded:
        """The error of a call whose deadline passed while it waited."""
        return DeadlineExceeded(
            f"{what} waited in the queue past its deadline and was never run", metadata={"field": "ttl_ms"}
        )

    def open_stream(self, connection: str | None, size: int, agent: str, action: str) -> None:
        """Count a stream of ``connection`` (gRPC's peer; None: counted in all only) whose request is
        ``size`` bytes, or refuse it when that connection holds its share, or the open streams all they may."""
        held = 0 if connection is None else self._streams.get(connection, 0)
        if held >= self.streams_per_connection:
            raise self._too_many(agent, action, f"this connection holds {held} streams", "max_streams_per_connection")
        if self.open_streams >= self.max_open_streams:
            raise self._too_many(agent, action, f"{self.open_streams} streams are open", "the server's open streams")
        if self.stream_bytes + size > self.max_stream_bytes and self.open_streams:
            raise self._too_many(
                agent, action, f"open streams hold {self.stream_bytes} bytes of requests", "max_open_stream_bytes"
            )
        if self.streams_per_peer is not None and connection is not None:
            peer = _host(connection)
            from_peer = self._peers.get(peer, 0)
            if from_peer >= self.streams_per_peer:
                raise self._too_many(agent, action, f"{peer} holds {from_peer} streams", "max_streams_per_peer")
            self._peers[peer] = from_peer + 1
        if connection is not None:
            self._streams[connection] = held + 1
        self.open_streams += 1
        self.stream_bytes += size

    def _too_many(self, agent: str, action: str, held: str, limit: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"{agent}.{action} was refused: {held} already, the most allowed ({limit}); "
            f"retry in {self.retry_after:.2f} s",
            metadata={"limit": limit},
            retry_after=self.retry_after,
        )

    def close_stream(self, connection: str | None, size: int) -> None:
        """A stream of ``connection`` whose request was ``size`` bytes has ended."""
        self.open_streams -= 1
        self.stream_bytes -= size
        if connection is None:
            return
        held = self._streams.pop(connection, 1) - 1
        if held > 0:
            self._streams[connection] = held
        if self.streams_per_peer is not None:
            peer = _host(connection)
            from_peer = self._peers.pop(peer, 1) - 1
            if from_peer > 0:
                self._peers[peer] = from_peer

    def release(self) -> None:
        """End a call: its slot goes to the best waiting call, if any (a slot of the CRITICAL
        reserve goes back to the reserve: it is never handed to a call that waits)."""
        if self.running > self.max_concurrency:
            self.running -= 1
            return
        heap = self._heap
        while heap:
            slot = heapq.heappop(heap).slot
            if not slot.done():
                self.waiting -= 1
                slot.set_result(None)
                return
        self.running -= 1

    def _shed(self, rank: int, what: str) -> None:
        """Make room for a call of ``rank``: shed the worst waiting call, or refuse this one."""
        worst = max((w for w in self._heap if not w.slot.done()), default=None)
        if worst is None or -worst.neg_rank >= rank:
            raise self._overloaded(what, "no waiting call ranks below it")
        worst.slot.set_exception(self._overloaded("a call", "a call of higher priority took its place"))
        self.waiting -= 1

    def _overloaded(self, what: str, why: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"{what} was shed: {self.running} calls running and {self.waiting} waiting, the most allowed, "
            f"and {why}; retry in {self.retry_after:.2f} s",
            retry_after=self.retry_after,
        )

    def _compact(self) -> None:
        # Left-behind entries are dropped lazily by release(); rebuild when they pile up.
        if len(self._heap) > 2 * self.queue_limit + 16:
            self._heap = [w for w in self._heap if not w.slot.done()]
            heapq.heapify(self._heap)


def _host(connection: str) -> str:
    """The host of gRPC's peer string: ``ipv4:127.0.0.1`` of ``ipv4:127.0.0.1:50432``."""
    return connection.rpartition(":")[0] or connection
