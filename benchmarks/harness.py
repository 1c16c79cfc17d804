"""Timing and process plumbing for the benchmarks: samples and paired ratios, CPU pinning, server processes.

A server process is started as ``python -m MODULE ARGS [--cpu N]``, prints its address on
stdout once listening, and serves until stdin closes or SIGTERM (``wait_for_stop``).

Every benchmark has a quick variant (``--quick``, or ``KOSMOS_BENCH_QUICK=1`` as ``make bench
QUICK=1`` sets): fewer rounds and calls, to see that it runs and roughly where it lands. A
benchmark's entry point goes through :func:`main`, so that Ctrl-C ends it with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
Call = Callable[[], Awaitable[object]]
#: Set (to anything but 0) for the quick variant of every benchmark.
QUICK_ENV = "KOSMOS_BENCH_QUICK"
#: The exit status of a benchmark stopped by Ctrl-C.
INTERRUPTED = 130
#: The PID of each server process :func:`processes` started, by the address it printed.
PIDS: dict[str, int] = {}


def quick() -> bool:
    """Whether this run is the quick variant: ``--quick`` on the command line, or KOSMOS_BENCH_QUICK."""
    return "--quick" in sys.argv[1:] or os.environ.get(QUICK_ENV, "").strip() not in {"", "0"}


def sized(full: int, fast: int) -> int:
    """``full``, or ``fast`` in the quick variant: how many rounds, calls or events to run."""
    return fast if quick() else full


class _Interrupt:
    """Whether Ctrl-C (or SIGTERM) arrived while a benchmark's event loop ran."""

    seen = False


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(coroutine)``, where Ctrl-C cancels it and comes out as KeyboardInterrupt.

    Ctrl-C reaches the benchmark's server processes too, which stop at once, so the calls in
    flight fail in every way; once interrupted, whatever the benchmark raises means "interrupted".
    """

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            if not _Interrupt.seen:  # a second Ctrl-C must not cut the clean-up short
                _Interrupt.seen = True
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        await coroutine

    try:
        asyncio.run(guarded())
    except BaseException:
        if _Interrupt.seen:
            raise KeyboardInterrupt from None
        raise


def main(cli: Callable[[], None], name: str) -> None:
    """Run a benchmark's command line; Ctrl-C ends it with one line (exit 130), not a traceback."""
    try:
        cli()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)


class Start(Protocol):
    """Runs ``python -m module *args`` as a server process; returns the address it prints."""

    def __call__(self, module: str, *args: str) -> str: ...


@dataclass
class Result:
    """Samples of one scenario: latencies pooled over every round, one p50 and one rate per round."""

    latencies_ms: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        """The q-quantile (0 to 1) of every latency recorded."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rate(self) -> float:
        """The median rate over rounds."""
        return statistics.median(self.rates)


def ratios(a: list[float], b: list[float]) -> list[float]:
    """a/b for each round: both measured in the same round."""
    return [x / y for x, y in zip(a, b, strict=True)]


def paired(a: list[float], b: list[float]) -> float:
    """The median over rounds of a/b measured in the same round: drift cancels out."""
    return statistics.median(ratios(a, b))


async def sequential(call: Call, n: int, result: Result) -> None:
    """n calls one after another, each timed."""
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    result.latencies_ms += samples
    result.p50s.append(statistics.median(samples))


async def concurrent(call: Call, n: int, inflight: int, result: Result) -> None:
    """n calls with ``inflight`` outstanding at any time; records calls/s."""
    per_worker = n // inflight

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    result.rates.append(per_worker * inflight / (time.perf_counter() - started))


async def alternate(sides: Mapping[str, Call], rounds: int, calls: int, inflight: int) -> dict[str, Result]:
    """Each side's samples over ``rounds``: in each, every side runs sequential then concurrent calls.

    Which side goes first alternates from round to round, so drift on a shared machine hits all alike.
    """
    results = {name: Result() for name in sides}
    for round_ in range(rounds):
        order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
        for name in order:
            await sequential(sides[name], calls, results[name])
        for name in order:
            await concurrent(sides[name], calls, inflight, results[name])
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
    return results


def on_off_arguments(parser: argparse.ArgumentParser, serve: list[str]) -> None:
    """The arguments of an on-against-off benchmark; ``serve`` names its hidden server kinds."""
    rounds, calls = sized(15, 2), sized(1280, 256)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds, on and off in each (default {rounds})")
    parser.add_argument(
        "--calls", type=int, default=calls, help=f"calls per side per scenario per round (default {calls})"
    )
    parser.add_argument("--inflight", type=int, default=64, help="concurrent calls in flight (default 64)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (also KOSMOS_BENCH_QUICK=1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler")
    parser.add_argument("--serve", choices=serve, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)


def on_off_report(results: dict[str, Result], inflight: int, target: float) -> None:
    """Print the "on" side against the "off" side: p50 (against ``target``), p99, calls/s, per-round spread."""
    on, off = results["on"], results["off"]
    p50_ratios, rate_ratios = ratios(on.p50s, off.p50s), ratios(on.rates, off.rates)
    p50_ratio, rate_ratio = statistics.median(p50_ratios), statistics.median(rate_ratios)
    print(line("off p50", statistics.median(off.p50s), "ms"))
    print(
        line(
            "on p50",
            statistics.median(on.p50s),
            "ms",
            p50_ratio,
            f"target <= {target:.2f}x: {mark(p50_ratio <= target)}",
        )
    )
    print(line("off p99", off.p(0.99), "ms"))
    print(line("on p99", on.p(0.99), "ms", on.p(0.99) / off.p(0.99)))
    print(line(f"off calls/s, {inflight} in flight", off.rate, "calls/s"))
    print(line(f"on calls/s, {inflight} in flight", on.rate, "calls/s", rate_ratio))
    print(
        f"  per-round ratios on/off, min / median / max: p50 {min(p50_ratios):.2f} / {p50_ratio:.2f} / "
        f"{max(p50_ratios):.2f}x, calls/s {min(rate_ratios):.2f} / {rate_ratio:.2f} / {max(rate_ratios):.2f}x"
    )


def columns(against: str) -> str:
    """The heading over ``line``'s columns; ``against`` names what the ratios divide by."""
    return f"  {'':40} {'value':>10} {'unit':<9} {against:>7}"


def line(name: str, value: float, unit: str, ratio: float | None = None, target: str = "") -> str:
    """One result row: name, value, unit, and the ratio and target where there are."""
    shown = "" if ratio is None else f"{ratio:>6.2f}x"
    return f"  {name:<40} {value:>10.3f} {unit:<9} {shown:>7}  {target}".rstrip()


def mark(ok: bool) -> str:
    """A target's verdict."""
    return "ok" if ok else "MISSED"


def cpus() -> tuple[int, int] | None:
    """A CPU for this process and one for the servers, or None where there are not two to pin to."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def pin(cpu: int | None) -> None:
    """Keep this process on ``cpu`` (None: leave it). Call before gRPC starts a thread: its threads inherit it."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def pin_client(enabled: bool) -> tuple[int, int] | None:
    """Pin this process to the first of ``cpus()``; returns (client CPU, server CPU), or None if not pinned."""
    chosen = cpus() if enabled else None
    pin(None if chosen is None else chosen[0])
    return chosen


def placement(chosen: tuple[int, int] | None, servers: str) -> str:
    """For a header: where the client and the ``servers`` run."""
    if chosen is None:
        return "not pinned to CPUs"
    return f"client on CPU {chosen[0]}, {servers} on CPU {chosen[1]}"


@contextmanager
def processes(cpu: int | None = None) -> Iterator[Start]:
    """Yield ``start(module, *args)``, which runs a server process and returns the address it prints.

    Each is pinned to ``cpu`` if given (``--cpu N``). On exit every process started is stopped
    by PID: SIGTERM, then SIGKILL if it has not ended within 10 s.
    """
    started: list[subprocess.Popen[str]] = []
    where = [] if cpu is None else ["--cpu", str(cpu)]

    def start(module: str, *args: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, *where],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"benchmark server {module} {args} did not start")
        PIDS[address] = process.pid
        return address

    try:
        yield start
    finally:
        for process in reversed(started):  # the last started first: an agent before the sink it sends to
            process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def rss(pid: int) -> int:
    """A process's resident memory, in bytes (Linux: ``/proc/<pid>/statm``)."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def wait_for_stop() -> None:
    """In a server process: return once stdin closes or SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def eof() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(eof())
    await stop.wait()
    watcher.cancel()
