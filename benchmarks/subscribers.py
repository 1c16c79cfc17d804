"""The broker against subscribers that stop reading: its memory, publish rate and health meanwhile.

The broker runs in its own process. 2,000 subscribers (200 in the quick variant), real Subscribe
streams over 50 connections, take their headers and then never read, while one publisher
sends events of 4 KB as fast as acknowledgements come. Printed: the broker's RSS before, at
its peak while they stall, and after they are cut off and gone; the publish rate and a health
check's latency with no stalled subscriber and with them, and the rate in the last second (past
the cut-off). Until a stalled client's HTTP/2 windows fill, the broker cannot tell it from a
reader: every event goes to each of them, and that fan-out is what slows publishing meanwhile.
The stalled clients turn BDP probing off, as a cheap hostile client would: their windows stay
at gRPC's 64 KB, so they stall within a few events. Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bus import BUS_SERVICE, GrpcEventBus

from . import harness
from .harness import ROOT, sized

SUBSCRIBERS = sized(2_000, 200)
CONNECTIONS = sized(50, 10)
#: The broker's subscriber_stall_seconds here: its default (10 s), 2 s in the quick variant.
STALL = float(sized(10, 2))
#: Seconds of publishing with no stalled subscriber, then with them (past the cut-off).
CALM, STALLED = sized(3, 1), STALL + sized(8, 3)
BLOB = "x" * 4000


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid``, MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _same(data: bytes) -> bytes:
    return data


async def publish_for(address: str, seconds: float, pid: int) -> tuple[float, float, list[float], float]:
    """Publish for ``seconds``: events/s acknowledged, and in the last second, health check
    latencies (ms), peak RSS (MiB)."""
    peak = rss_mib(pid)
    latencies: list[float] = []
    published = 0
    last_second = 0
    async with GrpcEventBus(address, source_agent="bench") as bus, grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + seconds

        async def publisher() -> None:
            nonlocal published, last_second
            while time.monotonic() < end:
                await bus.publish("kosmos.events.user.action", {"blob": BLOB}, acknowledge=True)
                published += 1
                if time.monotonic() >= end - 1:
                    last_second += 1

        async def watcher() -> None:
            nonlocal peak
            while time.monotonic() < end:
                began = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(service=BUS_SERVICE), timeout=30)
                latencies.append((time.perf_counter() - began) * 1e3)
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.2)

        began = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(8)), watcher())
        rate = published / (time.monotonic() - began)
    return rate, float(last_second), latencies, peak


async def main() -> None:
    broker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.serve",
        "broker",
        str(STALL),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert broker.stdout is not None
        address = (await asyncio.wait_for(broker.stdout.readline(), 30)).decode().strip()
        before = rss_mib(broker.pid)
        calm_rate, _, calm_health, _ = await publish_for(address, CALM, broker.pid)
        small = [("grpc.http2.bdp_probe", 0)]
        channels = [grpc.aio.insecure_channel(address, options=small) for _ in range(CONNECTIONS)]
        request = events_pb2.SubscribeRequest(pattern="kosmos.events.>").SerializeToString()
        calls = []
        for index in range(SUBSCRIBERS):
            subscribe: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channels[index % CONNECTIONS].unary_stream(
                f"/{BUS_SERVICE}/Subscribe", request_serializer=_same, response_deserializer=_same
            )
            calls.append(subscribe(request))
        await asyncio.wait_for(asyncio.gather(*(call.initial_metadata() for call in calls)), 60)
        subscribed = rss_mib(broker.pid)
        stalled_rate, last_rate, stalled_health, peak = await publish_for(address, STALLED, broker.pid)
        held = rss_mib(broker.pid)
        for channel in channels:
            await channel.close()
        await asyncio.sleep(2)  # the broker lets go of the closed streams
        after = rss_mib(broker.pid)
    finally:
        if broker.returncode is None:
            broker.terminate()
        try:
            await asyncio.wait_for(broker.wait(), 10)
        except TimeoutError:
            broker.kill()
            await broker.wait()
    per = (peak - subscribed) * 1024 / SUBSCRIBERS
    print(f"\nthe broker with {SUBSCRIBERS} subscribers that stop reading (stall bound {STALL:g} s), 4 KB events")
    print(f"  RSS before {before:7.1f} MiB, subscribed {subscribed:7.1f} MiB, peak while stalled {peak:7.1f} MiB")
    print(f"  RSS past the cut-off {held:7.1f} MiB, after they closed {after:7.1f} MiB")
    print(f"  peak over subscribed: {per:6.1f} KiB a non-reading subscriber")
    print(
        f"  publish rate {calm_rate:7.0f}/s with none, {stalled_rate:7.0f}/s with them "
        f"({stalled_rate / calm_rate:.2f}x), {last_rate:7.0f}/s in the last second ({last_rate / calm_rate:.2f}x)"
    )
    print(
        f"  health check {statistics.median(calm_health):6.1f} ms median with none; with them "
        f"{statistics.median(stalled_health):6.1f} ms median, {max(stalled_health):6.1f} ms at worst"
    )


def cli() -> None:
    """No options but ``--quick``: fewer subscribers, a shorter stall bound."""
    harness.run(main())


if __name__ == "__main__":
    harness.main(cli, "benchmarks.subscribers")
