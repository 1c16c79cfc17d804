"""The event loop every KOSMOS process runs on: uvloop where installed, else asyncio's own.

uvloop cuts the per-call CPU of a grpc.aio server by about a tenth on this machine (see
benchmarks/). ``KOSMOS_EVENT_LOOP=asyncio`` opts out.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["event_loop_name", "run"]

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
