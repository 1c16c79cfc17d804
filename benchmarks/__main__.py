"""``make bench``: every benchmark in turn, each in a process of its own, saying how long each took.

``--quick`` (or KOSMOS_BENCH_QUICK=1) runs the quick variant of each. Ctrl-C stops the one
running, which says so in one line, and nothing else runs (exit 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from .harness import INTERRUPTED, QUICK_ENV, ROOT, quick

#: ``python -m`` arguments of each benchmark, in the order they run.
BENCHMARKS = (
    ("benchmarks.core",),
    ("benchmarks.events",),
    ("benchmarks.subscribers",),
    ("benchmarks.resilience",),
    ("benchmarks.telemetry",),
    ("benchmarks.telemetry", "--export"),
    ("benchmarks.commands",),
    ("benchmarks.hostile",),
    ("benchmarks.retrieval",),
)


def took(seconds: float) -> str:
    """``2 min 05 s``, or ``41 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def run_one(args: tuple[str, ...], env: dict[str, str]) -> int:
    """Run one benchmark to its end; Ctrl-C reaches it (as the terminal's whole group, or from here)."""
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # it got the terminal's Ctrl-C too; if not, pass it on, then wait
            if process.poll() is None:
                process.send_signal(signal.SIGINT)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls, well under a minute")
    parser.parse_args()
    env = {**os.environ, QUICK_ENV: "1"} if quick() else dict(os.environ)
    # Servers stopped by Ctrl-C make gRPC's C core log each call it cancels; errors still show.
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    variant = "quick variant, " if quick() else ""
    started = time.monotonic()
    for args in BENCHMARKS:
        name = " ".join(args)
        print(f"== {name}", flush=True)
        began = time.monotonic()
        code = run_one(args, env)
        if code in (INTERRUPTED, -signal.SIGINT):
            return INTERRUPTED  # it said so itself, in one line
        if code != 0:
            print(f"make bench: {name} failed (exit {code}) after {took(time.monotonic() - began)}", file=sys.stderr)
            return 1
        print(f"== {name}: {took(time.monotonic() - began)}", flush=True)
    print(f"== make bench ({variant}every benchmark): {took(time.monotonic() - started)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # between two benchmarks
        print("make bench: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
