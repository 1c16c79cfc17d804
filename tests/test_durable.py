"""Durable subjects on NATS JetStream: missed events caught up, bounded redelivery, dead letters, dedupe."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from kosmos_grpc.bus import Event, NatsEventBus
from kosmos_grpc.envelope import new_message_id
from kosmos_grpc.subjects import AUDIT_LOG

from .conftest import NatsServer


class Recorder:
    """A durable handler that records what it sees, failing on the events it is told to."""

    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[dict[str, object]] = []
        self.distinct: list[dict[str, object]] = []  # first sight of each message_id, in order
        self.fail_times = fail_times
        self.attempts: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.attempts[event.message_id] = self.attempts.get(event.message_id, 0) + 1
        self.changed.set()
        if self.attempts[event.message_id] <= self.fail_times:
            raise RuntimeError("not yet")
        if event.message_id not in {e["_id"] for e in self.distinct}:
            self.distinct.append({"_id": event.message_id, **event.payload})
        self.seen.append(event.payload)

    def distinct_payloads(self) -> list[dict[str, object]]:
        return [{k: v for k, v in e.items() if k != "_id"} for e in self.distinct]

    async def wait_for(self, count: int, seconds: float = 10) -> None:
        """Until ``count`` different events have been handled."""
        async with asyncio.timeout(seconds):
            while len(self.distinct) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_a_durable_subscriber_that_was_down_receives_what_it_missed_in_order(nats_server: NatsServer) -> None:
    async with NatsEventBus(nats_server.url, source_agent="test") as bus:
        first = Recorder()
        subscription = await bus.subscribe_durable(AUDIT_LOG, "auditor", first)
        await bus.publish(AUDIT_LOG, {"n": 0})
        await first.wait_for(1)
        await subscription.unsubscribe()  # the auditor goes away...
        for n in range(1, 6):
            await bus.publish(AUDIT_LOG, {"n": n})  # ...and misses these
        second = Recorder()
        await bus.subscribe_durable(AUDIT_LOG, "auditor", second)
        await second.wait_for(5)
        assert second.seen == [{"n": n} for n in range(1, 6)]


async def test_a_failing_handler_gets_the_event_again_then_succeeds(nats_server: NatsServer) -> None:
    async with NatsEventBus(nats_server.url, source_agent="test", max_deliveries=5) as bus:
        flaky = Recorder(fail_times=2)
        subscription = await bus.subscribe_durable(AUDIT_LOG, "flaky", flaky)
        message_id = await bus.publish(AUDIT_LOG, {"n": 1})
        await flaky.wait_for(1)
        assert flaky.attempts[message_id] == 3
        assert subscription.handler_errors == 2


async def test_an_event_that_keeps_failing_goes_to_the_dead_letter_subject(nats_server: NatsServer) -> None:
    async with NatsEventBus(nats_server.url, source_agent="test", max_deliveries=3) as bus:
        dead = await bus.subscribe("kosmos.deadletter.>")
        hopeless = Recorder(fail_times=100)
        await bus.subscribe_durable(AUDIT_LOG, "hopeless", hopeless)
        message_id = await bus.publish(AUDIT_LOG, {"poison": True})
        async with asyncio.timeout(10):
            letter = await anext(dead)
        assert letter.subject == "kosmos.deadletter." + AUDIT_LOG
        assert letter.message_id == message_id
        assert letter.payload == {"poison": True}
        assert hopeless.attempts[message_id] == 3, "delivered at most max_deliveries times"


async def test_a_duplicate_message_id_is_delivered_once(nats_server: NatsServer) -> None:
    async with NatsEventBus(nats_server.url, source_agent="test") as bus:
        recorder = Recorder()
        await bus.subscribe_durable(AUDIT_LOG, "dedupe", recorder)
        message_id = new_message_id()
        await bus.publish(AUDIT_LOG, {"copy": 1}, message_id=message_id)
        await bus.publish(AUDIT_LOG, {"copy": 2}, message_id=message_id)  # a retry of the same event
        await bus.publish(AUDIT_LOG, {"after": True})
        await recorder.wait_for(2)
        assert recorder.seen == [{"copy": 1}, {"after": True}]


async def test_durable_events_published_while_the_server_was_down_are_not_lost(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kosmos_grpc.bus.nats_backend")
    async with NatsEventBus(nats_server.url, source_agent="test") as bus:
        recorder = Recorder()
        await bus.subscribe_durable(AUDIT_LOG, "survivor", recorder)
        await bus.publish(AUDIT_LOG, {"n": 0})
        await recorder.wait_for(1)
        await nats_server.stop(clean=False)
        publishing = asyncio.create_task(bus.publish(AUDIT_LOG, {"n": 1}))  # retried until the stream takes it
        for _ in range(200):  # bounded: until a first attempt has failed (after its 2 s) and it tries again
            if any("trying again" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert any("trying again" in r.getMessage() for r in caplog.records), "no retry within 10 s"
        assert not publishing.done(), "the publish waits for JetStream rather than dropping the event"
        await nats_server.start()  # the same port and store
        await asyncio.wait_for(publishing, 30)
        await recorder.wait_for(2, seconds=30)
        # Nothing lost, in order. A nats_server killed before it stored the first ack may hand that
        # event over again: durable delivery is at least once, and the message_id tells them apart.
        assert recorder.distinct_payloads() == [{"n": 0}, {"n": 1}]


async def test_a_durable_handler_continues_the_publishers_trace(nats_server: NatsServer) -> None:
    tracer = TracerProvider().get_tracer("test")
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        done.set()

    async with NatsEventBus(nats_server.url, source_agent="test") as bus:
        await bus.subscribe_durable(AUDIT_LOG, "tracer", handler)
        with tracer.start_as_current_span("publisher") as publisher:
            await bus.publish(AUDIT_LOG, {"traced": True}, acknowledge=True)
        await asyncio.wait_for(done.wait(), 10)
    assert seen == [publisher.get_span_context().trace_id]
