"""Each payload checked against its action's input schema by a real server, before the handler runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from agents.zeus import Zeus
from kosmos_grpc import Agent, AgentServer, Context, InvalidEnvelope, action

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import Mesh

_QUERY = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1},
        "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
    },
    "required": ["query"],
    "additionalProperties": False,
}


class Library(Agent):
    """Counts what its handlers were given: a refused payload never reaches one."""

    name = "library"

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @action(schema=_QUERY)
    async def search(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(payload)
        return {"k": payload["k"]}

    @action(schema=_QUERY)
    async def browse(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.seen.append(payload)
        for i in range(payload["k"]):
            yield {"i": i}

    @action
    async def anything(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        return {"keys": sorted(payload)}


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"query": "grpc", "k": 99}, "payload.k", "payload.k: must be smaller than or equal to 50"),
        ({"k": 3}, "payload.query", "payload.query is required"),
        ({"query": ""}, "payload.query", "payload.query: must be longer than or equal to 1 characters"),
        ({"query": "grpc", "extra": 1}, "payload", "must not contain"),
        ({"query": 7}, "payload.query", "payload.query: must be string"),
    ],
)
async def test_a_payload_that_breaks_its_schema_is_invalid_argument_naming_its_path(
    mesh: Mesh, payload: dict[str, Any], field: str, says: str
) -> None:
    agent = Library()
    await mesh.serve(agent)
    async with mesh.client(resilience=False) as client:

        async def unary() -> None:
            await client.delegate("library", "search", payload)

        async def stream() -> None:
            async for _ in client.stream("library", "browse", payload):
                pass

        for call in (unary, stream):
            with pytest.raises(InvalidEnvelope) as refused:
                await call()
            assert refused.value.metadata["field"] == field
            assert says in refused.value.message
    assert agent.seen == [], "no handler ran"


async def test_the_defaults_of_the_schema_are_filled_in_and_actions_without_one_take_anything(mesh: Mesh) -> None:
    agent = Library()
    await mesh.serve(agent)
    async with mesh.client() as client:
        assert (await client.delegate("library", "search", {"query": "grpc"})).result == {"k": 5}
        chunks = [chunk async for chunk in client.stream("library", "browse", {"query": "grpc", "k": 2})]
        assert [chunk.data for chunk in chunks] == [{"i": 0}, {"i": 1}]
        assert (await client.delegate("library", "anything", {"z": 1, "a": [2]})).result == {"keys": ["a", "z"]}
        card = await client.describe("library")
    assert agent.seen == [{"query": "grpc", "k": 5}, {"query": "grpc", "k": 2}]
    shown = {item.name: item.input_schema for item in card.actions}
    assert shown["search"] == _QUERY
    assert shown["anything"] is None


async def test_an_action_whose_schema_is_no_json_schema_is_refused_when_its_server_is_made() -> None:
    class Broken(Agent):
        name = "broken"

        @action(schema={"type": "no such type"})
        async def act(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match=r"broken\.act: its input schema is not a valid JSON Schema"):
        AgentServer(Broken())


async def test_zeus_names_the_route_field_its_schema_misses(mesh: Mesh) -> None:
    await mesh.serve(Zeus())
    async with mesh.client(resilience=False) as client:
        with pytest.raises(InvalidEnvelope) as refused:
            await client.delegate("zeus", "delegate", {"action": "answer"})
    assert refused.value.metadata["field"] == "payload.agent"
