"""What resilience costs a call that succeeds: retry + circuit breaker + idempotency, on against off, in one run.

On: a default Coordinator (a Resilience interceptor: tenacity retry policy and a circuit breaker
per target) calls an echo agent that remembers executed message_ids (``idempotency_seconds``
300, the default). Off: a ``Coordinator(resilience=False)`` calls the same echo agent served
with ``idempotency_seconds=None``. Nothing else differs: same agent, same payload, same loop,
no priority queue on either. Each agent runs in its own process on loopback (as under
``kosmos up``); this process is the client. On and off alternate within each of many short
rounds (which goes first alternates too), and each ratio is the median of the ratios taken
within one round, so drift on a shared machine hits both alike. Before the rounds, enough
calls are made for the agent's memory of message_ids to be full, as it is on a busy agent.

Where there are two CPUs or more, this process is pinned to one and the agents to another:
left to the scheduler, calls/s of one and the same agent swings by half from one second to the
next on a small machine (an A/A run, off against off, then misses 1.00x by several percent);
pinned, per-round A/A ratios stay within a few percent. ``--no-pin`` leaves it to the scheduler.

Run with ``python -m benchmarks.resilience`` (``--help`` for sizes); part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kosmos_grpc import Coordinator, runtime

# The same payload as benchmarks/core.py, so the figures compare with its "mesh 1 hop".
PAYLOAD = {"text": "hello from the benchmark", "n": 42, "tags": ["a", "b"]}
ROOT = Path(__file__).resolve().parent.parent
# The agent's memory holds this many message_ids (AgentServer's default idempotency_entries).
MEMORY = 10_000
Call = Callable[[], Awaitable[object]]


def cpus() -> tuple[int, int] | None:
    """A CPU for this process and one for the agents, or None where there are not two to pin to."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


async def serve(idempotent: bool) -> None:
    """The benchmark's echo agent on a free loopback port, remembering message_ids or not.

    Prints its address once listening, then serves until stdin closes or SIGTERM.
    """
    from benchmarks.agents import BenchEcho
    from benchmarks.serve import _wait_for_stop
    from kosmos_grpc import AgentServer

    server = AgentServer(BenchEcho(), address="127.0.0.1:0", idempotency_seconds=300.0 if idempotent else None)
    await server.start()
    print(server.address, flush=True)
    await _wait_for_stop()
    await server.stop(0)


@contextmanager
def servers(cpu: int | None) -> Iterator[dict[str, str]]:
    """Start the two agents, each in its own process (on ``cpu`` if given); stop them both by PID."""
    started: list[subprocess.Popen[str]] = []
    where = [] if cpu is None else ["--cpu", str(cpu)]

    def start(kind: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.resilience", "--serve", kind, *where],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"benchmark agent {kind!r} did not start")
        return address

    try:
        yield {"on": start("on"), "off": start("off")}
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@dataclass
class Result:
    """Samples of one side: latencies pooled over every round, one p50 and one rate per round."""

    latencies_ms: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def ratios(on: list[float], off: list[float]) -> list[float]:
    return [a / b for a, b in zip(on, off, strict=True)]


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


def line(name: str, value: float, unit: str, ratio: float | None = None, target: str = "") -> str:
    shown = "" if ratio is None else f"{ratio:>6.2f}x"
    return f"  {name:<40} {value:>10.3f} {unit:<9} {shown:>7}  {target}".rstrip()


async def main(args: argparse.Namespace) -> None:
    with servers(None if args.cpus is None else args.cpus[1]) as where:
        on_client = Coordinator({"echo": where["on"]}, source_agent="bench")
        off_client = Coordinator({"echo": where["off"]}, source_agent="bench", resilience=False)
        assert on_client.resilience is not None
        assert off_client.resilience is None

        async def on() -> object:
            return (await on_client.delegate("echo", "echo", PAYLOAD)).result

        async def off() -> object:
            return (await off_client.delegate("echo", "echo", PAYLOAD)).result

        sides = {"on": on, "off": off}
        results = {name: Result() for name in sides}
        for call in sides.values():  # warm both channels and code paths; fill the agent's memory
            await sequential(call, 200, Result())
            await concurrent(call, MEMORY + 2 * args.inflight, args.inflight, Result())
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                await sequential(sides[name], args.calls, results[name])
            for name in order:
                await concurrent(sides[name], args.calls, args.inflight, results[name])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        breaker = on_client.resilience.breaker("echo")
        await on_client.close()
        await off_client.close()

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    r_on, r_off = results["on"], results["off"]
    p50_ratios, rate_ratios = ratios(r_on.p50s, r_off.p50s), ratios(r_on.rates, r_off.rates)
    p50_ratio, rate_ratio = statistics.median(p50_ratios), statistics.median(rate_ratios)
    print(
        f"\nKOSMOS resilience benchmark: {args.rounds} rounds x {args.calls} calls, {args.inflight} in flight; "
        f"agents on {runtime.event_loop_name()}; "
        + ("not pinned to CPUs" if args.cpus is None else f"client on CPU {args.cpus[0]}, agents on CPU {args.cpus[1]}")
    )
    print(f"  {'':40} {'value':>10} {'unit':<9} {'/ off':>7}")
    print("one hop: client -> echo agent")
    print("  on:  Coordinator() (tenacity retry policy + circuit breaker) -> agent with idempotency 300 s")
    print("  off: Coordinator(resilience=False)                          -> agent with idempotency_seconds=None")
    print(line("off p50", statistics.median(r_off.p50s), "ms"))
    print(line("on p50", statistics.median(r_on.p50s), "ms", p50_ratio, f"target <= 1.10x: {mark(p50_ratio <= 1.10)}"))
    print(line("off p99", r_off.p(0.99), "ms"))
    print(line("on p99", r_on.p(0.99), "ms", r_on.p(0.99) / r_off.p(0.99)))
    print(line(f"off calls/s, {args.inflight} in flight", r_off.rate, "calls/s"))
    print(line(f"on calls/s, {args.inflight} in flight", r_on.rate, "calls/s", rate_ratio))
    print(
        f"  per-round ratios on/off, min / median / max: p50 {min(p50_ratios):.2f} / {p50_ratio:.2f} / "
        f"{max(p50_ratios):.2f}x, calls/s {min(rate_ratios):.2f} / {rate_ratio:.2f} / {max(rate_ratios):.2f}x"
    )
    print(f"  the on side's breaker at the end: {breaker.current().name}, {breaker.failures} failures in a row")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="rounds, on and off in each (default 15)")
    parser.add_argument("--calls", type=int, default=1280, help="calls per side per scenario per round (default 1280)")
    parser.add_argument("--inflight", type=int, default=64, help="concurrent calls in flight (default 64)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler")
    parser.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu is not None:  # before gRPC starts any thread: its threads inherit it
        os.sched_setaffinity(0, {args.cpu})
    if args.serve:  # one of the two agents, in a process of its own, on the loop `kosmos serve` uses
        runtime.run(serve(args.serve == "on"))
        return
    args.cpus = cpus() if args.pin else None
    if args.cpus is not None:
        os.sched_setaffinity(0, {args.cpus[0]})
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
