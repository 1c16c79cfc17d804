"""Memory freed after a load given back to the system, so a server's size returns to where it began.

glibc keeps what the process freed in its arenas (gRPC's threads have arenas of their own):
after 200 streams of 1 MiB requests an agent stayed at 700 MiB with every request long freed,
and ``malloc_trim`` brought it back to 67 MiB. A server checks every few seconds how much its
allocator holds free (``mallinfo2``) and trims past a threshold; elsewhere than glibc, nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging

__all__ = ["FreeMemory", "held_free", "trim"]

log = logging.getLogger(__name__)

#: How often a server looks, and from how many free bytes held it gives them back.
CHECK_SECONDS = 5.0
TRIM_ABOVE = 32 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc, or one older than 2.33
        return None
    return libc


_LIBC = _libc()


def held_free() -> int | None:
    """Bytes the allocator holds free, None where that cannot be known."""
    return None if _LIBC is None else int(_LIBC.mallinfo2().fordblks)


def trim() -> None:
    """Give the allocator's free memory back to the system (nothing where it cannot)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class FreeMemory:
    """A task that trims every ``every`` seconds when more than ``above`` bytes are held free."""

    def __init__(self, every: float = CHECK_SECONDS, above: int = TRIM_ABOVE) -> None:
        self.every = every
        self.above = above
        #: How often it gave memory back.
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin checking (where the allocator can say what it holds)."""
        if _LIBC is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kosmos-free-memory")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            free = held_free()
            if free is not None and free > self.above:
                trim()
                self.trims += 1
                log.debug("gave %d free bytes back to the system", free)

    async def stop(self) -> None:
        """Stop checking."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
