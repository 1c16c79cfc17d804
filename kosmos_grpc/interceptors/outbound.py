"""The client's interceptor chain: what one delegation is, and the base every outbound interceptor extends.

Each interceptor does one thing (a span, announcements, retries...) around ``self.next``, the
next link of the chain; the last link is the transport, which makes the gRPC call. In the
manner of temporalio's SDK: one method per call kind, each taking one input dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kosmos_grpc._proto.kosmos.v1 import agent_pb2, envelope_pb2
from kosmos_grpc.errors import KosmosError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine

    from opentelemetry.trace import Span

__all__ = ["Delegation", "OutboundInterceptor", "status_name"]

RequestT = TypeVar("RequestT", agent_pb2.ExecuteRequest, agent_pb2.StreamRequest)


@dataclass(slots=True)
class Delegation(Generic[RequestT]):
    """One delegation on its way out; interceptors may change what the next links see.

    ``request`` holds the envelope, filled in already. ``deadline`` is on ``time.monotonic``'s
    clock; ``timeout`` is the seconds the call was given, for messages. ``target`` is where the
    next attempt goes (``agent``, or a fallback of it); ``answered`` the agent that answered.
    """

    agent: str
    action: str
    request: RequestT
    deadline: float
    timeout: float
    target: str
    #: ``agent``'s address, looked up once as the delegation was made.
    address: str
    #: gRPC metadata sent with each attempt (the trace context, say).
    metadata: tuple[tuple[str, str], ...] | None = None
    answered: str = ""
    #: The delegation's span (telemetry's): the transport makes it current while a call starts,
    #: when the channels have ``grpc.aio`` interceptors, so that their spans are its children.
    span: Span | None = None


class OutboundInterceptor:
    """Passes every call on to ``next`` unchanged: subclass it and override what your concern needs.

    ``stream`` yields the chunks of a streamed answer (``envelope_pb2.StreamChunk``, the final marker
    excepted); leaving the loop or being cancelled cancels the call. An interceptor that
    wraps the chunks closes what it wraps on the way out (``contextlib.aclosing``).
    """

    def __init__(self, next: OutboundInterceptor) -> None:
        self.next = next

    async def close(self) -> None:
        """Let go of what the chain holds (the transport's channels); the coordinator calls it once."""
        await self.next.close()

    def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        """Run a unary action; its reply (an ``async def`` in a subclass)."""
        return self.next.delegate(call)

    def stream(self, call: Delegation[agent_pb2.StreamRequest]) -> AsyncGenerator[envelope_pb2.StreamChunk, None]:
        """Run a streaming action; its chunks as they arrive."""
        return self.next.stream(call)


def status_name(error: BaseException) -> str:
    """How a delegation that raised ``error`` ended, as a status name: its code for a mesh error,
    UNKNOWN for a fault on this side, CANCELLED for a cancellation or a caller gone."""
    if isinstance(error, KosmosError):
        name: str = error.code.name
        return name
    return "UNKNOWN" if isinstance(error, Exception) else "CANCELLED"
