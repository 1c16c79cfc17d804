"""The ``kosmos`` command's entry point: quiet gRPC, Ctrl-C without a traceback, then the command.

This module imports only ``os``, ``sys`` and ``typing`` before :func:`main` runs,
so a Ctrl-C at any moment, even while the command's modules load, ends with status 130 and no
traceback. The grammar is in kosmos_grpc.commandline, what each command does in kosmos_grpc.commands.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "main"]

#: 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kosmos`` command (and of ``python -m kosmos_grpc.cli``, which ``kosmos up`` runs)."""
    # Before grpc is imported, which reads it once: gRPC's C core writes its own lines to stderr
    # (``E1203 ... add_port.cc:83] Failed to add port`` on a port clash) at every level above NONE,
    # ERROR included. A user who sets GRPC_VERBOSITY gets them; the agents `kosmos up` starts inherit it.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    # Before numpy is imported (by an agent that embeds): a BLAS pool of two threads on two cores,
    # under the load of seven agents starting at once, made one MiniLM query 20 times slower than
    # one thread does. The agents `kosmos up` starts inherit it; a user who sets it keeps theirs.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from kosmos_grpc.commandline import parse

        args = parse(argv)
        from kosmos_grpc.commands import run

        return run(args)
    except KeyboardInterrupt:
        # Ctrl-C is the user's own action: nothing to report. asyncio.run has already cancelled the
        # command's task and closed its channels; a second Ctrl-C while we exit is ignored.
        _ignore_interrupts()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`kosmos stream ... | head -1`): stop quietly, as `cat` does, and keep
        # Python's final flush of stdout from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
