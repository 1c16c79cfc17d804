"""The spans of a few delegations, recorded in a process of its own by an in-memory exporter.

A tracer provider can be set only once per process, and the test process must keep none, so
``python -m tests.helpers.recorded_spans SCENARIO`` runs one and prints one JSON list: each span
ended (name, ids, parent, status, attributes). SCENARIO ``fallback``: a delegation to a down
agent that its fallback answers, first as the root of its trace, then inside a span of the
caller's. ``unknown``: a delegation of an action the agent does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kosmos_grpc import ActionNotFound, AgentServer, Coordinator, Registry, ServerSettings
from kosmos_grpc.resilience import Resilience, ResiliencePolicy, RetryPolicy
from tests.conftest import free_port
from tests.helpers.agents import Echo

EXPORTER = InMemorySpanExporter()


class Dionysus(Echo):
    """Echo, serving as the fallback."""

    name = "dionysus"


def _span(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else "",
        "status": span.status.status_code.name,
        "attributes": {key: value for key, value in (span.attributes or {}).items() if isinstance(value, str | int)},
    }


async def fallback() -> None:
    registry = Registry({"athena": f"127.0.0.1:{free_port()}"})  # nothing listens there
    server = AgentServer(Dionysus(), ServerSettings(grace_seconds=1), registry=registry)
    await server.start()
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=2, initial=0.01, jitter=0), fallbacks={"athena": "dionysus"})
    try:
        async with Coordinator(registry, resilience=Resilience(policy)) as client:
            await client.delegate("athena", "echo", {"q": 1}, timeout_ms=10_000)
            with trace.get_tracer("tests.recorded").start_as_current_span("caller"):
                await client.delegate("athena", "echo", {"q": 2}, timeout_ms=10_000)
    finally:
        await server.stop(0)


async def unknown() -> None:
    registry = Registry()
    server = AgentServer(Echo(), ServerSettings(grace_seconds=1), registry=registry)
    await server.start()
    try:
        async with Coordinator(registry) as client:
            with contextlib.suppress(ActionNotFound):
                await client.delegate("echo", "no_such_action", timeout_ms=10_000)
    finally:
        await server.stop(0)


SCENARIOS = {"fallback": fallback, "unknown": unknown}


async def main(scenario: str) -> None:
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    await SCENARIOS[scenario]()
    provider.shutdown()
    print(json.dumps([_span(span) for span in EXPORTER.get_finished_spans()]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
