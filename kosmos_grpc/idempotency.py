"""The message_ids a server has executed, so that a retried call is answered without running twice."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from kosmos_grpc.errors import KosmosError

__all__ = ["ExecutedCalls", "Outcome"]

R = TypeVar("R")

#: How a call ended: its reply, or the error it answered with; (None, None) when it never finished.
Outcome = tuple[R | None, "KosmosError | None"]


class ExecutedCalls(Generic[R]):
    """message_id -> the outcome of its call, kept ``window`` seconds and for at most ``limit`` calls.

    The first call with a message_id claims it and later settles it; a duplicate gets the
    claim's future and awaits it, so one that arrives while the first is
    still running waits for it. A call that did not finish (cancelled, past its deadline, shed)
    is forgotten, so its retry runs.
    """

    def __init__(self, window: float = 300.0, limit: int = 10_000, *, clock: Callable[[], float] = time.monotonic):
        if window <= 0 or limit < 1:
            raise ValueError("the idempotency window and limit must be above zero")
        self.window = window
        self.limit = limit
        self._clock = clock
        self._calls: OrderedDict[str, tuple[float, asyncio.Future[Outcome[R]]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def claim(self, message_id: str) -> tuple[bool, asyncio.Future[Outcome[R]]]:
        """Whether ``message_id`` is new (and now claimed), and the future of its first call's outcome."""
        calls = self._calls
        now = self._clock()
        found = calls.get(message_id)
        if found is not None:
            if found[0] > now:
                return False, found[1]
            del calls[message_id]
        outcome: asyncio.Future[Outcome[R]] = asyncio.get_running_loop().create_future()
        calls[message_id] = (now + self.window, outcome)
        # Oldest first: drop the expired ones, then any over the limit.
        while calls:
            expires, _ = next(iter(calls.values()))
            if expires > now and len(calls) <= self.limit:
                break
            calls.popitem(last=False)
        return True, outcome

    def settle(
        self, message_id: str, outcome: asyncio.Future[Outcome[R]], reply: R | None, error: KosmosError | None
    ) -> None:
        """Record how a claimed call ended; ``reply`` and ``error`` both None forget it, so a retry runs."""
        if reply is None and error is None:
            found = self._calls.get(message_id)
            if found is not None and found[1] is outcome:
                del self._calls[message_id]
        if not outcome.done():
            outcome.set_result((reply, error))
