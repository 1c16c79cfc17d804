"""Events through the embedded broker, and the cost of a publish among many subscriptions.

In one run: events/s from one publisher to one subscriber and to ten, through the embedded
broker in its own process; and the broker's cost to publish one event with no other
subscriptions and with 10,000 that do not match it. Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import timeit

from kosmos_grpc._proto.kosmos.v1 import events_pb2
from kosmos_grpc.bus import EventBusServicer, GrpcEventBus
from kosmos_grpc.envelope import new_message
from kosmos_grpc.subjects import AUDIT_LOG, USER_ACTION

EVENTS = 20_000
ROUNDS = 5
BROKER = """
import asyncio
from kosmos_grpc import runtime
from kosmos_grpc.bus import BrokerServer

async def main():
    broker = BrokerServer()
    await broker.start()
    print(broker.address, flush=True)
    await asyncio.sleep(3600)

runtime.run(main())
"""


async def rate(address: str, subscribers: int) -> float:
    """Events/s from one publisher until every subscriber has every event."""
    async with GrpcEventBus(address) as publisher, GrpcEventBus(address) as receiver:
        subscriptions = [await receiver.subscribe("kosmos.events.>", capacity=EVENTS) for _ in range(subscribers)]

        async def drain(subscription: object) -> None:
            for _ in range(EVENTS):
                await anext(subscription)  # type: ignore[call-overload]

        started = time.perf_counter()
        readers = [asyncio.create_task(drain(s)) for s in subscriptions]
        for i in range(EVENTS):
            await publisher.publish(USER_ACTION, {"i": i})
        await publisher.flush()
        await asyncio.wait_for(asyncio.gather(*readers), 120)
        elapsed = time.perf_counter() - started
        assert all(s.dropped == 0 for s in subscriptions)
        assert publisher.lost == 0
        return EVENTS / elapsed


def publish_cost_ns(subscriptions: int) -> float:
    """The broker's own work to publish one audit event, with ``subscriptions`` that do not match."""
    servicer = EventBusServicer()
    calls, rounds = 20_000, 9
    servicer.bus.subscribe(AUDIT_LOG, capacity=calls * rounds)  # room for all: the delivery path is measured
    for i in range(subscriptions):
        servicer.bus.subscribe(f"kosmos.agents.agent{i}.requests" if i % 2 else f"tenant{i}.events.>")
    event = events_pb2.Event(subject=AUDIT_LOG)
    new_message("", {"who": "zeus"}, into=event.message)
    samples = [timeit.timeit(lambda: servicer.publish(event), number=calls) / calls * 1e9 for _ in range(rounds)]
    return statistics.median(samples)


async def main() -> None:
    broker = await asyncio.create_subprocess_exec(sys.executable, "-c", BROKER, stdout=asyncio.subprocess.PIPE)
    try:
        assert broker.stdout is not None
        address = (await broker.stdout.readline()).decode().strip()
        one = statistics.median([await rate(address, 1) for _ in range(ROUNDS)])
        ten = statistics.median([await rate(address, 10) for _ in range(ROUNDS)])
    finally:
        broker.terminate()
        await broker.wait()
    alone, crowded = publish_cost_ns(0), publish_cost_ns(10_000)
    print(f"\nevents through the embedded broker ({EVENTS} events, median of {ROUNDS} runs)")
    print(f"  one publisher, one subscriber   {one:10.0f} events/s   target >= 20,000")
    print(f"  one publisher, ten subscribers  {ten:10.0f} events/s   ({ten * 10:.0f} deliveries/s)")
    print("the broker's cost to publish one event (validate, match, frame), one matching subscription")
    print(f"  no other subscriptions                {alone:8.0f} ns")
    print(f"  10,000 non-matching subscriptions     {crowded:8.0f} ns   {crowded / alone:.2f}x   target <= 1.2x")


if __name__ == "__main__":
    asyncio.run(main())
