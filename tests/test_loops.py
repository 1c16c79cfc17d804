"""Delegation loops: Zeus made to delegate to itself is refused at once, naming the loop, and keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from agents.zeus import Zeus
from kosmos_grpc import Agent, Context, Coordinator, DelegationLoop, ResourceExhausted, action
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.envelope import new_message
from tests.helpers.toys import Athena

from .conftest import Mesh

ASK = {"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}


def _nested(depth: int) -> dict[str, Any]:
    """A payload that makes Zeus delegate to itself ``depth`` levels deep (about 1 KB at 30)."""
    payload: dict[str, Any] = ASK
    for _ in range(depth):
        payload = {"agent": "zeus", "action": "delegate", "payload": payload}
    return payload


async def test_three_requests_that_make_zeus_delegate_to_itself_are_refused_at_once_naming_the_loop(
    mesh: Mesh,
) -> None:
    zeus = await mesh.serve(Zeus(), max_concurrency=64, queue_limit=256)
    await mesh.serve(Athena())
    async with Coordinator(mesh.registry, resilience=False) as client:
        # Without the guard these hold every slot of Zeus until their deadline (DEADLINE_EXCEEDED).
        results = await asyncio.gather(
            *(client.delegate("zeus", "delegate", _nested(30), timeout_ms=5_000) for _ in range(3)),
            return_exceptions=True,
        )
        for result in results:
            assert isinstance(result, DelegationLoop), result
            assert result.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "zeus → zeus → zeus" in result.message
            assert "9 hops, over max_hops 8" in result.message
            assert result.metadata["field"] == "route"
        assert zeus.servicer.admission is not None
        assert zeus.servicer.admission.running == 0
        # Zeus still answers a normal call, one that delegates to itself once included.
        answer = await client.delegate("zeus", "delegate", ASK)
        assert answer.result["agent"] == "athena"
        answer = await client.delegate("zeus", "delegate", _nested(2))
        assert answer.result["result"]["result"]["agent"] == "athena"


async def test_a_call_back_into_an_agent_with_no_free_slot_is_refused_rather_than_queued(mesh: Mesh) -> None:
    # Three slots: the fourth level of Zeus calling itself would wait forever for one of them.
    zeus = await mesh.serve(Zeus(), max_concurrency=3, queue_limit=100, max_hops=8)
    await mesh.serve(Athena())
    async with Coordinator(mesh.registry, resilience=False) as client:
        with pytest.raises(ResourceExhausted) as caught:
            await client.delegate("zeus", "delegate", _nested(6), timeout_ms=5_000)
        error = caught.value
        assert "zeus → zeus → zeus → zeus: a call back into 'zeus', which has no free slot" in error.message
        assert error.retry_after is None  # not retryable: retried, it would meet the same full agent
        assert zeus.servicer.admission is not None
        assert zeus.servicer.admission.running == 0
        answer = await client.delegate("zeus", "delegate", _nested(1))
        assert answer.result["result"]["agent"] == "athena"


async def test_a_route_too_long_or_with_a_bad_name_is_an_invalid_envelope_naming_route(mesh: Mesh) -> None:
    await mesh.serve(Zeus())
    async with Coordinator(mesh.registry, resilience=False) as client:
        stub = client._transport.stub("zeus")
        for route in (["zeus"] * 65, ["x" * 129], [""]):
            request = agent_pb2.ExecuteRequest(message=new_message("delegate", ASK, target_agent="zeus"))
            request.message.route.extend(route)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Execute(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "route" in (caught.value.details() or "")


class Echo(Agent):
    """Says which route its call came by."""

    name = "echo"

    @action()
    async def route(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The call's route."""
        return {"route": list(ctx.envelope.route)}


async def test_a_delegation_from_a_handler_carries_the_route_it_came_by(mesh: Mesh) -> None:
    await mesh.serve(Echo())
    await mesh.serve(Zeus())
    echo = {"agent": "echo", "action": "route"}
    async with Coordinator(mesh.registry, resilience=False) as client:
        assert (await client.delegate("echo", "route")).result == {"route": []}
        answer = await client.delegate("zeus", "delegate", echo)
        assert answer.result["result"] == {"route": ["zeus"]}
        answer = await client.delegate("zeus", "delegate", {"agent": "zeus", "action": "delegate", "payload": echo})
        assert answer.result["result"]["result"] == {"route": ["zeus", "zeus"]}
