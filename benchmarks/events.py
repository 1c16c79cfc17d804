"""Events: the embedded broker, the NATS backend against raw nats-py, and publish cost at scale.

In one run: events/s from one publisher to one subscriber and to ten, through the embedded
broker in its own process, through the NATS backend, and through raw nats-py on the same
nats-server (raw nats-py sends the same envelope bytes, built once); and the broker's cost
to publish one event with no other subscriptions and with 10,000 that do not match it.
Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.msg import Msg

from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bus import Event, EventBusServicer, GrpcEventBus, NatsEventBus, Subscription
from kosmos_grpc.envelope import new_message
from kosmos_grpc.subjects import AUDIT_LOG, USER_ACTION

from . import harness
from .harness import paired, processes, sized

EVENTS = sized(20_000, 2_000)
ROUNDS = sized(5, 1)


async def rate(address: str, subscribers: int) -> float:
    """Events/s from one publisher until every subscriber has every event, through the broker."""
    async with GrpcEventBus(address) as publisher, GrpcEventBus(address) as receiver:
        return await _rate(publisher, receiver, subscribers)


async def nats_rate(url: str, subscribers: int) -> float:
    """The same through the NATS backend."""
    async with NatsEventBus(url, durable=()) as publisher, NatsEventBus(url, durable=()) as receiver:
        return await _rate(publisher, receiver, subscribers)


async def raw_nats_rate(url: str, subscribers: int) -> float:
    """The same with nats-py alone: the envelope's bytes built once, counted on arrival."""
    envelope = new_message("", {"i": 0}).SerializeToString()
    publisher, receiver = await nats.connect(url), await nats.connect(url)
    try:
        counts = [0] * subscribers
        done = [asyncio.Event() for _ in range(subscribers)]

        def counter(index: int) -> Callable[[Msg], Awaitable[None]]:
            async def count(msg: Msg) -> None:
                counts[index] += 1
                if counts[index] == EVENTS:
                    done[index].set()

            return count

        for index in range(subscribers):
            await receiver.subscribe("kosmos.events.>", cb=counter(index))
        await receiver.flush()
        started = time.perf_counter()
        for _ in range(EVENTS):
            await publisher.publish(USER_ACTION, envelope)
        await publisher.flush()
        await asyncio.wait_for(asyncio.gather(*(d.wait() for d in done)), 120)
        return EVENTS / (time.perf_counter() - started)
    finally:
        await publisher.close()
        await receiver.close()


async def _rate(
    publisher: GrpcEventBus | NatsEventBus, receiver: GrpcEventBus | NatsEventBus, subscribers: int
) -> float:
    subscriptions = [await receiver.subscribe("kosmos.events.>", capacity=EVENTS) for _ in range(subscribers)]

    async def drain(subscription: Subscription[Event]) -> None:
        for _ in range(EVENTS):
            await anext(subscription)

    started = time.perf_counter()
    readers = [asyncio.create_task(drain(s)) for s in subscriptions]
    for i in range(EVENTS):
        await publisher.publish(USER_ACTION, {"i": i})
    await publisher.flush()
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    elapsed = time.perf_counter() - started
    assert all(s.dropped == 0 for s in subscriptions)
    return EVENTS / elapsed


def publish_cost_ns(subscriptions: int) -> float:
    """The broker's own work to publish one audit event, with ``subscriptions`` that do not match."""
    servicer = EventBusServicer()
    calls, rounds = sized(20_000, 2_000), sized(9, 3)
    servicer.bus.subscribe(AUDIT_LOG, capacity=calls * rounds)  # room for all: the delivery path is measured
    for i in range(subscriptions):
        servicer.bus.subscribe(f"kosmos.agents.agent{i}.requests" if i % 2 else f"tenant{i}.events.>")
    event = events_pb2.Event(subject=AUDIT_LOG)
    new_message("", {"who": "zeus"}, into=event.message)
    samples = [timeit.timeit(lambda: servicer.publish(event), number=calls) / calls * 1e9 for _ in range(rounds)]
    return statistics.median(samples)


async def nats_server() -> tuple[asyncio.subprocess.Process, str, str]:
    """A nats-server with JetStream on a free loopback port: the process, its URL and its store."""
    store = tempfile.mkdtemp(prefix="kosmos-bench-nats-")
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    server = await asyncio.create_subprocess_exec(
        binary, "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", store, stderr=asyncio.subprocess.PIPE
    )
    assert server.stderr is not None
    url = ""
    while True:
        line = (await asyncio.wait_for(server.stderr.readline(), 20)).decode()
        if not line:
            raise RuntimeError("nats-server did not start")
        if "Listening for client connections on" in line:
            url = "nats://127.0.0.1:" + line.rsplit(":", 1)[1].strip()
        if "Server is ready" in line:
            return server, url, store


async def main() -> None:
    server, url, store = await nats_server()
    try:
        with processes() as start:
            address = start("benchmarks.serve", "broker")
            results: dict[str, list[float]] = {}
            for _ in range(ROUNDS):  # the three ways, back to back in each round
                for subscribers in (1, 10):
                    for name, measure in (("broker", rate), ("nats", nats_rate), ("raw", raw_nats_rate)):
                        where = address if name == "broker" else url
                        results.setdefault(f"{name} {subscribers}", []).append(await measure(where, subscribers))
    finally:
        server.kill()
        await server.wait()
        shutil.rmtree(store, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    ratio = {n: paired(results[f"nats {n}"], results[f"raw {n}"]) for n in (1, 10)}
    one, ten = median["broker 1"], median["broker 10"]
    alone, crowded = publish_cost_ns(0), publish_cost_ns(10_000)
    print(f"\nevents through the embedded broker ({EVENTS} events, median of {ROUNDS} runs)")
    print(f"  one publisher, one subscriber   {one:10.0f} events/s   target >= 20,000")
    print(f"  one publisher, ten subscribers  {ten:10.0f} events/s   ({ten * 10:.0f} deliveries/s)")
    print("events through NATS: the NATS backend against raw nats-py on the same server")
    for n in (1, 10):
        print(
            f"  to {n:>2} subscriber(s): backend {median[f'nats {n}']:8.0f}/s, raw nats-py {median[f'raw {n}']:8.0f}/s,"
            f"  {ratio[n]:.2f}x   target >= 0.8x"
        )
    print("the broker's cost to publish one event (validate, match, frame), one matching subscription")
    print(f"  no other subscriptions                {alone:8.0f} ns")
    print(f"  10,000 non-matching subscriptions     {crowded:8.0f} ns   {crowded / alone:.2f}x   target <= 1.2x")


def cli() -> None:
    """No options but ``--quick``: fewer events and rounds."""
    harness.run(main())


if __name__ == "__main__":
    harness.main(cli, "benchmarks.events")
