"""What the mesh asks of grpcio: channel and server options, plain stubs, refusing decoding, aborts.

Plain (not "registered") methods on both sides: in grpcio 1.85's asyncio stack the generated
stubs and ``add_*Servicer_to_server`` cost a couple of dozen more Python calls per RPC.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bounds import AGENT_REQUEST, PAYLOAD_DEPTH, too_many, too_many_values
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT
from kosmos_grpc.errors import InvalidEnvelope, KosmosError, PayloadTooLarge, to_status
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from google.protobuf.message import Message

__all__ = [
    "AGENT_SERVICE",
    "SMALL_REQUEST",
    "AgentService",
    "AgentStub",
    "abort",
    "add_agent_service",
    "channel_options",
    "quiet_hang_ups",
    "refusing",
    "request_limit",
    "server_options",
    "set_status",
]

log = logging.getLogger(__name__)

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# Headroom over the payload limit for the rest of the envelope, so the limit is ours to report.
_ENVELOPE_HEADROOM = 64 * 1024
# Calls gRPC's core may hold before the server takes them in (see server_options).
_PENDING_CALLS = 20_000
#: The most bytes a request that carries no envelope (Describe, a health check) may have.
SMALL_REQUEST = 64 * 1024


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


def set_status(context: grpc.aio.ServicerContext[Any, Any], error: KosmosError) -> None:
    """Give a stream ``error``'s rich status, sent by gRPC once the handler returns. Never awaited
    here, unlike :func:`abort`: a status waits behind the chunks a client has not read, so a
    stream ended for not being read must not wait for it."""
    status = to_status(error)
    context.set_trailing_metadata(status.trailing_metadata)
    context.set_code(status.code)
    context.set_details(status.details)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: KosmosError) -> NoReturn:
    """End the call with ``error``'s rich status."""
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def request_limit(payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> int:
    """The most bytes a request carrying an envelope may have: the payload's limit and the rest of the envelope."""
    return payload_limit + _ENVELOPE_HEADROOM


def refusing(
    kind: type[Message],
    limit: int,
    refusals: BurstLog,
    *,
    max_values: int | None = None,
    layout: int = AGENT_REQUEST,
) -> Callable[[bytes], Any]:
    """A deserializer of ``kind`` that gives, for bytes it will not take, the error to answer them with.

    Each is found before any parsing where it can be: past ``limit`` bytes, PayloadTooLarge
    naming ``payload``; for a kind that carries an envelope (``max_values`` given), a payload of
    more values than that, PayloadTooLarge too. Bytes that do not decode get InvalidEnvelope
    (gRPC itself would answer UNKNOWN and log a traceback), naming ``payload`` when the decoder
    gave up on its depth, else ``message``; ``refusals`` logs them, a line a burst. The handler
    answers the error it is given (``isinstance(request, KosmosError)``).
    """
    parse, name = kind.FromString, kind.DESCRIPTOR.full_name
    # Fewer bytes than this cannot hold too many values (each takes 2 at least): not read.
    counted_from = limit if max_values is None else min(limit, 2 * max_values)

    def deserialize(data: bytes) -> Any:
        size = len(data)
        if size > counted_from:
            if size > limit:
                field = "payload" if max_values is not None else "message"
                return PayloadTooLarge(
                    f"the request is {size:,} bytes, over the {limit:,} a {name} may have"
                    + (": its payload is too large" if max_values is not None else ""),
                    metadata={"field": field, "limit": str(limit)},
                )
            if max_values is not None and too_many_values(data, max_values, layout):
                return too_many(max_values)
        try:
            return parse(data)
        except DecodeError as exc:
            refusals.warn(f"undecodable {name}", "refused a request that is not a valid %s: %s", name, exc)
            if max_values is not None and "MaxDepth" in str(exc):  # upb's "Exceeded upb_DecodeOptions_MaxDepth"
                return InvalidEnvelope(
                    "payload", f"payload nests deeper than protobuf decodes ({PAYLOAD_DEPTH} at most)"
                )
            return InvalidEnvelope("message", f"the request is not a valid {name} (protobuf decoding failed)")

    return deserialize


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
    """What serves AgentService's three calls (the servicer); a request that could not be taken
    comes as the error to answer it with."""

    #: The largest payload it takes, in bytes and in values.
    payload_limit: int
    max_payload_values: int

    async def Execute(
        self, request: agent_pb2.ExecuteRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse: ...

    def Stream(
        self, request: agent_pb2.StreamRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.StreamResponse]: ...

    async def Describe(
        self, request: agent_pb2.DescribeRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.DescribeResponse: ...


def add_agent_service(servicer: AgentService, server: grpc.aio.Server, refusals: BurstLog | None = None) -> None:
    """Register AgentService as a generic handler, its requests decoded by :func:`refusing`."""
    refusals = refusals or BurstLog(log)
    limit, values = request_limit(servicer.payload_limit), servicer.max_payload_values
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute,
            request_deserializer=refusing(agent_pb2.ExecuteRequest, limit, refusals, max_values=values),
            response_serializer=agent_pb2.ExecuteResponse.SerializeToString,
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=refusing(agent_pb2.StreamRequest, limit, refusals, max_values=values),
            response_serializer=agent_pb2.StreamResponse.SerializeToString,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=refusing(agent_pb2.DescribeRequest, SMALL_REQUEST, refusals),
            response_serializer=agent_pb2.DescribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(AGENT_SERVICE, handlers),))
