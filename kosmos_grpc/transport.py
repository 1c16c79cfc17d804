"""The last link of the client's chain: one channel per agent address, and each attempt's gRPC call."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from kosmos_grpc._grpc import AgentStub, channel_options
from kosmos_grpc.deadlines import time_left
from kosmos_grpc.errors import (
    ADDRESS,
    ATTEMPT_TIMEOUT,
    CAUSE,
    NOT_RUNNING,
    ORIGIN,
    REFUSED,
    ActionFailed,
    DeadlineExceeded,
    KosmosError,
    PayloadTooLarge,
    from_rpc_error,
)
from kosmos_grpc.interceptors.outbound import OpenStream, OutboundInterceptor

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextvars import Token

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.interceptors.outbound import Delegation
    from kosmos_grpc.registry import Registry

__all__ = ["Transport", "attempt_timed_out", "explain"]


class Transport(OutboundInterceptor):
    """Sends each attempt to its target's address, over a channel reused by every call: the first to
    the address found as the delegation was made, a retry to the one the registry has then.

    ``grpc_interceptors`` are standard ``grpc.aio`` client interceptors given to every channel
    (opentelemetry-instrumentation-grpc's, say).
    """

    def __init__(
        self,
        registry: Registry,
        payload_limit: int,
        grpc_interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.registry = registry
        self._options = channel_options(payload_limit)
        self._grpc_interceptors = list(grpc_interceptors)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, AgentStub] = {}

    def _current(self, call: Delegation[Any]) -> Token[otel_context.Context] | None:
        """With ``grpc.aio`` interceptors, make the delegation's span current while its call starts,
        so that the spans they make (opentelemetry-instrumentation-grpc's CLIENT span) are its
        children; the token to detach. Without, nothing (it would cost every call)."""
        if not self._grpc_interceptors or call.span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(call.span))

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close()

    def channel(self, agent: str) -> grpc.aio.Channel:
        """The channel to ``agent``'s current address, made on first use."""
        return self._channel(self.registry.address(agent))

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                address, options=self._options, interceptors=self._grpc_interceptors or None
            )
            self._channels[address] = channel
        return channel

    def stub(self, agent: str, address: str | None = None) -> AgentStub:
        """AgentService on ``agent``'s current address, or on ``address`` when it is known already
        (AgentNotFound for a name the mesh does not know)."""
        address = address or self.registry.address(agent)
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = AgentStub(self._channel(address))
        return stub

    def _address(self, call: Delegation[Any]) -> str:
        """Where this attempt goes: the address the caller gave for the agent asked (used once),
        else the registry's for the target (a fallback, or a retry)."""
        given, call.address = call.address, None
        return (given if call.target == call.agent else None) or self.registry.address(call.target)

    async def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> agent_pb2.ExecuteResponse:
        target = call.target
        call.request.message.target_agent = target
        address = self._address(call)
        stub = self.stub(target, address)
        attempt = _attempt_seconds(call)
        token = self._current(call)
        try:
            reply: agent_pb2.ExecuteResponse = await stub.Execute(
                call.request,
                timeout=attempt or time_left(call.deadline, target, call.action),
                metadata=call.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise explain(exc, target, call.action, attempt or call.timeout, address, attempt=bool(attempt)) from None
        finally:
            if token is not None:
                otel_context.detach(token)
        call.answered = reply.response.agent
        return reply

    async def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> OpenStream:
        target, action = call.target, call.action
        call.request.message.target_agent = target
        address = self._address(call)
        stub = self.stub(target, address)
        attempt = _attempt_seconds(call)  # before the call: it may find no time left, and nothing to cancel
        token = self._current(call)
        try:
            stream = stub.Stream(call.request, timeout=time_left(call.deadline, target, action), metadata=call.metadata)
        finally:
            if token is not None:
                otel_context.detach(token)
        try:
            if attempt is None:
                first = await stream.read()
            else:  # the stream keeps the call's deadline: the attempt's bounds its first chunk only
                scope = asyncio.timeout(attempt)
                try:
                    async with scope:
                        first = await stream.read()
                except TimeoutError:
                    if not scope.expired():
                        raise
                    raise attempt_timed_out(target, action, attempt) from None
        except grpc.aio.AioRpcError as exc:
            raise explain(exc, target, action, call.timeout, address) from None
        except BaseException:
            stream.cancel()
            raise

        async def cancel(code: str, error: BaseException | None) -> None:
            stream.cancel()  # whatever a link further out does with it, the call ends with the stream

        call.at_end(cancel)
        return OpenStream(first, stream, read_to_end=bool(self._grpc_interceptors))


def _attempt_seconds(call: Delegation[Any]) -> float | None:
    """The seconds this attempt has, when its own deadline ends before the call's; else None."""
    deadline = call.attempt_deadline
    if deadline is None or deadline >= call.deadline:
        return None
    return time_left(deadline, call.target, call.action)


def attempt_timed_out(agent: str, action: str, seconds: float) -> DeadlineExceeded:
    """The failure of an attempt its own timeout ended, while the caller still had time: counted
    by the target's breaker, and a reason to try its fallback."""
    return DeadlineExceeded(
        f"{agent}.{action} did not answer within {seconds * 1000:.0f} ms, the time one attempt may take",
        metadata={ORIGIN: agent, CAUSE: ATTEMPT_TIMEOUT},
    )


def explain(
    exc: grpc.aio.AioRpcError, agent: str, action: str, timeout: float, address: str = "", *, attempt: bool = False
) -> KosmosError:
    """The mesh error for a failed call, with the agent named where the transport said little.

    Its ``origin`` is the agent whose failure it is: the one called, unless that one passed on
    the failure of an agent it called in turn (which set its own ``origin``). An agent that
    could not be reached is named with the ``address`` called and the cause, in the message and
    in its metadata (``address``, ``cause``); when nothing listens there, it asks whether the
    mesh is running. With ``attempt``, ``timeout`` was the attempt's own (see :func:`attempt_timed_out`).
    """
    error = from_rpc_error(exc)
    explained = bool(error.metadata) or isinstance(error, ActionFailed)  # by the agent itself
    error.metadata.setdefault(ORIGIN, agent)
    if explained:
        return error
    code = exc.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger than max" in (exc.details() or ""):
        # This channel refused to send it: the payload is far over the limit the mesh allows.
        return PayloadTooLarge(
            f"the payload to {agent}.{action} is over the limit ({exc.details()})", metadata={"field": "payload"}
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if attempt:  # ``timeout`` was the attempt's own, shorter than the call's
            return attempt_timed_out(agent, action, timeout)
        error.message = f"{agent}.{action} did not answer within {timeout * 1000:.0f} ms"
    elif code == grpc.StatusCode.UNAVAILABLE:
        cause = _cause(exc.details() or "")
        if address:
            error.metadata[ADDRESS] = address
        error.metadata[CAUSE] = cause
        where = f" at {address}" if address else ""
        error.message = f"agent {agent!r} is unavailable{where} ({cause}){NOT_RUNNING if cause == REFUSED else ''}"
    else:
        error.message = f"{agent}.{action} failed: {error.message}"
    error.args = (error.message,)
    return error


def _cause(details: str) -> str:
    """Why gRPC could not reach an agent, without its preamble (``failed to connect to all
    addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052: Failed to connect to remote host: ...``)."""
    if "Connection refused" in details:
        return REFUSED
    cause = details.rsplit("Failed to connect to remote host: ", 1)[-1].strip()
    return cause[:1].lower() + cause[1:] if cause else "no reason given"
