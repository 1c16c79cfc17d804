"""The server's telemetry: a span per served call continuing the caller's trace, log fields, and gauges."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc._grpc import AGENT_SERVICE
from kosmos_grpc.errors import KosmosError
from kosmos_grpc.interceptors.inbound import InboundInterceptor
from kosmos_grpc.telemetry.metrics import CALLS_IN_FLIGHT, QUEUE_DEPTH, watch
from kosmos_grpc.telemetry.tracing import finish_span, start_server_span, trace_id_hex

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine

    from opentelemetry.trace import Span

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["ServerTelemetry"]


class ServerTelemetry(InboundInterceptor):
    """``execute|stream.<agent>.<action>`` SERVER spans, current while the handler runs, and the gauges.

    ``running`` and ``waiting`` are read when ``kosmos_calls_in_flight`` and ``kosmos_queue_depth``
    are scraped, so the gauges cost the calls nothing.
    """

    def __init__(
        self,
        next: InboundInterceptor,
        agent: str,
        running: Callable[[], float],
        waiting: Callable[[], float],
        *,
        intercepted: bool = False,
    ) -> None:
        super().__init__(next)
        self.agent = agent
        #: Whether the server has ``grpc.aio`` interceptors, whose SERVER span for the call (a
        #: tracing interceptor's) the call's own span then goes inside.
        self.intercepted = intercepted
        self._unwatch = [watch(CALLS_IN_FLIGHT, agent, running), watch(QUEUE_DEPTH, agent, waiting)]

    def close(self) -> None:
        """Stop showing this server's calls in the gauges."""
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []
        super().close()

    async def execute(self, call: ServedCall) -> agent_pb2.ExecuteResponse:
        traced = self._trace("execute", call)
        try:
            reply = await self.next.execute(call)
        except KosmosError as error:
            finish_span(traced, error.code.name, error)
            raise
        except Exception as error:  # a fault of the chain's own (the servicer answers INTERNAL for it)
            finish_span(traced, "INTERNAL", error)
            raise
        except BaseException:  # cancelled: no failure of the call's
            finish_span(traced, "CANCELLED")
            raise
        finish_span(traced, "OK")
        return reply

    def open_stream(self, call: ServedCall) -> Coroutine[Any, Any, AsyncGenerator[Any, None]]:
        traced = self._trace("stream", call)
        if traced is not None:

            def ended(code: str, error: KosmosError | None, in_task: bool) -> None:
                # OK once every chunk is made, whatever becomes of the final marker. Closed from
                # another task (the caller gone), the context the span was made current in is
                # not the current one: it is left as it is.
                finish_span(traced, code, error, detach=in_task)

            call.at_end(ended)
        return self.next.open_stream(call)

    def _trace(self, rpc: str, call: ServedCall) -> tuple[Span, object] | None:
        """The call's SERVER span, continuing the caller's trace; None when there is no trace to follow.

        The envelope's trace_id becomes the trace's id.
        """
        message, agent = call.message, self.agent

        def describe() -> tuple[str, dict[str, Any]]:
            return f"{rpc}.{agent}.{message.action}", {
                "rpc.system": "grpc",
                "rpc.service": AGENT_SERVICE,
                "rpc.method": rpc.title(),
                "agent.name": agent,
                "agent.action": message.action,
                "kosmos.message_id": message.message_id,
                "kosmos.correlation_id": message.correlation_id,
            }

        traced = start_server_span(
            describe, call.context.invocation_metadata(), trace_id=message.trace_id, intercepted=self.intercepted
        )
        if traced is not None:
            trace_id = trace_id_hex(traced[0])
            if trace_id:
                message.trace_id = trace_id
        return traced
