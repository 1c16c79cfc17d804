"""Overload and hostile clients: a flood of concurrent calls, and streams whose client never reads.

Flood: 5,000 calls at once against an agent in its own process, served as kosmos.toml serves
Zeus (64 handlers at once, 256 waiting by priority, 1,024 RPCs at most as ``[mesh]`` says). Each
call holds its handler for 20 ms (as one waiting on I/O does); a few percent of them are
CRITICAL, the rest LOW, NORMAL and HIGH, spread through the flood and over 8 connections. The
table gives the share of each status (and of RESOURCE_EXHAUSTED answers that carry a RetryInfo,
the mesh's own shedding), and the CRITICAL calls' success rate and latency. What the README
promises: overload is answered RESOURCE_EXHAUSTED with a RetryInfo, and CRITICAL calls get in.

Streams that are never read: 200 ``Stream`` calls on one connection, each a 1 MiB request for an
endless stream of 1 MiB chunks with a TTL of 5 s, whose client reads the first chunk and then
nothing (HTTP/2 flow control then holds the server's writes). The agent's resident memory
before, while they are held, after their TTL has passed (the client still holding them), and
after the client goes; and whether a normal call still gets an answer while they are held.

Run with ``python -m benchmarks.hostile`` (``--quick``: a smaller flood, 50 streams); part of
``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from kosmos_grpc import AgentServer, Priority, ServerSettings, new_message, runtime
from kosmos_grpc._proto.kosmos.v1 import agent_pb2

from . import harness
from .harness import PIDS, pin, pin_client, placement, processes, rss, run, sized, wait_for_stop

EXECUTE = "/kosmos.v1.AgentService/Execute"
STREAM = "/kosmos.v1.AgentService/Stream"
MIB = 1024 * 1024
#: How the flood's calls are spread over priorities: CRITICAL a few percent.
MIX = ((Priority.LOW, 30), (Priority.NORMAL, 48), (Priority.HIGH, 19), (Priority.CRITICAL, 3))
STREAM_TTL_MS = 5_000


async def serve() -> None:
    """The flood's agent, as kosmos.toml serves Zeus; prints its address, serves until stdin closes."""
    from .agents import BenchWork

    settings = ServerSettings(max_concurrency=64, queue_limit=256, max_concurrent_rpcs=1024, grace_seconds=1)
    server = AgentServer(BenchWork(), settings)
    await server.start()
    print(server.address, flush=True)
    await wait_for_stop()
    await server.stop(0)


@dataclass
class Outcome:
    """How one call of the flood ended."""

    priority: Priority
    code: grpc.StatusCode
    ms: float
    retry_info: bool = False


def _has_retry_info(error: grpc.aio.AioRpcError) -> bool:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status made by gRPC itself, not the mesh's
        return False
    return status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def _priorities(calls: int) -> list[Priority]:
    """``calls`` priorities in the MIX's shares, interleaved so each kind is spread through the flood."""
    out: list[Priority] = []
    for i in range(calls):
        slot = (i * 7919) % 100  # a fixed scatter of 0..99 over the calls
        for priority, share in MIX:
            if slot < share:
                out.append(priority)
                break
            slot -= share
    return out


async def flood(address: str, calls: int, connections: int, work_ms: int) -> list[Outcome]:
    """``calls`` Execute calls started at once over ``connections`` connections; how each ended."""
    # A local subchannel pool each: separate TCP connections, as separate clients would have.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    methods: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [c.unary_unary(EXECUTE) for c in channels]
    await asyncio.gather(
        *(m(agent_pb2.ExecuteRequest(message=new_message("work", {"ms": 0})).SerializeToString()) for m in methods)
    )
    priorities = _priorities(calls)
    requests = [
        agent_pb2.ExecuteRequest(message=new_message("work", {"ms": work_ms}, priority=p)).SerializeToString()
        for p in priorities
    ]

    async def one(i: int) -> Outcome:
        started = time.perf_counter()
        try:
            await methods[i % connections](requests[i], timeout=30)
        except grpc.aio.AioRpcError as error:
            ms = (time.perf_counter() - started) * 1000
            return Outcome(priorities[i], error.code(), ms, _has_retry_info(error))
        return Outcome(priorities[i], grpc.StatusCode.OK, (time.perf_counter() - started) * 1000)

    try:
        return await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        for channel in channels:
            await channel.close()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report_flood(rounds: list[list[Outcome]], calls: int, seconds: list[float]) -> None:
    """The share of each status over every round, and what became of the CRITICAL calls."""
    outcomes = [o for round_ in rounds for o in round_]
    codes = Counter(o.code for o in outcomes)
    print(f"flood: {calls} calls at once, {len(rounds)} round(s); median {statistics.median(seconds):.2f} s a flood")
    print(f"  {'status':<40} {'share':>8}  {'per round':<30}")
    for code, count in codes.most_common():
        per_round = " / ".join(f"{100 * sum(o.code == code for o in r) / len(r):.1f}" for r in rounds)
        print(f"  {code.name:<40} {100 * count / len(outcomes):>7.1f}%  {per_round}")
    shed = [o for o in outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    if shed:
        with_info = sum(o.retry_info for o in shed)
        print(f"  {'RESOURCE_EXHAUSTED with a RetryInfo':<40} {100 * with_info / len(shed):>7.1f}%  of those shed")
    ok = [o.ms for o in outcomes if o.code == grpc.StatusCode.OK]
    print(f"  {'answered calls p50 / p99':<40} {_quantile(ok, 0.5):>7.1f} / {_quantile(ok, 0.99):.1f} ms")
    print(f"  by priority: {'calls':>7} {'ok':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for priority, _ in MIX:
        mine = [o for o in outcomes if o.priority == priority]
        done = [o.ms for o in mine if o.code == grpc.StatusCode.OK]
        statuses = ", ".join(f"{c.name} {n}" for c, n in Counter(o.code for o in mine).most_common())
        print(
            f"  {priority.name:<11} {len(mine):>7} {100 * len(done) / len(mine):>6.1f}% "
            f"{_quantile(done, 0.5):>8.1f} {_quantile(done, 0.99):>8.1f}  {statuses}"
        )
    critical = [o for o in outcomes if o.priority == Priority.CRITICAL]
    answered = sum(o.code == grpc.StatusCode.OK for o in critical)
    per_round = " / ".join(f"{100 * _success(r, Priority.CRITICAL):.0f}%" for r in rounds)
    rate = 100 * answered / len(critical)
    print(f"  CRITICAL success rate {rate:.1f}% ({answered} of {len(critical)}; per round {per_round})")


def _success(outcomes: list[Outcome], priority: Priority) -> float:
    """The share of ``priority``'s calls answered OK."""
    mine = [o for o in outcomes if o.priority == priority]
    return sum(o.code == grpc.StatusCode.OK for o in mine) / max(1, len(mine))


async def _probe(address: str) -> str:
    """A normal call on a connection of its own, with 1 s to answer: how it went (and what health said)."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(EXECUTE)
        request = agent_pb2.ExecuteRequest(message=new_message("echo", {"probe": 1})).SerializeToString()
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        health = health_pb2.HealthCheckResponse.ServingStatus.Name(
            (await check(health_pb2.HealthCheckRequest(), timeout=5)).status
        )
        started = time.perf_counter()
        try:
            await call(request, timeout=1)
        except grpc.aio.AioRpcError as error:
            return f"probe {error.code().name} after {(time.perf_counter() - started) * 1000:.0f} ms, health {health}"
        return f"probe OK in {(time.perf_counter() - started) * 1000:.1f} ms, health {health}"


async def unread_streams(address: str, streams: int) -> list[tuple[str, float, str]]:
    """Hold ``streams`` streams unread on one connection; (moment, RSS in MiB, note) along the way."""
    pid = PIDS[address]
    rows: list[tuple[str, float, str]] = []
    chunk = {"data": "x" * (MIB - 256)}
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(STREAM)
    for _ in range(3):
        warm = agent_pb2.StreamRequest(message=new_message("chunks", {"n": 3, "chunk": {"x": 1}}))
        [_ async for _ in method(warm.SerializeToString(), timeout=10)]
    rows.append(("before", rss(pid) / MIB, await _probe(address)))
    streaming: list[grpc.aio.UnaryStreamCall[bytes, bytes]] = []

    async def open_one() -> str:
        """``streaming`` once its first chunk is read (then never another), else the status it got."""
        # Built just before it is sent, so the TTL counts from now; no gRPC deadline, as a hostile client sets none.
        message = new_message("chunks", {"n": 1_000_000, "chunk": chunk}, ttl_ms=STREAM_TTL_MS)
        call = method(agent_pb2.StreamRequest(message=message).SerializeToString())
        try:
            await call.read()
        except grpc.aio.AioRpcError as error:
            return error.code().name
        streaming.append(call)
        return "streamed a chunk"

    started = time.perf_counter()
    opening = asyncio.gather(*(open_one() for _ in range(streams)))
    await asyncio.sleep(1)
    rows.append(("held, 1 s after they were sent", rss(pid) / MIB, await _probe(address)))
    got = Counter(await opening)
    await asyncio.sleep(max(0.0, STREAM_TTL_MS / 1000 + 3 - (time.perf_counter() - started)))
    still_open = sum(not call.done() for call in streaming)
    outcome = ", ".join(f"{n} {what}" for what, n in got.most_common())
    rows.append(("TTL + 3 s, client still holding", rss(pid) / MIB, f"{outcome}, {still_open} of those still open"))
    rows.append(("", rss(pid) / MIB, await _probe(address)))
    await channel.close()
    await asyncio.sleep(3)
    rows.append(("client gone, 3 s later", rss(pid) / MIB, await _probe(address)))
    return rows


def report_streams(rows: list[tuple[str, float, str]], streams: int) -> None:
    print(f"\n{streams} unread streams on one connection, 1 MiB requests for 1 MiB chunks, TTL {STREAM_TTL_MS} ms")
    print(f"  {'moment':<36} {'agent RSS':>10} {'/ before':>9}  note")
    before = rows[0][1]
    for moment, mib, note in rows:
        if moment:
            print(f"  {moment:<36} {mib:>7.0f} MiB {mib / before:>8.2f}x  {note}")
        else:  # a second note on the moment above
            print(f"  {'':<36} {'':>11} {'':>9}  {note}")


async def main(args: argparse.Namespace) -> None:
    server_cpu = None if args.cpus is None else args.cpus[1]
    rounds: list[list[Outcome]] = []
    seconds: list[float] = []
    with processes(server_cpu) as start:
        address = start("benchmarks.hostile", "--serve")
        for round_ in range(args.rounds):
            began = time.perf_counter()
            rounds.append(await flood(address, args.calls, args.connections, args.work_ms))
            seconds.append(time.perf_counter() - began)
            print(f"flood {round_ + 1}/{args.rounds} done", file=sys.stderr)
    with processes(server_cpu) as start:
        rows = await unread_streams(start("benchmarks.hostile", "--serve"), args.streams)
    print(
        f"\nKOSMOS hostile-load benchmark: agent as zeus (max_concurrency 64, queue_limit 256, max_concurrent_rpcs "
        f"1024) on {runtime.event_loop_name()}; {placement(args.cpus, 'agent')}"
    )
    report_flood(rounds, args.calls, seconds)
    report_streams(rows, args.streams)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rounds, streams = sized(3, 1), sized(200, 50)
    parser.add_argument("--calls", type=int, default=5000, help="calls in a flood (default 5000)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"floods (default {rounds})")
    parser.add_argument("--connections", type=int, default=8, help="connections the flood comes over (default 8)")
    parser.add_argument("--work-ms", type=int, default=20, help="how long each call holds its handler (default 20)")
    parser.add_argument("--streams", type=int, default=streams, help=f"unread streams (default {streams})")
    parser.add_argument("--quick", action="store_true", help="one flood, 50 streams (also KOSMOS_BENCH_QUICK=1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        pin(args.cpu)  # before gRPC starts any thread: its threads inherit it
        runtime.run(serve())
        return
    args.cpus = pin_client(args.pin)
    run(main(args))


if __name__ == "__main__":
    harness.main(cli, "benchmarks.hostile")
