"""The client's interceptor chain: what one delegation is, and the base every outbound interceptor extends.

Each interceptor does one thing (a span, announcements, retries...) around ``self.next``, the
next link of the chain; the last link is the transport, which makes the gRPC call. In the
manner of temporalio's SDK: one method per call kind, each taking one input dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.errors import ConfigError, KosmosError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import TypeAlias

    from opentelemetry.trace import Span

    from kosmos_grpc.resilience.fallback import FellBack

    #: What runs when a stream ends: the status name it ended with, and its exception if any.
    StreamEnd: TypeAlias = Callable[[str, BaseException | None], Awaitable[None]]

__all__ = ["Delegation", "OpenStream", "OutboundInterceptor", "Replies", "failure_of", "made", "status_name"]

RequestT = TypeVar("RequestT", agent_pb2.ExecuteRequest, agent_pb2.StreamRequest)
LinkT = TypeVar("LinkT")


class Replies(Protocol):
    """The rest of a stream's replies, one at a time (a ``grpc.aio`` stream call is one)."""

    async def read(self) -> Any:
        """The next ``StreamResponse``, or ``grpc.aio.EOF`` once the call has ended."""
        ...

    def cancel(self) -> bool:
        """End the call, if it has not ended."""
        ...


@dataclass(slots=True)
class OpenStream:
    """A stream whose first reply has arrived: the coordinator reads the rest straight from ``replies``.

    ``read_to_end``: read on past the final marker to the call's end (for ``grpc.aio``
    interceptors whose wrapper of the replies must see it), rather than cancel it there.
    """

    first: Any
    replies: Replies
    read_to_end: bool = False


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
    #: ``agent``'s address, looked up as the delegation was made, for its first attempt (a retry
    #: looks again, so that it follows an agent that moved).
    address: str | None
    #: When the next attempt must end (``time.monotonic``), before ``deadline`` (resilience's;
    #: None: at ``deadline``). A unary attempt's gRPC deadline; a stream's wait for its first chunk.
    attempt_deadline: float | None = None
    #: gRPC metadata sent with each attempt (the trace context, say).
    metadata: tuple[tuple[str, str], ...] | None = None
    answered: str = ""
    #: The delegation's span (telemetry's): the transport makes it current while a call starts,
    #: when the channels have ``grpc.aio`` interceptors, so that their spans are its children.
    span: Span | None = None
    #: What runs when a stream ends (see :meth:`at_end`).
    on_end: list[StreamEnd] | None = None
    #: What hears of each fallback (see :meth:`at_fallback`).
    on_fallback: list[FellBack] | None = None

    def at_fallback(self, callback: FellBack) -> None:
        """Have ``callback`` told of each fallback, before the fallback is tried: the agent that
        failed, how, and the agent tried in its place."""
        if self.on_fallback is None:
            self.on_fallback = [callback]
        else:
            self.on_fallback.append(callback)

    def fell_back(self, target: str, error: KosmosError, fallback: str) -> None:
        """Tell the fallback callbacks that ``target`` failed with ``error`` and ``fallback`` is tried."""
        for callback in self.on_fallback or ():
            callback(target, error, fallback)

    def at_end(self, callback: StreamEnd) -> None:
        """Have ``callback`` run when the stream ends, however it ends, the last registered first,
        with the status name it ended with and its exception, if any.

        It runs even when a link further in fails to open the stream: register it once there is
        something to undo or to tell.
        """
        if self.on_end is None:
            self.on_end = [callback]
        else:
            self.on_end.append(callback)

    async def ended(self, code: str, error: BaseException | None) -> None:
        """Run the end callbacks (the coordinator calls it, once)."""
        callbacks, self.on_end = self.on_end, None
        raised: BaseException | None = None
        for callback in reversed(callbacks or ()):
            try:
                await callback(code, error)
            except BaseException as exc:  # the others still run (a span still ends), then this is raised
                raised = raised or exc
        if raised is not None:
            raise raised


class OutboundInterceptor:
    """Passes every call on to ``next`` unchanged: subclass it and override what your concern needs.

    ``open_stream`` starts a streamed call: once it returns, the first reply has arrived, and
    the coordinator reads the rest straight from the gRPC call, so that no link runs per chunk
    (one that must, wraps ``OpenStream.replies``). What a link must do at the stream's end, it
    registers on the delegation (:meth:`Delegation.at_end`).
    """

    def __init__(self, next: OutboundInterceptor) -> None:
        self.next = next

    async def close(self) -> None:
        """Let go of what the chain holds (the transport's channels); the coordinator calls it once."""
        await self.next.close()

    def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        """Run a unary action; its reply (an ``async def`` in a subclass)."""
        return self.next.delegate(call)

    def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> Coroutine[Any, Any, OpenStream]:
        """Start a streaming action; its replies, the first of them arrived (an ``async def`` in a subclass)."""
        return self.next.open_stream(call)


def failure_of(error: BaseException) -> BaseException | None:
    """What a span records of how a delegation ended: the error, but not a cancellation (no failure)."""
    return error if isinstance(error, Exception) else None


def status_name(error: BaseException) -> str:
    """How a delegation that raised ``error`` ended, as a status name: its code for a mesh error,
    UNKNOWN for a fault on this side, CANCELLED for a cancellation or a caller gone."""
    if isinstance(error, KosmosError):
        name: str = error.code.name
        return name
    return "UNKNOWN" if isinstance(error, Exception) else "CANCELLED"


def made(make: Any, next: LinkT, kind: type[LinkT]) -> LinkT:
    """The interceptor a user's factory makes from the next link, or ConfigError saying plainly why not
    (a factory from the config's ``[interceptors]`` may be anything an import path names)."""
    # Named by its qualified name, or its type: what an import path names may be a long string.
    name = getattr(make, "__qualname__", None) if callable(make) else None
    name = name or f"a {type(make).__name__}"
    try:
        link = make(next)
    except Exception as exc:
        raise ConfigError(f"interceptor {name} could not be made from the next link: {exc}") from None
    if not isinstance(link, kind):
        raise ConfigError(f"interceptor {name} made a {type(link).__name__}, not an {kind.__name__}")
    return link
