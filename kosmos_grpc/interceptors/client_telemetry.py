"""The client's telemetry: a span per delegation (its context passed on in the call's metadata) and its metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc.interceptors.outbound import OpenStream, OutboundInterceptor, failure_of, status_name
from kosmos_grpc.telemetry.metrics import UNKNOWN_LABEL, DelegationMetrics
from kosmos_grpc.telemetry.tracing import end_span, start_client_span, trace_id_hex

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from opentelemetry.trace import Span

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.interceptors.outbound import Delegation

__all__ = ["ClientTelemetry"]


class ClientTelemetry(OutboundInterceptor):
    """``delegate.<agent>.<action>`` spans, child of the current one, and ``agent_delegation_*`` metrics.

    The span covers retries and fallbacks; the envelope's trace_id becomes the span's trace id.
    """

    def __init__(self, next: OutboundInterceptor, source: str) -> None:
        super().__init__(next)
        self.metrics = DelegationMetrics(source)

    async def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> agent_pb2.ExecuteResponse:
        span = self._start(call)
        started = time.monotonic()
        code, failure = "OK", None
        try:
            return await self.next.delegate(call)
        except BaseException as error:
            code, failure = status_name(error), failure_of(error)
            raise
        finally:
            self._done(span, call.agent, call.action, code, failure, started)

    def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> Coroutine[Any, Any, OpenStream]:
        span = self._start(call)
        started = time.monotonic()

        async def ended(code: str, error: BaseException | None) -> None:
            self._done(span, call.agent, call.action, code, error, started)

        call.at_end(ended)
        return self.next.open_stream(call)

    def _start(self, call: Delegation[agent_pb2.ExecuteRequest] | Delegation[agent_pb2.StreamRequest]) -> Span:
        """The delegation's span; its context goes out in the call's metadata."""
        agent, action, message = call.agent, call.action, call.request.message
        span, call.metadata = start_client_span(
            lambda: (
                f"delegate.{agent}.{action}",
                {"agent.name": agent, "agent.action": action, "kosmos.correlation_id": message.correlation_id},
            )
        )
        trace_id = trace_id_hex(span)
        if trace_id:
            message.trace_id = trace_id
        call.span = span
        return span

    def _done(
        self, span: Span, agent: str, action: str, code: str, error: BaseException | None, started: float
    ) -> None:
        """Record how a delegation ended, on its span and in the metrics."""
        # An agent or action that does not exist is counted under one label, so that bad requests
        # (a name in a payload, say) cannot make series without end.
        if code == "NOT_FOUND":
            agent = action = UNKNOWN_LABEL
        elif code == "UNIMPLEMENTED":
            action = UNKNOWN_LABEL
        self.metrics.record(agent, action, code, time.monotonic() - started)
        end_span(span, code, error)
