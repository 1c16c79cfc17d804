"""Telemetry in one process: trace context passed on without an SDK, W3C parsing, gauges, and context hygiene."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY

from kosmos_grpc.bus import BrokerServer, Event, GrpcEventBus
from kosmos_grpc.subjects import USER_ACTION
from kosmos_grpc.telemetry import current_call
from kosmos_grpc.telemetry.tracing import parse_traceparent
from tests.conftest import Mesh
from tests.helpers.agents import Echo, Flaky

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-00",
        f"00-{TRACE}-{SPAN}-03",  # flags beyond "sampled" are kept
        f"  00-{TRACE}-{SPAN}-01\t",  # blanks around
        f"01-{TRACE}-{SPAN}-01-future",  # a later version may add fields
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 may not
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex is not W3C
        f"00-{'0' * 32}-{SPAN}-01",  # the invalid trace id
        f"00-{TRACE}-{'0' * 16}-01",  # the invalid span id
        f"00-{TRACE[:-1]}_-{SPAN}-01",
        f"00-{TRACE}-{SPAN}",
        "",
    ],
)
def test_traceparent_is_read_as_opentelemetrys_propagator_reads_it(header: str) -> None:
    ours = parse_traceparent([("traceparent", header), ("tracestate", "vendor=a")])
    theirs = TraceContextTextMapPropagator().extract({"traceparent": header, "tracestate": "vendor=a"})
    from opentelemetry import trace

    expected = trace.get_current_span(theirs).get_span_context()
    if not expected.is_valid:
        assert ours is None
        return
    assert ours is not None
    assert not isinstance(ours, str)
    assert (ours.trace_id, ours.span_id, int(ours.flags)) == (
        expected.trace_id,
        expected.span_id,
        int(expected.trace_flags),
    )
    assert ours.state is not None
    assert ours.state.to_header() == expected.trace_state.to_header()


def test_baggage_sends_the_context_to_the_full_propagators() -> None:
    assert parse_traceparent([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("baggage", "k=v")]) == "baggage"


async def test_without_an_sdk_the_callers_trace_is_passed_on_to_every_hop(mesh: Mesh) -> None:
    # This process sets no global tracer provider: the mesh makes no spans, yet passes context on.
    await mesh.serve(Echo())
    tracer = TracerProvider().get_tracer("test")
    async with mesh.client() as client:
        with tracer.start_as_current_span("caller") as caller:
            response = await client.delegate("echo", "whoami")
    assert response.result["trace_id"] == format(caller.get_span_context().trace_id, "032x")


async def test_a_stream_left_mid_way_ends_without_a_context_error(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    server = await mesh.serve(Echo())
    tracer = TracerProvider().get_tracer("test")
    caplog.set_level(logging.ERROR, logger="opentelemetry.context")
    async with mesh.client() as client:
        for _ in range(5):
            with tracer.start_as_current_span("caller"):
                async for chunk in client.stream("echo", "count", {"n": 200_000}):
                    if chunk.sequence == 2:
                        break
    for _ in range(250):  # bounded: until the server has closed every stream
        if server.servicer.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert server.servicer.in_flight == 0
    assert not [r for r in caplog.records if r.name == "opentelemetry.context"], caplog.text


async def test_calls_in_flight_are_shown_while_they_run(mesh: Mesh) -> None:
    flaky = Flaky()
    flaky.gate.clear()
    await mesh.serve(flaky)
    labels = {"agent": "flaky"}
    async with mesh.client() as client:
        call = asyncio.create_task(client.delegate("flaky", "effect"))
        await asyncio.wait_for(flaky.ran.wait(), 5)
        assert REGISTRY.get_sample_value("kosmos_calls_in_flight", labels) == 1
        flaky.gate.set()
        await asyncio.wait_for(call, 5)
    assert REGISTRY.get_sample_value("kosmos_calls_in_flight", labels) == 0


async def test_an_event_handler_is_not_part_of_the_call_that_subscribed() -> None:
    broker = BrokerServer(address="127.0.0.1:0")
    await broker.start()
    seen: list[object] = []
    handled = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(current_call.get())
        handled.set()

    try:
        async with GrpcEventBus(broker.address, source_agent="test") as bus:
            token = current_call.set("a call being served")  # type: ignore[arg-type]
            try:
                subscription = await bus.subscribe(USER_ACTION, handler)
            finally:
                current_call.reset(token)
            for _ in range(100):  # bounded: until the broker has the subscription
                await bus.publish(USER_ACTION, {"n": 1}, acknowledge=True)
                if handled.is_set():
                    break
                await asyncio.sleep(0.02)
            await subscription.unsubscribe()
    finally:
        await broker.stop(0)
    assert seen
    assert set(seen) == {None}
