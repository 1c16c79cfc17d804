"""What the mesh asks of grpcio: channel and server options, plain stubs, lenient decoding, aborts.

Plain (not "registered") methods on both sides: in grpcio 1.85's asyncio stack the generated
stubs and ``add_*Servicer_to_server`` cost a couple of dozen more Python calls per RPC.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT
from kosmos_grpc.errors import InvalidEnvelope, to_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from kosmos_grpc.errors import KosmosError

__all__ = [
    "AGENT_SERVICE",
    "AgentService",
    "AgentStub",
    "abort",
    "add_agent_service",
    "channel_options",
    "lenient",
    "quiet_hang_ups",
    "server_options",
    "unreadable",
]

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# Headroom over the payload limit for the rest of the envelope, so the limit is ours to report.
_ENVELOPE_HEADROOM = 64 * 1024
# Calls gRPC's core may hold before the server takes them in (see server_options).
_PENDING_CALLS = 20_000


def channel_options(payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> list[tuple[str, Any]]:
    """A client channel's options: a payload at the limit goes through, envelope included."""
    size = payload_limit + _ENVELOPE_HEADROOM
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # gRPC's reconnect backoff grows to 120 s by default: an agent that restarts would stay
        # unreachable long after it is back. Agents of a mesh come back within seconds.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def server_options(payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> list[tuple[str, Any]]:
    """A server's options: it takes in up to twice the limit, so that an oversized payload from any
    client (grpcurl, another language) reaches the envelope check and is refused naming the field;
    past that, gRPC refuses it itself, still with RESOURCE_EXHAUSTED."""
    return [
        ("grpc.max_send_message_length", payload_limit + _ENVELOPE_HEADROOM),
        ("grpc.max_receive_message_length", 2 * payload_limit + _ENVELOPE_HEADROOM),
        # Without SO_REUSEPORT a taken port is an error, not two servers sharing it silently.
        ("grpc.so_reuseport", 0),
        # gRPC's core cancels calls that arrive faster than the server takes them in (past 1,000
        # waiting, at random; all past 3,000), before their priority is known: a flood of 5,000
        # calls lost a third of them, CRITICAL ones among them, as CANCELLED. The mesh's own
        # admission sheds instead, by priority and with a RetryInfo; this backlog only holds
        # calls for the moment it takes to accept them.
        ("grpc.server.max_pending_requests", _PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * _PENDING_CALLS),
    ]


class _HangUps(logging.Filter):
    """Drops grpc.aio's traceback for a status it could not send because the client had hung up:
    the call was over already (a stream the mesh ended while its client read nothing, say)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and str(record.msg).startswith("ExecuteBatchError raised in core"))


_HANG_UPS = _HangUps()


def quiet_hang_ups() -> None:
    """Install :class:`_HangUps` on grpc.aio's logger (once; a server calls it when made)."""
    logger = logging.getLogger("grpc._cython.cygrpc")
    if _HANG_UPS not in logger.filters:
        logger.addFilter(_HANG_UPS)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: KosmosError) -> NoReturn:
    """End the call with ``error``'s rich status."""
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A deserializer that gives None for bytes that do not decode, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return None

    return deserialize


def unreadable(kind: str) -> InvalidEnvelope:
    """The error for a request that :func:`lenient` could not decode."""
    return InvalidEnvelope("message", f"the request is not a valid kosmos.v1.{kind} (protobuf decoding failed)")


class AgentStub:
    """AgentService's three calls on one channel."""

    __slots__ = ("Describe", "Execute", "Stream")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Execute: grpc.aio.UnaryUnaryMultiCallable[agent_pb2.ExecuteRequest, agent_pb2.ExecuteResponse] = (
            channel.unary_unary(
                f"/{AGENT_SERVICE}/Execute",
                request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
                response_deserializer=agent_pb2.ExecuteResponse.FromString,
            )
        )
        self.Stream: grpc.aio.UnaryStreamMultiCallable[agent_pb2.StreamRequest, agent_pb2.StreamResponse] = (
            channel.unary_stream(
                f"/{AGENT_SERVICE}/Stream",
                request_serializer=agent_pb2.StreamRequest.SerializeToString,
                response_deserializer=agent_pb2.StreamResponse.FromString,
            )
        )
        self.Describe: grpc.aio.UnaryUnaryMultiCallable[agent_pb2.DescribeRequest, agent_pb2.DescribeResponse] = (
            channel.unary_unary(
                f"/{AGENT_SERVICE}/Describe",
                request_serializer=agent_pb2.DescribeRequest.SerializeToString,
                response_deserializer=agent_pb2.DescribeResponse.FromString,
            )
        )


class AgentService(Protocol):
    """What serves AgentService's three calls (the servicer)."""

    async def Execute(
        self, request: agent_pb2.ExecuteRequest | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse: ...

    def Stream(
        self, request: agent_pb2.StreamRequest | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.StreamResponse]: ...

    async def Describe(
        self, request: agent_pb2.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.DescribeResponse: ...


def add_agent_service(servicer: AgentService, server: grpc.aio.Server) -> None:
    """Register AgentService as a generic handler, its requests decoded leniently."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute,
            request_deserializer=lenient(agent_pb2.ExecuteRequest.FromString),
            response_serializer=agent_pb2.ExecuteResponse.SerializeToString,
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=lenient(agent_pb2.StreamRequest.FromString),
            response_serializer=agent_pb2.StreamResponse.SerializeToString,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=agent_pb2.DescribeRequest.FromString,
            response_serializer=agent_pb2.DescribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(AGENT_SERVICE, handlers),))
