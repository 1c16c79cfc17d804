"""Events: the embedded broker, the NATS backend against raw nats-py, and publish cost at scale.

In one run: events/s from one publisher to one subscriber and to ten, through the embedded
broker in its own process, through the NATS backend, and through raw nats-py on the same
nats-server (raw nats-py sends the same envelope bytes, built once); and the broker's cost
to publish one event with no other subscriptions and with 10,000 that do not match it, both
of one simple shape and of mixed shapes (literals, ``*`` anywhere, ``>``; shallow, and 13 tokens
deep sharing all but one token with the subject). Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import random
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


DEEP = ".".join(["kosmos", "events", *(f"t{i}" for i in range(2, 13))])  # 13 tokens


def mixed_patterns(count: int, subject: str = DEEP, seed: int = 1) -> list[str]:
    """``count`` patterns of mixed shapes, none matching ``subject``: literal, ``*`` in various
    positions, ``>``, shallow and as deep as the subject, many sharing all but one of its tokens."""
    rng = random.Random(seed)
    tokens = subject.split(".")
    shapes = []
    for i in range(count):
        kind = i % 6
        if kind == 0:  # shallow literal
            shapes.append(f"kosmos.agents.agent{i}.requests")
        elif kind == 1:  # shallow, wildcards first
            shapes.append(".".join(["*"] * rng.randint(0, 3) + [f"x{i}"]))
        elif kind == 2:  # shallow ">"
            shapes.append(f"tenant{i}.>" if i % 2 else f"kosmos.x{i}.>")
        else:  # deep: the subject's tokens or "*", one of them replaced, ">" at the end now and then
            deep = [token if rng.random() < 0.5 else "*" for token in tokens]
            deep[rng.randrange(len(deep)) if kind == 3 else len(deep) - 1] = f"z{i}"
            if kind == 5:
                cut = rng.randrange(len(deep) // 2, len(deep))
                deep[cut] = f"z{i}"
                deep = [*deep[: cut + 1], ">"]
            shapes.append(".".join(deep))
    return shapes


def mixed_cost_ns(subscriptions: int, *, fresh: bool = False) -> float:
    """The broker's work to publish one event on a 13-token subject, with ``subscriptions`` of
    mixed shapes that do not match it; ``fresh``: every publish on a subject not seen before."""
    servicer = EventBusServicer()
    calls, rounds = sized(20_000, 2_000), sized(9, 3)
    patterns = mixed_patterns(subscriptions)
    servicer.bus.subscribe(DEEP.rsplit(".", 1)[0] + ".*", capacity=calls * rounds)  # the one that matches
    for pattern in patterns:
        servicer.bus.subscribe(pattern)
    events = []
    for i in range(calls if fresh else 1):  # fresh: the last token differs each time
        event = events_pb2.Event(subject=f"{DEEP.rsplit('.', 1)[0]}.n{i}" if fresh else DEEP)
        new_message("", {"who": "zeus"}, into=event.message)
        events.append(event)
    assert all(servicer.publish(event) == 1 for event in events[:50]), "exactly one subscription matches"
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        for index in range(calls):
            servicer.publish(events[index % len(events)])
        samples.append((time.perf_counter() - began) / calls * 1e9)
        if fresh:
            servicer.bus._trie._forget()  # each round starts with nothing remembered
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
    print_mixed()


def print_mixed() -> None:
    """Publish cost on a 13-token subject with none and 10,000 non-matching subscriptions of mixed shapes."""
    none, mixed = mixed_cost_ns(0), mixed_cost_ns(10_000)
    fresh_none, fresh_mixed = mixed_cost_ns(0, fresh=True), mixed_cost_ns(10_000, fresh=True)
    print("the same on a 13-token subject, 10,000 non-matching subscriptions of mixed shapes")
    print("(literal, * in various positions, >; shallow, and deep sharing all but one token)")
    print(f"  none {none:8.0f} ns, mixed {mixed:8.0f} ns   {mixed / none:.2f}x   target <= 1.5x")
    print(
        f"  each subject new (no match kept): none {fresh_none:8.0f} ns, mixed {fresh_mixed:8.0f} ns"
        f"   {fresh_mixed / fresh_none:.2f}x"
    )


def cli() -> None:
    """No options but ``--quick``: fewer events and rounds."""
    harness.run(main())


if __name__ == "__main__":
    harness.main(cli, "benchmarks.events")
