"""The server's interceptor chain: what one served call is, and the base every inbound interceptor extends.

The servicer checks the envelope and finds the action, then hands the call to the chain; its
last link runs the handler. Each interceptor does one thing (a span, the memory of executed
calls, the priority queue, the deadline) around ``self.next``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine
    from typing import TypeAlias

    import grpc

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2, envelope_pb2
    from kosmos_grpc.agent import ActionSpec
    from kosmos_grpc.context import Context
    from kosmos_grpc.errors import KosmosError

    #: What runs when a stream ends: its status name ("OK" once every chunk was made), its error
    #: if it failed, and whether it ended in the call's own task (False when gRPC closed it from
    #: another, the caller gone).
    StreamEnd: TypeAlias = Callable[[str, KosmosError | None, bool], None]

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
    #: Whether a stream's handler was started (a stream shed or cancelled while it waited was not).
    started: bool = False
    #: A stream's callbacks for its first chunk and for its end (see :meth:`at_end`).
    on_first: list[Callable[[], None]] | None = None
    on_end: list[StreamEnd] | None = None

    def at_first(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` run when the stream's first chunk is handed to gRPC."""
        if self.on_first is None:
            self.on_first = [callback]
        else:
            self.on_first.append(callback)

    def at_end(self, callback: StreamEnd) -> None:
        """Have ``callback`` run when the stream ends, however it ends, the last registered first.

        It runs even when a link further in fails to open the stream: register it once there
        is something to undo.
        """
        if self.on_end is None:
            self.on_end = [callback]
        else:
            self.on_end.append(callback)

    def ended(self, code: str, error: KosmosError | None, in_task: bool) -> None:
        """Run the end callbacks, once: a second call (the caller leaving at the final marker) finds none."""
        callbacks, self.on_end = self.on_end, None
        for callback in reversed(callbacks or ()):
            callback(code, error, in_task)


class InboundInterceptor:
    """Passes every call on to ``next`` unchanged: subclass it and override what your concern needs.

    ``open_stream`` starts a stream and returns the handler's items (dicts, or Chunks), which
    the servicer puts into replies as they come: no link of the chain runs per chunk unless it
    wraps them. What a link must do when the stream has its first chunk or ends, it registers
    on the call (:meth:`ServedCall.at_first`, :meth:`ServedCall.at_end`).
    """

    def __init__(self, next: InboundInterceptor) -> None:
        self.next = next

    def close(self) -> None:
        """Let go of what the chain holds; the server calls it once it has stopped."""
        self.next.close()

    def execute(self, call: ServedCall) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        """Run a unary action; its reply (an ``async def`` in a subclass)."""
        return self.next.execute(call)

    def open_stream(self, call: ServedCall) -> Coroutine[Any, Any, AsyncGenerator[Any, None]]:
        """Start an action as a stream; its items as the handler makes them (an ``async def`` in a subclass)."""
        return self.next.open_stream(call)
