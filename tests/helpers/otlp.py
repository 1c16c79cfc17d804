"""A real OTLP/gRPC trace receiver for tests: the collector's TraceService on a free loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, as the receiver got it."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # 2: ERROR
    events: tuple[str, ...] = ()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.receiver.spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            events=tuple(event.name for event in span.events),
                        )
                    )
        self.receiver.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects every span exported to it; ``endpoint`` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.arrived = asyncio.Event()
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)

    async def wait_for(self, names: set[str], within: float = 20) -> list[ReceivedSpan]:
        """Every span received once spans of all ``names`` have arrived (failing after ``within`` seconds)."""
        return await self.wait_until(lambda spans: names <= {span.name for span in spans}, within)

    async def wait_until(self, done: Callable[[list[ReceivedSpan]], bool], within: float = 20) -> list[ReceivedSpan]:
        """Every span received once ``done`` says they are enough (failing after ``within`` seconds)."""
        async with asyncio.timeout(within):
            while not done(self.spans):
                self.arrived.clear()
                await self.arrived.wait()
        return list(self.spans)
