"""The event loop every KOSMOS process runs on: uvloop where installed, else asyncio's own.

uvloop cuts the per-call CPU of a grpc.aio server by about a tenth on this machine (see
benchmarks/). ``KOSMOS_EVENT_LOOP=asyncio`` opts out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

__all__ = ["event_loop_name", "run", "until"]

T = TypeVar("T")


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` will use."""
    if os.environ.get("KOSMOS_EVENT_LOOP", "uvloop").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the chosen event loop."""
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def until(stop: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Run ``work`` unless ``stop`` is set first (then ``work`` is cancelled); whether it finished.

    ``work``'s own exception, if it raised one, propagates.
    """
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()
    return True
