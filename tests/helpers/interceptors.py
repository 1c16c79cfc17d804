"""Interceptors written as a user of the mesh would: they record what they see."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc

from kosmos_grpc import Delegation, InboundInterceptor, OutboundInterceptor, ServedCall
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.interceptors.outbound import OpenStream, Replies

#: What every Recorder saw, by interceptor name, in the order seen: (kind, action, message_id).
SEEN: dict[str, list[tuple[str, str, str]]] = {}


class OutboundRecorder(OutboundInterceptor):
    """Records each delegation and stream, and the chunks that come back."""

    name = "outbound"

    async def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> agent_pb2.ExecuteResponse:
        SEEN.setdefault(self.name, []).append(("delegate", call.action, call.request.message.message_id))
        return await self.next.delegate(call)

    async def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> OpenStream:
        SEEN.setdefault(self.name, []).append(("stream", call.action, call.request.message.message_id))

        async def ended(code: str, error: BaseException | None) -> None:
            SEEN[self.name].append(("ended", call.action, code))

        call.at_end(ended)
        opened = await self.next.open_stream(call)
        opened.replies = _Counted(opened.replies, call.action)
        return opened


class _Counted:
    """A stream's replies, each recorded as it is read."""

    def __init__(self, replies: Replies, action: str) -> None:
        self.replies, self.action = replies, action

    async def read(self) -> Any:
        reply = await self.replies.read()
        if reply is not grpc.aio.EOF and not reply.chunk.final:
            SEEN["outbound"].append(("chunk", self.action, str(reply.chunk.sequence)))
        return reply

    def cancel(self) -> bool:
        return self.replies.cancel()


class InboundRecorder(InboundInterceptor):
    """Records each served call, as its handler's envelope shows it."""

    name = "inbound"

    async def execute(self, call: ServedCall) -> agent_pb2.ExecuteResponse:
        envelope = call.ctx.envelope
        SEEN.setdefault(self.name, []).append(("execute", envelope.action, envelope.message_id))
        return await self.next.execute(call)

    async def open_stream(self, call: ServedCall) -> AsyncGenerator[Any, None]:
        envelope = call.ctx.envelope
        SEEN.setdefault(self.name, []).append(("stream", envelope.action, envelope.message_id))
        return await self.next.open_stream(call)


class MethodRecorder(grpc.aio.ServerInterceptor):
    """A plain grpc.aio server interceptor: the methods called, and the ``x-user`` header they came with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        headers = dict(handler_call_details.invocation_metadata or ())
        self.calls.append((handler_call_details.method, str(headers.get("x-user", ""))))
        return await continuation(handler_call_details)


class UserHeader(grpc.aio.UnaryUnaryClientInterceptor):
    """A plain grpc.aio client interceptor that sends ``x-user: ada`` with every unary call."""

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], client_call_details: Any, request: Any
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), ("x-user", "ada")]
        return await continuation(client_call_details._replace(metadata=metadata), request)
