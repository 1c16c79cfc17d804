"""Every bad request gets its own status and a message naming the field; the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeAlias

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kosmos_grpc import (
    DEFAULT_PAYLOAD_LIMIT,
    ActionFailed,
    ActionNotFound,
    AgentNotFound,
    Coordinator,
    InvalidEnvelope,
    PayloadTooLarge,
    WrongCallKind,
    new_message,
)
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


@pytest.mark.parametrize("method", ["Execute", "Stream"])
async def test_bytes_that_are_not_a_request_get_invalid_argument(echo: Served, method: str) -> None:
    _, client = echo
    channel = client.channel("echo")
    if method == "Execute":
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/kosmos.v1.AgentService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff", timeout=5)
    else:
        stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            f"/kosmos.v1.AgentService/{method}"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(b"\xff\xff\xff", timeout=5).read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid kosmos.v1" in (caught.value.details() or "")
    assert (await client.delegate("echo", "echo", {"after": "garbage"})).result == {"after": "garbage"}
