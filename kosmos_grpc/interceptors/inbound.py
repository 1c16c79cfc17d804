"""The server's interceptor chain: what one served call is, and the base every inbound interceptor extends.

The servicer checks the envelope and finds the action, then hands the call to the chain; its
last link runs the handler. Each interceptor does one thing (a span, the memory of executed
calls, the priority queue, the deadline) around ``self.next``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine

    import grpc

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2, envelope_pb2
    from kosmos_grpc.agent import ActionSpec
    from kosmos_grpc.context import Context

__all__ = ["InboundInterceptor", "ServedCall"]


@dataclass(slots=True)
class ServedCall:
    """One call being served, its envelope checked and its action found.

    ``timer`` is the seconds our own deadline must enforce, None when gRPC's deadline suffices;
    an interceptor that makes the call wait (the priority queue) takes the wait off it.
    """

    message: envelope_pb2.AgentMessage
    context: grpc.aio.ServicerContext[Any, Any]
    spec: ActionSpec
    ctx: Context
    timer: float | None
    #: Whether the handler has begun to run (a call shed or cancelled while it waited has not).
    started: bool = False


class InboundInterceptor:
    """Passes every call on to ``next`` unchanged: subclass it and override what your concern needs.

    ``stream`` yields the chunks of the answer (``StreamResponse``, without the final marker,
    which the servicer adds); an interceptor that wraps them closes what it wraps on the way
    out (``contextlib.aclosing``), so that a caller going away cancels the handler at once.
    """

    def __init__(self, next: InboundInterceptor) -> None:
        self.next = next

    def close(self) -> None:
        """Let go of what the chain holds; the server calls it once it has stopped."""
        self.next.close()

    def execute(self, call: ServedCall) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        """Run a unary action; its reply (an ``async def`` in a subclass)."""
        return self.next.execute(call)

    def stream(self, call: ServedCall) -> AsyncGenerator[agent_pb2.StreamResponse, None]:
        """Run an action as a stream; its chunks as they are made."""
        return self.next.stream(call)
