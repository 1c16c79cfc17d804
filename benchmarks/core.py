"""The mesh against bare grpc.aio in one run: unary latency and throughput, one and two hops, and streaming.

Every server runs in its own process on loopback (as under ``kosmos up``); this process is the
client. Bare and mesh runs alternate over several rounds so drift on a shared machine hits both
alike. Bare calls carry the same bytes the mesh puts on the wire, so the ratios measure the
mesh's own work: envelope building, validation, routing, deadlines and conversions.

Run with ``make bench`` (``python -m benchmarks.core --help`` for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from kosmos_grpc import Coordinator, new_message, runtime
from kosmos_grpc._proto.kosmos.v1 import agent_pb2

from .serve import ECHO, RELAY, STREAM

PAYLOAD = {"text": "hello from the benchmark", "n": 42, "tags": ["a", "b"]}
Call = Callable[[], Awaitable[object]]


@contextmanager
def servers() -> Iterator[dict[str, str]]:
    """Start the bare and mesh servers, each in its own process; stop them all by PID."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"benchmark server {args} did not start")
        return address

    try:
        addresses = {"bare": start("bare"), "bare_uvloop": start("bare-uvloop")}
        addresses["bare_relay"] = start("bare", addresses["bare"])
        addresses["echo"] = start("agent", "benchmarks.agents:BenchEcho")
        addresses["zeus"] = start("agent", "agents.zeus:Zeus", f'{{"echo": "{addresses["echo"]}"}}')
        yield addresses
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
    """Samples of one scenario over every round."""

    latencies_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


async def sequential(call: Call, n: int, result: Result) -> None:
    """n calls one after another, each timed."""
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        result.latencies_ms.append((time.perf_counter_ns() - started) / 1e6)


async def concurrent(call: Call, n: int, inflight: int, result: Result) -> None:
    """n calls with ``inflight`` outstanding at any time; records calls/s."""
    per_worker = n // inflight

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    result.rates.append(per_worker * inflight / (time.perf_counter() - started))


async def streamed(stream: Callable[[], Awaitable[int]], result: Result) -> None:
    """One stream, drained; records chunks/s."""
    started = time.perf_counter()
    count = await stream()
    result.rates.append(count / (time.perf_counter() - started))


def ratio_line(name: str, value: float, bare: float, unit: str, target: str = "") -> str:
    return f"  {name:<34} {value:>10.3f} {unit:<9} {value / bare:>6.2f}x bare  {target}"


async def main(args: argparse.Namespace) -> None:
    with servers() as where:
        bare_channel = grpc.aio.insecure_channel(where["bare"])
        uv_channel = grpc.aio.insecure_channel(where["bare_uvloop"])
        uv_echo = uv_channel.unary_unary(ECHO)
        relay_channel = grpc.aio.insecure_channel(where["bare_relay"])
        bare_echo = bare_channel.unary_unary(ECHO)
        bare_relay = relay_channel.unary_unary(RELAY)
        bare_stream = bare_channel.unary_stream(STREAM)
        client = Coordinator({"echo": where["echo"], "zeus": where["zeus"]}, source_agent="bench")

        # Bare requests carry what the mesh sends: a full envelope with the same payload.
        request = agent_pb2.ExecuteRequest(message=new_message("echo", PAYLOAD, target_agent="echo"))
        bare_bytes = request.SerializeToString()
        chunk = agent_pb2.StreamResponse()
        chunk.chunk.agent, chunk.chunk.request_message_id = "echo", request.message.message_id
        chunk.chunk.correlation_id, chunk.chunk.sequence = request.message.correlation_id, 12345
        chunk.chunk.data.update(PAYLOAD)
        stream_request = f"{args.chunks}:".encode() + chunk.SerializeToString()
        route = {"agent": "echo", "action": "echo", "payload": PAYLOAD}

        async def bare_one() -> object:
            return await bare_echo(bare_bytes, timeout=30)

        async def bare_uv() -> object:
            return await uv_echo(bare_bytes, timeout=30)

        async def bare_two() -> object:
            return await bare_relay(bare_bytes, timeout=30)

        async def mesh_one() -> object:
            return (await client.delegate("echo", "echo", PAYLOAD)).result

        async def mesh_two() -> object:
            return (await client.delegate("zeus", "delegate", route)).result

        async def bare_chunks() -> int:
            return sum([1 async for _ in bare_stream(stream_request, timeout=60)])

        async def mesh_chunks() -> int:
            payload = {"n": args.chunks, "chunk": PAYLOAD}
            # Each chunk's data is read, so the mesh pays for turning it into a dict.
            return sum([1 async for c in client.stream("echo", "chunks", payload, timeout_ms=60_000) if c.data])

        unary = {
            "bare 1 hop": bare_one,
            "mesh 1 hop": mesh_one,
            "bare 2 hops": bare_two,
            "mesh 2 hops": mesh_two,
            "bare uvloop": bare_uv,
        }
        results = {name: Result() for name in [*unary, "bare stream", "mesh stream"]}
        for call in unary.values():  # warm every channel and code path
            await sequential(call, 200, Result())
        for round_ in range(args.rounds):
            for name, call in unary.items():
                await sequential(call, args.calls, results[name])
                await concurrent(call, args.calls, args.inflight, results[name])
            await streamed(bare_chunks, results["bare stream"])
            await streamed(mesh_chunks, results["mesh stream"])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        await client.close()
        await bare_channel.close()
        await uv_channel.close()
        await relay_channel.close()

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    b1, m1, b2, m2, buv = (results[n] for n in unary)
    bs, ms = results["bare stream"], results["mesh stream"]
    print(f"\nKOSMOS core benchmark: {args.rounds} rounds x {args.calls} calls, {args.inflight} in flight")
    print(f"{'':36} {'value':>10} {'unit':<9} {'ratio':>6}")
    print("one hop (client -> echo agent)")
    print(ratio_line("bare p50", b1.p(0.5), b1.p(0.5), "ms"))
    print(ratio_line("mesh p50", m1.p(0.5), b1.p(0.5), "ms", f"target <= 1.25x: {mark(m1.p(0.5) <= 1.25 * b1.p(0.5))}"))
    print(ratio_line("bare p99", b1.p(0.99), b1.p(0.99), "ms"))
    print(ratio_line("mesh p99", m1.p(0.99), b1.p(0.99), "ms"))
    print(ratio_line(f"bare calls/s ({args.inflight} in flight)", b1.rate, b1.rate, "calls/s"))
    print(
        ratio_line(
            f"mesh calls/s ({args.inflight} in flight)",
            m1.rate,
            b1.rate,
            "calls/s",
            f"target >= 0.8x: {mark(m1.rate >= 0.8 * b1.rate)}",
        )
    )
    print(f"reference: the bare echo server on uvloop, as mesh agents run ({runtime.event_loop_name()} here)")
    print(ratio_line("bare-on-uvloop p50", buv.p(0.5), b1.p(0.5), "ms"))
    print(ratio_line("mesh p50 / bare-on-uvloop p50", m1.p(0.5), buv.p(0.5), "ms"))
    print(ratio_line(f"bare-on-uvloop calls/s ({args.inflight} in flight)", buv.rate, b1.rate, "calls/s"))
    print(ratio_line("mesh calls/s / bare-on-uvloop", m1.rate, buv.rate, "calls/s"))
    print("two hops (client -> zeus -> echo agent; bare: client -> relay -> echo)")
    print(ratio_line("bare p50", b2.p(0.5), b2.p(0.5), "ms"))
    print(ratio_line("mesh p50", m2.p(0.5), b2.p(0.5), "ms"))
    print(ratio_line("bare p99", b2.p(0.99), b2.p(0.99), "ms"))
    print(ratio_line("mesh p99", m2.p(0.99), b2.p(0.99), "ms"))
    print(ratio_line(f"bare calls/s ({args.inflight} in flight)", b2.rate, b2.rate, "calls/s"))
    print(ratio_line(f"mesh calls/s ({args.inflight} in flight)", m2.rate, b2.rate, "calls/s"))
    print(f"server streaming ({args.chunks} chunks per stream)")
    print(ratio_line("bare chunks/s", bs.rate, bs.rate, "chunks/s"))
    print(
        ratio_line("mesh chunks/s", ms.rate, bs.rate, "chunks/s", f"target >= 0.85x: {mark(ms.rate >= 0.85 * bs.rate)}")
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating bare/mesh rounds (default 5)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per scenario per round (default 2000)")
    parser.add_argument("--inflight", type=int, default=64, help="concurrent calls in flight (default 64)")
    parser.add_argument("--chunks", type=int, default=20000, help="chunks per stream (default 20000)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
