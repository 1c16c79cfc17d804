"""The mesh against bare grpc.aio in one run: unary latency and throughput, one and two hops, and streaming.

Every server runs in its own process on loopback (as under ``kosmos up``); this process is the
client. Bare and mesh runs alternate over many short rounds so drift on a shared machine hits
both alike. "Bare" is what a hand-written grpc.aio service with the same protobuf messages does:
parse, copy the payload into the reply, serialize. Bare calls carry the same envelope bytes the
mesh puts on the wire, so the ratios measure the mesh's own work: building and validating the
envelope, routing by action, deadlines, and turning payloads into Python dicts and back. A
raw-bytes echo (no protobuf at all) is reported too, as the floor.

Where there are two CPUs or more, this process is pinned to one and every server process to
another, as in benchmarks/resilience.py and for the same reason: left to the scheduler, calls/s
on a small machine swing so much that even one server against itself misses 1.00x by several
percent. ``--no-pin`` leaves it to the scheduler.

Run with ``make bench`` (``python -m benchmarks.core --help`` for sizes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import grpc

from kosmos_grpc import Coordinator, new_message, runtime
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bus import GrpcEventBus

from . import harness
from .harness import (
    Result,
    columns,
    concurrent,
    line,
    mark,
    paired,
    pin_client,
    placement,
    processes,
    run,
    sequential,
    sized,
)
from .serve import CLIENT_CODEC, ECHO, ECHO_BYTES, RELAY, STREAM

PAYLOAD = {"text": "hello from the benchmark", "n": 42, "tags": ["a", "b"]}


@contextmanager
def servers(cpu: int | None) -> Iterator[dict[str, str]]:
    """Start the bare and mesh servers, each in its own process (on ``cpu`` if given); stop them all by PID."""
    with processes(cpu) as start:

        def serve(*args: str) -> str:
            return start("benchmarks.serve", *args)

        where = {"bare": serve("bare"), "bare_uvloop": serve("bare-uvloop")}
        where["bare_relay"] = serve("bare", where["bare"])
        where["echo"] = serve("agent", "benchmarks.agents:BenchEcho")
        where["broker"] = serve("broker")
        where["zeus"] = serve("agent", "agents.zeus:Zeus", f'{{"echo": "{where["echo"]}"}}')
        yield where


async def streamed(stream: Callable[[], Awaitable[int]], result: Result) -> None:
    """One stream, drained; records chunks/s."""
    started = time.perf_counter()
    count = await stream()
    result.rates.append(count / (time.perf_counter() - started))


async def main(args: argparse.Namespace) -> None:
    with servers(None if args.cpus is None else args.cpus[1]) as where:
        bare_channel = grpc.aio.insecure_channel(where["bare"])
        uv_channel = grpc.aio.insecure_channel(where["bare_uvloop"])
        relay_channel = grpc.aio.insecure_channel(where["bare_relay"])
        bare_echo = bare_channel.unary_unary(ECHO, **CLIENT_CODEC)
        bytes_echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = bare_channel.unary_unary(ECHO_BYTES)
        uv_echo = uv_channel.unary_unary(ECHO, **CLIENT_CODEC)
        bare_relay = relay_channel.unary_unary(RELAY, **CLIENT_CODEC)
        bare_stream = bare_channel.unary_stream(
            STREAM,
            request_serializer=agent_pb2.StreamRequest.SerializeToString,
            response_deserializer=agent_pb2.StreamResponse.FromString,
        )
        client = Coordinator({"echo": where["echo"], "zeus": where["zeus"]}, source_agent="bench")
        # The same, announcing each delegation and its outcome on the event bus.
        bus = GrpcEventBus(where["broker"], source_agent="bench")
        announcing = Coordinator({"echo": where["echo"]}, source_agent="bench", events=bus)

        # Bare calls carry the envelope the mesh sends, built once: a bare client has no envelope to make.
        request = agent_pb2.ExecuteRequest(message=new_message("echo", PAYLOAD, target_agent="echo"))
        request_bytes = request.SerializeToString()
        stream_request = agent_pb2.StreamRequest(message=new_message("chunks", {"n": args.chunks, "chunk": PAYLOAD}))
        route = {"agent": "echo", "action": "echo", "payload": PAYLOAD}

        async def bare_one() -> object:
            return await bare_echo(request, timeout=30)

        async def bare_uv() -> object:
            return await uv_echo(request, timeout=30)

        async def bare_bytes() -> object:
            return await bytes_echo(request_bytes, timeout=30)

        async def bare_two() -> object:
            return await bare_relay(request, timeout=30)

        async def mesh_one() -> object:
            return (await client.delegate("echo", "echo", PAYLOAD)).result

        async def mesh_events() -> object:
            return (await announcing.delegate("echo", "echo", PAYLOAD)).result

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
            "bare bytes": bare_bytes,
            "mesh events": mesh_events,
        }
        results = {name: Result() for name in [*unary, "bare stream", "mesh stream"]}
        for call in unary.values():  # warm every channel and code path
            await sequential(call, 200, Result())
        # Short rounds, bare and mesh back to back: each ratio below is the median of ratios
        # taken within one round, so a slow spell of this shared machine hits both sides alike.
        for round_ in range(args.rounds):
            for name, call in unary.items():
                await sequential(call, args.calls, results[name])
            for name, call in unary.items():
                await concurrent(call, args.calls, args.inflight, results[name])
            await streamed(bare_chunks, results["bare stream"])
            await streamed(mesh_chunks, results["mesh stream"])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        await client.close()
        await announcing.close()
        await bus.close()
        await bare_channel.close()
        await uv_channel.close()
        await relay_channel.close()

    b1, m1, b2, m2, buv, bb, me = (results[n] for n in unary)
    bs, ms = results["bare stream"], results["mesh stream"]
    p50_1, rate_1 = paired(m1.p50s, b1.p50s), paired(m1.rates, b1.rates)
    stream_ratio = paired(ms.rates, bs.rates)
    print(
        f"\nKOSMOS core benchmark: {args.rounds} rounds x {args.calls} calls, {args.inflight} in flight, "
        f"{args.chunks} chunks a stream; agents on {runtime.event_loop_name()}; {placement(args.cpus, 'servers')}"
    )
    print(columns("/ bare"))
    print("one hop: client -> echo agent (bare: client -> grpc.aio protobuf echo on asyncio)")
    print(line("bare p50", statistics.median(b1.p50s), "ms"))
    print(line("mesh p50", statistics.median(m1.p50s), "ms", p50_1, f"target <= 1.25x: {mark(p50_1 <= 1.25)}"))
    print(line("bare p99", b1.p(0.99), "ms"))
    print(line("mesh p99", m1.p(0.99), "ms", m1.p(0.99) / b1.p(0.99)))
    print(line(f"bare calls/s, {args.inflight} in flight", b1.rate, "calls/s"))
    print(
        line(
            f"mesh calls/s, {args.inflight} in flight",
            m1.rate,
            "calls/s",
            rate_1,
            f"target >= 0.8x: {mark(rate_1 >= 0.8)}",
        )
    )
    print("  against the bare echo on uvloop, the loop the agents run on:")
    print(line("bare-on-uvloop p50", statistics.median(buv.p50s), "ms"))
    print(line("mesh p50", statistics.median(m1.p50s), "ms", paired(m1.p50s, buv.p50s)))
    print(line(f"bare-on-uvloop calls/s, {args.inflight} in flight", buv.rate, "calls/s"))
    print(line(f"mesh calls/s, {args.inflight} in flight", m1.rate, "calls/s", paired(m1.rates, buv.rates)))
    print("  against a raw-bytes echo (no protobuf at all: the floor of any gRPC service):")
    print(line("bare-bytes p50", statistics.median(bb.p50s), "ms"))
    print(line("mesh p50", statistics.median(m1.p50s), "ms", paired(m1.p50s, bb.p50s)))
    print(line(f"bare-bytes calls/s, {args.inflight} in flight", bb.rate, "calls/s"))
    print(line(f"mesh calls/s, {args.inflight} in flight", m1.rate, "calls/s", paired(m1.rates, bb.rates)))
    print("  with each delegation announced on kosmos.agents.echo.requests|responses (two events a call):")
    print(line("mesh p50, events on / off", statistics.median(me.p50s), "ms", paired(me.p50s, m1.p50s)))
    print(line(f"mesh calls/s, {args.inflight} in flight, on / off", me.rate, "calls/s", paired(me.rates, m1.rates)))
    print("two hops: client -> zeus -> echo agent (bare: client -> protobuf relay -> protobuf echo)")
    print(line("bare p50", statistics.median(b2.p50s), "ms"))
    print(line("mesh p50", statistics.median(m2.p50s), "ms", paired(m2.p50s, b2.p50s)))
    print(line("bare p99", b2.p(0.99), "ms"))
    print(line("mesh p99", m2.p(0.99), "ms", m2.p(0.99) / b2.p(0.99)))
    print(line(f"bare calls/s, {args.inflight} in flight", b2.rate, "calls/s"))
    print(line(f"mesh calls/s, {args.inflight} in flight", m2.rate, "calls/s", paired(m2.rates, b2.rates)))
    print("server streaming: one stream at a time")
    print(line("bare chunks/s", bs.rate, "chunks/s"))
    print(line("mesh chunks/s", ms.rate, "chunks/s", stream_ratio, f"target >= 0.85x: {mark(stream_ratio >= 0.85)}"))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rounds, calls, chunks = sized(15, 2), sized(640, 128), sized(5000, 1000)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds, bare and mesh in each (default {rounds})")
    parser.add_argument("--calls", type=int, default=calls, help=f"calls per scenario per round (default {calls})")
    parser.add_argument("--inflight", type=int, default=64, help="concurrent calls in flight (default 64)")
    parser.add_argument("--chunks", type=int, default=chunks, help=f"chunks per stream (default {chunks})")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (also KOSMOS_BENCH_QUICK=1)")
    args = parser.parse_args()
    args.cpus = pin_client(args.pin)  # before gRPC starts any thread: its threads inherit it
    run(main(args))


if __name__ == "__main__":
    harness.main(cli, "benchmarks.core")
