"""Every bad request gets its own status and a message naming the field; the server keeps serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kosmos_grpc import (
    DEFAULT_PAYLOAD_LIMIT,
    ActionFailed,
    ActionNotFound,
    Agent,
    AgentNotFound,
    Context,
    Coordinator,
    InvalidEnvelope,
    PayloadTooLarge,
    ResourceExhausted,
    WrongCallKind,
    action,
    new_message,
)
from kosmos_grpc._grpc import AGENT_SERVICE as AGENT
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, agent_pb2_grpc, envelope_pb2

from .conftest import Mesh
from .helpers.agents import Echo

#: A stub straight to the echo agent, and a Coordinator for it.
Served: TypeAlias = "tuple[agent_pb2_grpc.AgentServiceAsyncStub, Coordinator]"  # the async stub is in the .pyi only


@pytest.fixture
async def echo(mesh: Mesh) -> AsyncIterator[Served]:
    server = await mesh.serve(Echo())
    async with (
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel,
        mesh.client() as client,
    ):
        yield agent_pb2_grpc.AgentServiceStub(channel), client


def _expire(m: envelope_pb2.AgentMessage) -> None:
    m.ttl_ms = 50
    m.timestamp.seconds -= 1


CASES: list[tuple[str, Callable[[envelope_pb2.AgentMessage], None], grpc.StatusCode, str]] = [
    ("missing action", lambda m: m.ClearField("action"), grpc.StatusCode.INVALID_ARGUMENT, "action"),
    (
        "malformed message_id",
        lambda m: setattr(m, "message_id", "42"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "message_id",
    ),
    ("negative ttl", lambda m: setattr(m, "ttl_ms", -5), grpc.StatusCode.INVALID_ARGUMENT, "ttl_ms"),
    ("expired ttl", _expire, grpc.StatusCode.DEADLINE_EXCEEDED, "ttl_ms"),
    ("unknown priority", lambda m: setattr(m, "priority", 9), grpc.StatusCode.INVALID_ARGUMENT, "priority"),
    (
        "timestamp past year 9999",
        lambda m: setattr(m.timestamp, "seconds", 10**15),
        grpc.StatusCode.INVALID_ARGUMENT,
        "timestamp",
    ),
    ("negative nanos", lambda m: setattr(m.timestamp, "nanos", -1), grpc.StatusCode.INVALID_ARGUMENT, "timestamp"),
    ("unknown action", lambda m: setattr(m, "action", "fly"), grpc.StatusCode.UNIMPLEMENTED, "action"),
    (
        "wrong target agent",
        lambda m: setattr(m, "target_agent", "athena"),
        grpc.StatusCode.NOT_FOUND,
        "target_agent",
    ),
    # Strings are bounded (envelope.MAX_ID_CHARS, MAX_NAME_CHARS): 1 MiB was taken and echoed back.
    (
        "1 MiB correlation_id",
        lambda m: setattr(m, "correlation_id", "c" * 2**20),
        grpc.StatusCode.INVALID_ARGUMENT,
        "correlation_id",
    ),
    ("long trace_id", lambda m: setattr(m, "trace_id", "f" * 257), grpc.StatusCode.INVALID_ARGUMENT, "trace_id"),
    (
        "long source_agent",
        lambda m: setattr(m, "source_agent", "s" * 129),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source_agent",
    ),
    # 2^62 ms is no TTL at all: over [mesh] max_ttl_ms (24 h by default) is refused.
    ("ttl_ms 2^62", lambda m: setattr(m, "ttl_ms", 2**62), grpc.StatusCode.INVALID_ARGUMENT, "ttl_ms"),
    ("ttl_ms over 24 h", lambda m: setattr(m, "ttl_ms", 86_400_001), grpc.StatusCode.INVALID_ARGUMENT, "ttl_ms"),
]


async def send(stub: agent_pb2_grpc.AgentServiceAsyncStub, rpc: str, message: envelope_pb2.AgentMessage) -> None:
    if rpc == "Execute":
        await stub.Execute(agent_pb2.ExecuteRequest(message=message), timeout=5)
    else:
        async for _ in stub.Stream(agent_pb2.StreamRequest(message=message), timeout=5):
            pass


def _field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries a rich google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "kosmos"
    field: str = info.metadata["field"]
    return field


@pytest.mark.parametrize(("case", "mutate", "code", "field"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rpc", ["Execute", "Stream"])
async def test_bad_envelope_gets_its_status_and_names_the_field(
    echo: Served,
    case: str,
    mutate: Callable[[envelope_pb2.AgentMessage], None],
    code: grpc.StatusCode,
    field: str,
    rpc: str,
) -> None:
    stub, client = echo
    message = new_message("echo", {"x": 1}, target_agent="echo")
    mutate(message)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(stub, rpc, message)
    assert caught.value.code() == code
    assert field in (caught.value.details() or "")
    assert _field(caught.value) == field
    assert (await client.delegate("echo", "echo", {"still": "serving"})).result == {"still": "serving"}


async def test_payload_over_the_default_4_mib_limit_is_resource_exhausted(echo: Served) -> None:
    stub, client = echo
    message = new_message("echo", {"blob": "x" * (DEFAULT_PAYLOAD_LIMIT + 1)})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(agent_pb2.ExecuteRequest(message=message), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "payload" in (caught.value.details() or "")
    assert _field(caught.value) == "payload"
    assert (await client.delegate("echo", "echo", {"after": "big"})).result == {"after": "big"}


async def test_payload_limit_is_configurable_and_reaches_the_client_as_payload_too_large(mesh: Mesh) -> None:
    await mesh.serve(Echo(), payload_limit=1024)
    async with mesh.client() as client:
        with pytest.raises(PayloadTooLarge, match="over the limit of 1024 bytes"):
            await client.delegate("echo", "echo", {"blob": "x" * 2048})
        assert (await client.delegate("echo", "echo", {"blob": "x" * 100})).result == {"blob": "x" * 100}


@pytest.mark.parametrize("times", [1.25, 1.9])
async def test_payload_well_over_the_limit_from_any_client_is_refused_naming_payload(mesh: Mesh, times: float) -> None:
    server = await mesh.serve(Echo(), payload_limit=256 * 1024)
    message = new_message("echo", {"blob": "x" * int(256 * 1024 * times)})
    async with grpc.aio.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(agent_pb2.ExecuteRequest(message=message), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _field(caught.value) == "payload"


async def test_payload_far_over_the_limit_is_stopped_by_the_client_naming_payload(mesh: Mesh) -> None:
    await mesh.serve(Echo(), payload_limit=64 * 1024)
    async with mesh.client(payload_limit=64 * 1024) as client:
        with pytest.raises(PayloadTooLarge) as caught:
            await client.delegate("echo", "echo", {"blob": "x" * (3 * 64 * 1024)})
        assert caught.value.metadata["field"] == "payload"
        assert (await client.delegate("echo", "echo", {"small": 1})).result == {"small": 1}


async def test_client_errors_are_typed(echo: Served) -> None:
    _, client = echo
    with pytest.raises(ActionNotFound, match="no action 'fly'"):
        await client.delegate("echo", "fly")
    with pytest.raises(AgentNotFound, match="no agent named 'athena'"):
        await client.delegate("athena", "answer")
    with pytest.raises(WrongCallKind, match="streams"):
        await client.delegate("echo", "count")
    with pytest.raises(InvalidEnvelope) as caught:
        await client.delegate("echo", "echo", ttl_ms=-1)
    assert caught.value.field == "ttl_ms"


async def test_handler_crash_is_internal_without_leaking_the_traceback(echo: Served) -> None:
    _, client = echo
    with pytest.raises(ActionFailed, match="TimeoutError"):  # the handler's own, not a deadline
        await client.delegate("echo", "own_timeout")
    with pytest.raises(ActionFailed) as caught:
        await client.delegate("echo", "boom")
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in caught.value.message
    assert "secret internal detail" not in caught.value.message
    with pytest.raises(ActionFailed, match="JSON cannot hold"):
        await client.delegate("echo", "not_json")
    assert (await client.delegate("echo", "echo", {"ok": 1})).result == {"ok": 1}


async def test_empty_envelope_fields_get_server_defaults(echo: Served) -> None:
    stub, _ = echo
    message = envelope_pb2.AgentMessage(action="whoami")
    reply = await stub.Execute(agent_pb2.ExecuteRequest(message=message), timeout=5)
    assert reply.response.agent == "echo"
    assert len(reply.response.request_message_id) == 36
    assert reply.response.correlation_id == reply.response.request_message_id
    assert reply.response.result["priority"] == "NORMAL"


# Every RPC of AgentService, health and reflection: Describe, Check, Watch and reflection answered
# UNKNOWN naming DecodeError, each with a traceback in the log.
GARBAGE_TO = [
    ("/kosmos.v1.AgentService/Execute", "unary"),
    ("/kosmos.v1.AgentService/Stream", "stream"),
    ("/kosmos.v1.AgentService/Describe", "unary"),
    ("/grpc.health.v1.Health/Check", "unary"),
    ("/grpc.health.v1.Health/Watch", "stream"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
]


async def _call_raw(channel: grpc.aio.Channel, method: str, kind: str, data: bytes) -> None:
    """Send ``data`` as the request of ``method`` (no serializer: the bytes as they are), and read its first reply."""
    if kind == "unary":
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await unary(data, timeout=5)
    elif kind == "stream":
        stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
        await stream(data, timeout=5).read()
    else:
        bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        call = bidi(timeout=5)
        await call.write(data)
        await call.read()


async def _send_raw(channel: grpc.aio.Channel, method: str, kind: str, data: bytes) -> grpc.aio.AioRpcError:
    """The error ``data`` sent as the request of ``method`` is answered with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call_raw(channel, method, kind, data)
    return caught.value


@pytest.mark.parametrize(("method", "kind"), GARBAGE_TO, ids=[m.rsplit("/", 1)[1] for m, _ in GARBAGE_TO])
async def test_bytes_that_are_not_a_request_get_invalid_argument_logged_once_without_traceback(
    echo: Served, method: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = echo
    channel = client.channel("echo")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # a burst: one line for all of them
            error = await _send_raw(channel, method, kind, b"\xff\xff\xff")
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "is not a valid" in (error.details() or "")
            assert _field(error) == "message"
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"
    assert len([r for r in caplog.records if "is not a valid" in r.getMessage()]) == 1
    assert (await client.delegate("echo", "echo", {"after": "garbage"})).result == {"after": "garbage"}


# A name echoed whole into the status overflowed gRPC's 8 KiB of trailers past a few thousand
# characters: the caller got RESOURCE_EXHAUSTED "Stream removed" instead of the error.
TRAILERS_LIMIT = 8 * 1024


def _trailers_size(error: grpc.aio.AioRpcError) -> int:
    return sum(len(key) + len(value) for key, value in error.trailing_metadata() or ())


@pytest.mark.parametrize(
    ("field", "code"),
    [("action", grpc.StatusCode.UNIMPLEMENTED), ("target_agent", grpc.StatusCode.NOT_FOUND)],
)
@pytest.mark.parametrize("rpc", ["Execute", "Stream"])
async def test_a_10000_character_name_gets_its_status_with_a_clipped_message(
    echo: Served, field: str, code: grpc.StatusCode, rpc: str
) -> None:
    stub, client = echo
    message = new_message("echo", {"x": 1}, target_agent="echo")
    setattr(message, field, "n" * 10_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(stub, rpc, message)
    details = caught.value.details() or ""
    assert caught.value.code() == code, details
    assert _field(caught.value) == field
    assert "(10,000 characters)" in details
    assert len(details) < 512
    assert _trailers_size(caught.value) < TRAILERS_LIMIT // 2
    assert (await client.delegate("echo", "echo", {"still": "serving"})).result == {"still": "serving"}


class Loud(Agent):
    """Raises errors that echo whatever they are sent, whole."""

    name = "loud"

    @action
    async def shout(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Raise an error whose message and metadata hold ``payload.text`` whole, many times over."""
        text = payload["text"]
        raise ResourceExhausted(f"no room for {text}", metadata={f"key{i}": text for i in range(50)})


@pytest.mark.parametrize("text", ["x" * 20_000, "\N{CJK UNIFIED IDEOGRAPH-4E00}" * 20_000, "\x01" * 20_000])
async def test_an_error_that_echoes_anything_reaches_the_caller_as_itself(mesh: Mesh, text: str) -> None:
    server = await mesh.serve(Loud())
    async with mesh.client() as client:
        with pytest.raises(ResourceExhausted) as caught:
            await client.delegate("loud", "shout", {"text": text})
    assert caught.value.message.startswith("no room for ")
    assert caught.value.message.endswith(" (20,012 characters)")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ExecuteRequest(message=new_message("shout", {"text": text}))
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.Execute(request, timeout=5)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _trailers_size(raw.value) < TRAILERS_LIMIT // 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _request_with_payload(struct: bytes, action: str = "whoami") -> bytes:
    """An encoded ExecuteRequest whose payload is the encoded Struct ``struct`` (built as bytes:
    a Struct of 400,000 keys takes protobuf itself about a second to build)."""
    envelope = new_message(action).SerializeToString() + _field_bytes(6, struct)
    return _field_bytes(1, envelope)


def _keys(count: int) -> bytes:
    """A Struct's bytes: ``count`` keys of 3 characters, each a Value of no kind, 9 bytes a key."""
    return b"".join(
        b"\x0a\x07\x0a\x03" + bytes((33 + i // 8836 % 94, 33 + i // 94 % 94, 33 + i % 94)) + b"\x12\x00"
        for i in range(count)
    )


def _nested(depth: int, kind: str) -> bytes:
    """A Struct's bytes nesting ``depth`` levels deep, the payload (an object) the first, then objects or arrays."""
    value = b""
    for _ in range(depth - 1):
        if kind == "objects":
            value = _field_bytes(5, _field_bytes(1, _field_bytes(1, b"a") + _field_bytes(2, value)))
        else:
            value = _field_bytes(6, _field_bytes(1, value))
    return _field_bytes(1, _field_bytes(1, b"a") + _field_bytes(2, value))


LARGE: dict[str, Callable[[], bytes]] = {
    "400,000 keys": lambda: _keys(400_000),
    "400,000 items of one array": lambda: _field_bytes(
        1, _field_bytes(1, b"a") + _field_bytes(2, _field_bytes(6, b"\x0a\x00" * 400_000))
    ),
    "4,000 objects of 100 keys": lambda: b"".join(
        _field_bytes(1, _field_bytes(1, b"%x" % i) + _field_bytes(2, _field_bytes(5, _keys(100)))) for i in range(4_000)
    ),
}


@pytest.mark.parametrize("payload", list(LARGE), ids=list(LARGE))
async def test_a_payload_of_400000_values_is_refused_before_it_is_parsed_naming_payload(
    echo: Served, payload: str
) -> None:
    # It took 1.1 s to parse (protobuf's maps cost more per key the more they hold), then was served.
    _, client = echo
    data = _request_with_payload(LARGE[payload]())
    assert len(data) < DEFAULT_PAYLOAD_LIMIT, "within the byte limit: the values are what is refused"
    error = await _send_raw(client.channel("echo"), "/kosmos.v1.AgentService/Execute", "unary", data)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "more than 10,000 values" in (error.details() or "")
    assert _field(error) == "payload"
    assert (await client.delegate("echo", "echo", {"after": "large"})).result == {"after": "large"}


async def test_the_most_values_a_payload_holds_is_configurable(mesh: Mesh) -> None:
    await mesh.serve(Echo(), max_payload_values=100)
    async with mesh.client() as client:
        with pytest.raises(PayloadTooLarge, match="more than 100 values") as caught:
            await client.delegate("echo", "echo", {"rows": [{"a": i} for i in range(50)]})
        assert caught.value.metadata["field"] == "payload"
        assert (await client.delegate("echo", "echo", {"rows": list(range(99))})).result == {"rows": list(range(99))}


@pytest.mark.parametrize(
    ("depth", "kind"),
    [(34, "objects"), (50, "arrays"), (60, "objects"), (60, "arrays")],
    ids=["34 objects", "the payload and 49 arrays", "60 objects", "60 arrays"],
)
async def test_a_payload_nested_deeper_than_protobuf_decodes_is_refused_naming_payload(
    echo: Served, depth: int, kind: str
) -> None:
    # protobuf's decoder stops at 100 message levels: the request was refused naming "message".
    _, client = echo
    data = _request_with_payload(_nested(depth, kind))
    error = await _send_raw(client.channel("echo"), "/kosmos.v1.AgentService/Execute", "unary", data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _field(error) == "payload"
    assert "nests deeper" in (error.details() or "")
    execute: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = client.channel("echo").unary_unary(f"/{AGENT}/Execute")
    deepest = _request_with_payload(_nested(33 if kind == "objects" else 49, kind))
    reply = agent_pb2.ExecuteResponse.FromString(await execute(deepest, timeout=5))
    assert reply.response.agent == "echo", "33 levels of objects, or the payload and 48 of arrays, are served"


async def test_a_ttl_over_the_configured_maximum_is_refused_naming_ttl_ms(mesh: Mesh) -> None:
    await mesh.serve(Echo(), max_ttl_ms=5_000)
    async with mesh.client() as client:
        with pytest.raises(InvalidEnvelope, match="over the maximum of 5,000") as caught:
            await client.delegate("echo", "echo", ttl_ms=5_001)
        assert caught.value.field == "ttl_ms"
        assert (await client.delegate("echo", "echo", {"ok": 1}, ttl_ms=5_000)).result == {"ok": 1}
