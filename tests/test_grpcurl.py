"""The shell interface: real grpcurl against a live agent, with no proto files, through reflection."""

from __future__ import annotations

import json

from .conftest import Mesh, run_tool, tool
from .helpers.agents import Echo


async def grpcurl(address: str, *args: str, data: object = None) -> tuple[int, str, str]:
    flags = ["-plaintext"] if data is None else ["-plaintext", "-d", json.dumps(data)]
    return await run_tool(tool("grpcurl"), *flags, address, *args)


async def test_list_shows_agent_health_and_reflection_services(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    code, out, err = await grpcurl(server.address, "list")
    assert code == 0, err
    assert set(out.split()) >= {"kosmos.v1.AgentService", "grpc.health.v1.Health"}


async def test_describe_shows_the_agent_service_contract(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    code, out, err = await grpcurl(server.address, "describe", "kosmos.v1.AgentService")
    assert code == 0, err
    assert "rpc Execute ( .kosmos.v1.ExecuteRequest ) returns ( .kosmos.v1.ExecuteResponse )" in out
    assert "rpc Stream ( .kosmos.v1.StreamRequest ) returns ( stream .kosmos.v1.StreamResponse )" in out
    code, out, err = await grpcurl(server.address, "describe", "kosmos.v1.AgentMessage")
    assert code == 0, err
    assert "int64 ttl_ms" in out


async def test_execute_with_a_json_payload(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    request = {"message": {"action": "echo", "payload": {"text": "hi", "n": 2}}}
    code, out, err = await grpcurl(server.address, "kosmos.v1.AgentService/Execute", data=request)
    assert code == 0, err
    response = json.loads(out)["response"]
    assert response["agent"] == "echo"
    assert response["result"] == {"text": "hi", "n": 2}


async def test_stream_prints_every_chunk_then_the_final_marker(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    request = {"message": {"action": "count", "payload": {"n": 3}}}
    code, out, err = await grpcurl(server.address, "kosmos.v1.AgentService/Stream", data=request)
    assert code == 0, err
    decoder, chunks, text = json.JSONDecoder(), [], out.strip()
    while text:
        value, end = decoder.raw_decode(text)
        chunks.append(value["chunk"])
        text = text[end:].strip()
    assert [c.get("data") for c in chunks[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert chunks[3]["final"] is True


async def test_health_check(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    code, out, err = await grpcurl(server.address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_bad_request_from_grpcurl_gets_a_status_naming_the_field(mesh: Mesh) -> None:
    server = await mesh.serve(Echo())
    request = {"message": {"action": "echo", "ttlMs": "-3"}}
    code, _, err = await grpcurl(server.address, "kosmos.v1.AgentService/Execute", data=request)
    assert code != 0
    assert "InvalidArgument" in err
    assert "ttl_ms" in err
