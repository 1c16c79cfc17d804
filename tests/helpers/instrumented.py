"""Calls through opentelemetry-instrumentation-grpc's interceptors, in a process of its own.

A tracer provider can be set only once per process, and the test process must keep none (its
other tests check the mesh without an SDK), so each scenario runs here: ``python -m
tests.helpers.instrumented SCENARIO SETUP``. It prints one JSON object: for each call made, the
spans recorded during it (an in-memory exporter on the provider) and what the call returned.

SETUP ``kosmos``: the provider :func:`configure_tracing` sets up in a process that exports
(to a real OTLP receiver here), with the in-memory exporter added. ``application``: a provider
the application sets up itself, the one the mesh then uses as is.

SCENARIO ``plain``: an agent served without interceptors, called over a plain ``grpc.aio``
channel with the library's client interceptors and the generated stub. ``switch``: the agent's
server and the coordinator both get the library's interceptors; one Execute and one Stream.
``untraced``: an agent with the library's server interceptor, called over a channel without
interceptors, so that no trace context comes with the call. ``bystander``: a server started
inside a span of the application's, with an interceptor that makes no span, called by a
coordinator with the library's client interceptors, then over a channel without interceptors.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kosmos_grpc import AgentServer, Coordinator, Registry, ServerSettings, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, agent_pb2_grpc
from kosmos_grpc.envelope import struct_to_dict
from kosmos_grpc.telemetry import configure_tracing, tracing
from kosmos_grpc.telemetry.instrumentation import grpc_client_interceptors, grpc_server_interceptors
from tests.helpers.agents import Echo
from tests.helpers.otlp import OtlpReceiver

EXPORTER = InMemorySpanExporter()


class PassThrough(grpc.aio.ServerInterceptor):
    """An interceptor that makes no span: the call's own span must not adopt whatever is current."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        return await continuation(details)


def _span(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else "",
        "status": span.status.status_code.name,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": {key: value for key, value in (span.attributes or {}).items() if isinstance(value, str | int)},
    }


async def _recorded(call: Callable[[], Awaitable[Any]], spans: int) -> dict[str, Any]:
    """Make the call; the spans ended meanwhile (waiting, bounded, for ``spans`` of them) and its answer."""
    EXPORTER.clear()
    answer = await call()
    for _ in range(250):
        if len(EXPORTER.get_finished_spans()) >= spans:
            break
        await asyncio.sleep(0.02)
    return {"spans": [_span(span) for span in EXPORTER.get_finished_spans()], "answer": answer}


async def _whoami(address: str, interceptors: list[grpc.aio.ClientInterceptor] | None, spans: int) -> dict[str, Any]:
    """One Execute of echo.whoami with the generated stub over a channel of its own, recorded."""
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def execute() -> dict[str, Any]:
            request = agent_pb2.ExecuteRequest(message=new_message("whoami", {}, target_agent="echo"))
            reply = await stub.Execute(request, timeout=10)
            return struct_to_dict(reply.response.result)

        return await _recorded(execute, spans)


async def plain() -> dict[str, Any]:
    server = AgentServer(Echo(), ServerSettings(grace_seconds=1))
    await server.start()
    try:
        return {"execute": await _whoami(server.address, grpc_client_interceptors(), 2)}
    finally:
        await server.stop(0)


async def untraced() -> dict[str, Any]:
    server = AgentServer(Echo(), ServerSettings(grace_seconds=1), grpc_interceptors=grpc_server_interceptors())
    await server.start()
    try:
        return {"execute": await _whoami(server.address, None, 2)}
    finally:
        await server.stop(0)


async def switch() -> dict[str, Any]:
    registry = Registry()
    server = AgentServer(
        Echo(), ServerSettings(grace_seconds=1), registry=registry, grpc_interceptors=grpc_server_interceptors()
    )
    await server.start()
    try:
        async with Coordinator(registry, grpc_interceptors=grpc_client_interceptors()) as client:

            async def execute() -> dict[str, Any]:
                return (await client.delegate("echo", "whoami", timeout_ms=10_000)).result

            async def stream() -> list[dict[str, Any]]:
                return [chunk.data async for chunk in client.stream("echo", "count", {"n": 3}, timeout_ms=10_000)]

            return {"execute": await _recorded(execute, 4), "stream": await _recorded(stream, 4)}
    finally:
        await server.stop(0)


async def bystander() -> dict[str, Any]:
    registry = Registry()
    # The server's calls run in tasks that inherit this span as the current one.
    with trace.get_tracer("tests.bystander").start_as_current_span("server started in") as started_in:
        server = AgentServer(
            Echo(), ServerSettings(grace_seconds=1), registry=registry, grpc_interceptors=[PassThrough()]
        )
        await server.start()
    try:
        async with Coordinator(registry, grpc_interceptors=grpc_client_interceptors()) as client:

            async def execute() -> dict[str, Any]:
                return (await client.delegate("echo", "whoami", timeout_ms=10_000)).result

            called = await _recorded(execute, 3)
        return {
            "execute": called,
            "untraced": await _whoami(server.address, None, 1),
            "started_in": format(started_in.get_span_context().span_id, "016x"),
        }
    finally:
        await server.stop(0)


SCENARIOS = {"plain": plain, "switch": switch, "untraced": untraced, "bystander": bystander}


async def main(scenario: str, setup: str) -> None:
    receiver = None
    if setup == "kosmos":
        receiver = OtlpReceiver()
        await receiver.start()
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        provider = configure_tracing("instrumented")
        assert provider is not None
    else:
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    try:
        result = await SCENARIOS[scenario]()
    finally:
        # In a thread: the last spans go to the receiver, which this thread's loop serves.
        await asyncio.to_thread(provider.shutdown)
        if receiver is not None:
            await receiver.stop()
    shortcuts = tracing._SHORTCUTS
    result["shortcuts"] = {name: getattr(shortcuts, name) for name in ("w3c", "children", "roots", "nothing_recorded")}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
