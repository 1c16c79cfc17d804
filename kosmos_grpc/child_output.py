"""A child's output under ``kosmos up``: passed through line by line, its last lines kept, never stuck.

Whatever a child writes (a line of megabytes, output with no newline at all) is read in bounded
chunks and passed on at once, so its pipe never fills and it never blocks in ``print()``; only
the first bytes of a line are held, for the report of its exit. A closed stdout of ``kosmos up``
itself stops the copying, never the draining.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import io
import os
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CHUNK_BYTES", "LINE_BYTES", "Output", "OutputLines", "OutputTail"]

#: The last lines of a child's output kept to report with its exit: at most this many, and bytes;
#: a longer line is kept cut to LINE_BYTES.
OUTPUT_LINES = 10
OUTPUT_BYTES = 4096
LINE_BYTES = 1024
#: How much of a child's pipe is read at once: any output, with or without newlines, is drained.
CHUNK_BYTES = 65536
#: What ends a line kept cut.
CUT = b" [cut]"


class Output:
    """Where a child's output (and the supervisor's own lines) go: a stream that may be closed.

    A reader that went away (``kosmos up | head -1``) must stop nothing: writes stop, quietly, and
    the stream's descriptor is pointed at /dev/null so Python's last flush does not fail either.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed = False

    def write(self, text: str) -> int:
        """Write and flush ``text``; nothing once the stream is found closed."""
        if not self.closed:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                self._close()
        return len(text)

    def flush(self) -> None:
        """Each write flushes already (``print(..., flush=True)`` calls this)."""

    def _close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


class OutputTail:
    """The last lines a child wrote, bounded in lines and in bytes."""

    def __init__(self, lines: int = OUTPUT_LINES, size: int = OUTPUT_BYTES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._size = size

    def add(self, line: str) -> None:
        """Keep ``line`` (cut to the byte bounds), forgetting the oldest lines past the bounds."""
        kept = line.rstrip("\n").encode()
        if len(kept) > min(self._size, LINE_BYTES):
            kept = kept[: min(self._size, LINE_BYTES) - len(CUT)] + CUT
        self._lines.append(kept.decode(errors="ignore"))
        while sum(len(kept.encode()) for kept in self._lines) > self._size:
            self._lines.popleft()

    def lines(self) -> list[str]:
        """The lines kept, oldest first."""
        return list(self._lines)


class OutputLines:
    """Splits a child's output into lines as it comes: passed through at once, and kept for its tail.

    Only the first :data:`LINE_BYTES` of a line are held; the rest of a longer one (or of output
    with no newline at all) goes straight through.
    """

    def __init__(self, tail: OutputTail, out: Output, catch: Callable[[str], bool] | None = None) -> None:
        """``catch`` may take a whole short line for itself (it returns True): it is not passed on."""
        self._tail, self._out, self._catch = tail, out, catch
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._head = bytearray()  # the start of the current line, up to LINE_BYTES
        self._long = False  # the current line is longer: what is held was passed through already

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes the child wrote."""
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            stop = len(chunk) if newline < 0 else newline + 1
            self._piece(chunk[start:stop], complete=newline >= 0)
            start = stop

    def end(self) -> None:
        """The pipe closed: a last line without a newline is kept as it is."""
        if self._head or self._long:
            self._line_done()

    def _piece(self, piece: bytes, *, complete: bool) -> None:
        if self._long:
            self._out.write(self._decode(piece))
        else:
            self._head += piece
            if not complete and len(self._head) > LINE_BYTES:
                self._long = True
                self._out.write(self._decode(bytes(self._head)))
                del self._head[LINE_BYTES:]
        if complete:
            self._line_done()

    def _line_done(self) -> None:
        line = self._head.decode(errors="replace")
        if self._long:
            self._tail.add(line + CUT.decode())  # held cut: add() marks it so
        elif self._catch is not None and self._catch(line):
            pass
        else:
            self._tail.add(line)
            self._out.write(self._decode(bytes(self._head)))
        self._head.clear()
        self._long = False
