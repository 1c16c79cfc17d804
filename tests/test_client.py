"""The coordinator client: channel reuse, agent cards, and overload answered plainly."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from kosmos_grpc import InvalidEnvelope, ResourceExhausted
from tests.helpers.toys import Athena

from .conftest import Mesh
from .helpers.agents import Echo, LoudEcho, Probe


async def test_one_channel_per_agent_is_reused_across_calls(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    await mesh.serve(Echo())
    opened: list[str] = []
    real = grpc.aio.insecure_channel

    def counting(target: str, *args: Any, **kwargs: Any) -> grpc.aio.Channel:  # insecure_channel's own
        opened.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", counting)
    async with mesh.client() as client:
        for i in range(5):
            assert (await client.delegate("echo", "echo", {"i": i})).result == {"i": i}
        assert [c.data async for c in client.stream("echo", "count", {"n": 2})] == [{"i": 0}, {"i": 1}]
        await client.describe("echo")
        await client.health("echo")
    assert opened == [mesh.registry.address("echo")]


@pytest.mark.parametrize("timeout_ms", [0, -5, float("nan"), float("inf")])
async def test_a_timeout_that_is_not_a_positive_number_is_refused_before_sending(mesh: Mesh, timeout_ms: float) -> None:
    await mesh.serve(Echo())
    async with mesh.client() as client:
        with pytest.raises(InvalidEnvelope) as caught:
            await client.delegate("echo", "echo", timeout_ms=timeout_ms)
    assert caught.value.field == "timeout_ms"


async def test_an_action_overridden_in_a_subclass_runs_the_override(mesh: Mesh) -> None:
    await mesh.serve(LoudEcho())
    async with mesh.client() as client:
        assert (await client.delegate("echo", "echo", {"a": 1})).result == {"loud": True, "a": 1}


async def test_describe_returns_the_agent_card_with_input_schemas(mesh: Mesh) -> None:
    await mesh.serve(Athena())
    async with mesh.client() as client:
        card = await client.describe("athena")
    assert card.name == "athena"
    assert card.description == "Knowledge: answers what she knows about a topic."
    actions = {a.name: a for a in card.actions}
    assert set(actions) == {"answer", "explain"}
    assert actions["explain"].streaming
    assert not actions["answer"].streaming
    assert actions["answer"].input_schema is not None
    assert actions["answer"].input_schema["required"] == ["topic"]


async def test_calls_over_the_concurrency_limit_get_resource_exhausted(mesh: Mesh) -> None:
    probe = Probe()
    await mesh.serve(probe, max_concurrent_rpcs=1)
    async with mesh.client() as client:
        busy = asyncio.create_task(client.delegate("probe", "work", timeout_ms=10_000))
        await asyncio.wait_for(probe.started.wait(), 5)
        with pytest.raises(ResourceExhausted) as caught:
            await client.delegate("probe", "work", timeout_ms=5_000)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        probe.gates[0].set()
        assert (await busy).result == {"done": True}
        assert (await client.delegate("probe", "work", timeout_ms=5_000)).result == {"done": True}
