"""Users' own interceptors: in the client's and the server's chains, from the config, and plain grpc.aio ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from kosmos_grpc import ConfigError, Coordinator
from kosmos_grpc.config import load_config
from kosmos_grpc.launcher import agent_server

from .conftest import Mesh
from .helpers.agents import Echo, Flaky
from .helpers.interceptors import SEEN, InboundRecorder, MethodRecorder, OutboundRecorder, UserHeader


@pytest.fixture(autouse=True)
def _forget_what_was_seen() -> None:
    SEEN.clear()


async def test_an_outbound_interceptor_sees_each_delegation_once_whatever_the_retries(mesh: Mesh) -> None:
    flaky = Flaky()
    await mesh.serve(flaky)
    async with Coordinator(mesh.registry, interceptors=[OutboundRecorder]) as client:
        response = await client.delegate("flaky", "fail_then_succeed", {"times": 2})
    assert response.result == {"attempt": 3}  # two attempts failed and were retried
    assert len(flaky.calls) == 3
    assert SEEN["outbound"] == [("delegate", "fail_then_succeed", flaky.calls[0])]


async def test_an_outbound_interceptor_sees_a_stream_and_its_chunks(mesh: Mesh) -> None:
    await mesh.serve(Echo())
    async with Coordinator(mesh.registry, interceptors=[OutboundRecorder]) as client:
        chunks = [chunk.data async for chunk in client.stream("echo", "count", {"n": 2})]
    assert chunks == [{"i": 0}, {"i": 1}]
    # The first chunk comes with the opening of the stream; the recorder sees the ones read after it.
    assert [kind for kind, _, _ in SEEN["outbound"]] == ["stream", "chunk", "ended"]
    assert SEEN["outbound"][-1] == ("ended", "count", "OK")


async def test_an_inbound_interceptor_sees_every_call_before_a_duplicate_is_answered(mesh: Mesh) -> None:
    flaky = Flaky()
    server = await mesh.serve(flaky, interceptors=[InboundRecorder])
    async with mesh.client() as client:
        first = await client.delegate(
            "flaky", "fail_then_succeed", {}, message_id="0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"
        )
        again = await client.delegate(
            "flaky", "fail_then_succeed", {}, message_id="0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"
        )
        streamed = [chunk.data async for chunk in client.stream("flaky", "effect_stream", {"n": 1})]
    assert first.result == again.result == {"attempt": 1}
    assert len(flaky.calls) == 2  # the duplicate ran no handler, the stream did
    assert [kind for kind, _, _ in SEEN["inbound"]] == ["execute", "execute", "stream"]
    assert SEEN["inbound"][0][1:] == ("fail_then_succeed", "0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b")
    assert streamed
    assert server.servicer.in_flight == 0


async def test_the_config_puts_interceptors_into_every_agent_by_import_path(tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(
        "[agents.echo]\nobject = 'tests.helpers.agents:Echo'\naddress = '127.0.0.1:0'\n"
        "[interceptors]\ninbound = ['tests.helpers.interceptors:InboundRecorder']\n"
        "outbound = ['tests.helpers.interceptors:OutboundRecorder']\n"
    )
    server = agent_server(load_config(config), "echo")
    await server.start()
    try:
        async with Coordinator({"echo": server.address}) as client:
            await client.delegate("echo", "echo", {"x": 1})
        # The agent's own delegations go through the outbound one: here, to itself.
        await server.coordinator.delegate("echo", "echo", {"y": 2})
    finally:
        await server.stop(0)
    assert [(kind, action) for kind, action, _ in SEEN["inbound"]] == [("execute", "echo"), ("execute", "echo")]
    assert [(kind, action) for kind, action, _ in SEEN["outbound"]] == [("delegate", "echo")]


async def test_plain_grpc_aio_interceptors_go_on_the_server_and_on_the_channels(mesh: Mesh) -> None:
    methods = MethodRecorder()
    await mesh.serve(Echo(), grpc_interceptors=[methods])
    async with Coordinator(mesh.registry, grpc_interceptors=[UserHeader()]) as client:
        await client.delegate("echo", "echo", {})
    assert ("/kosmos.v1.AgentService/Execute", "ada") in methods.calls


@pytest.mark.parametrize(
    ("spec", "why"),
    [("json:__doc__", "could not be made"), ("json:dumps", "could not be made"), ("builtins:str", "made a str")],
)
async def test_an_interceptor_path_that_names_no_interceptor_is_a_config_error(
    tmp_path: Path, spec: str, why: str
) -> None:
    config = tmp_path / "kosmos.toml"
    agent = "[agents.echo]\nobject = 'tests.helpers.agents:Echo'\naddress = '127.0.0.1:0'\n"
    config.write_text(f"{agent}[interceptors]\ninbound = ['{spec}']\n")
    with pytest.raises(ConfigError, match=why):
        agent_server(load_config(config), "echo")
