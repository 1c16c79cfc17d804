"""The client's telemetry: a span per delegation (its context passed on in the call's metadata) and its metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from kosmos_grpc.interceptors.outbound import OpenStream, OutboundInterceptor, failure_of, status_name
from kosmos_grpc.telemetry.metrics import UNKNOWN_LABEL, DelegationMetrics
from kosmos_grpc.telemetry.tracing import end_span, start_client_span, trace_id_hex

if TYPE_CHECKING:
    from collections.abc import Container, Coroutine

    from opentelemetry.trace import Span

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.errors import KosmosError
    from kosmos_grpc.interceptors.outbound import Delegation

__all__ = ["ClientTelemetry"]

Call = Any  # Delegation[ExecuteRequest] | Delegation[StreamRequest]


class ClientTelemetry(OutboundInterceptor):
    """``delegate.<agent>.<action>`` spans, child of the current one, and ``agent_delegation_*`` metrics.

    ``known``: the agents whose names may label the metrics (the registry). The span covers
    retries; the envelope's trace_id becomes the span's trace id. A fallback ends
    the target's span and metrics with the target's own failure (UNAVAILABLE, or its open
    circuit), and its call is a delegation of its own: ``delegate.<fallback>.<action>`` (with
    ``kosmos.fallback_for``), counted under the fallback's name.
    """

    def __init__(self, next: OutboundInterceptor, source: str, known: Container[str] | None = None) -> None:
        super().__init__(next)
        self.metrics = DelegationMetrics(source, known)

    async def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> agent_pb2.ExecuteResponse:
        leg = _Leg(self, call)
        code, failure = "OK", None
        try:
            return await self.next.delegate(call)
        except BaseException as error:
            code, failure = status_name(error), failure_of(error)
            raise
        finally:
            self._done(leg.span, leg.agent, call.action, code, failure, leg.started)

    def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> Coroutine[Any, Any, OpenStream]:
        leg = _Leg(self, call)

        async def ended(code: str, error: BaseException | None) -> None:
            self._done(leg.span, leg.agent, call.action, code, error, leg.started)

        call.at_end(ended)
        return self.next.open_stream(call)

    def _start(self, call: Call, agent: str, fallback_for: str | None = None) -> Span:
        """The span of the delegation's call to ``agent``; its context goes out in the call's metadata."""
        action, message = call.action, call.request.message

        def describe() -> tuple[str, dict[str, Any]]:
            attributes = {"agent.name": agent, "agent.action": action, "kosmos.correlation_id": message.correlation_id}
            if fallback_for is not None:
                attributes["kosmos.fallback_for"] = fallback_for
            return f"delegate.{agent}.{action}", attributes

        span, call.metadata = start_client_span(describe)
        trace_id = trace_id_hex(span)
        if trace_id:
            message.trace_id = trace_id
        call.span = span
        return span

    def _done(
        self, span: Span, agent: str, action: str, code: str, error: BaseException | None, started: float
    ) -> None:
        """Record how a delegation ended, on its span and in the metrics."""
        # An agent or action that does not exist is counted under one label, and names from a
        # request only as far as the labels allow (see telemetry.labels), so that bad requests (a
        # name in a payload, say) cannot make series without end; the span is named the same (the
        # name asked for is in its exception's message).
        if code == "NOT_FOUND":
            agent = action = UNKNOWN_LABEL
        elif code == "UNIMPLEMENTED":
            action = UNKNOWN_LABEL
        labelled = self.metrics.record(agent, action, code, time.monotonic() - started)
        if labelled != (agent, action) or code in ("NOT_FOUND", "UNIMPLEMENTED"):
            _rename(span, *labelled)
        end_span(span, code, error)


class _Leg:
    """The delegation's call to one agent: the one asked, then each fallback tried in its place.

    Told of a fallback (it is the delegation's fallback callback), it ends the failed agent's
    span and metrics with its failure and begins the fallback's.
    """

    __slots__ = ("agent", "call", "span", "started", "telemetry")

    def __init__(self, telemetry: ClientTelemetry, call: Call) -> None:
        self.telemetry = telemetry
        self.call = call
        self.agent: str = call.agent
        self.span = telemetry._start(call, self.agent)
        self.started = time.monotonic()
        call.at_fallback(self)

    def __call__(self, target: str, error: KosmosError, fallback: str) -> None:
        telemetry, call = self.telemetry, self.call
        telemetry._done(self.span, target, call.action, error.code.name, error, self.started)
        # A sibling of the failed call's span, in the same trace; a delegation that began its
        # trace has no parent to share, and its fallback's span becomes the failed span's child.
        parent = otel_context.get_current()
        if not trace.get_current_span(parent).get_span_context().is_valid:
            parent = trace.set_span_in_context(self.span, parent)
        token = otel_context.attach(parent)
        try:
            self.span = telemetry._start(call, fallback, fallback_for=target)
        finally:
            otel_context.detach(token)
        self.agent = fallback
        self.started = time.monotonic()


def _rename(span: Span, agent: str, action: str) -> None:
    """Name ``span`` as the metrics label its call: ``_unknown`` for what the agent does not have."""
    if span.is_recording():
        span.update_name(f"delegate.{agent}.{action}")
        span.set_attribute("agent.name", agent)
        span.set_attribute("agent.action", action)
