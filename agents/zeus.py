"""Zeus, the coordinator: delegates to the specialists and relays their streams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc import Agent, Chunk, Context, InvalidEnvelope, action

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Zeus"]

_ROUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "agent": {"type": "string", "description": "the specialist to call"},
        "action": {"type": "string", "description": "the specialist's action"},
        "payload": {"type": "object", "description": "the specialist action's input"},
    },
    "required": ["agent", "action"],
}


def _route(payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    agent, name, inner = payload.get("agent"), payload.get("action"), payload.get("payload", {})
    if not isinstance(agent, str) or not agent:
        raise InvalidEnvelope("payload.agent", "payload.agent must name the agent to call")
    if not isinstance(name, str) or not name:
        raise InvalidEnvelope("payload.action", "payload.action must name the action to run")
    if not isinstance(inner, dict):
        raise InvalidEnvelope("payload.payload", "payload.payload must be a JSON object")
    return agent, name, inner


class Zeus(Agent):
    """The coordinator: routes work to the specialist agents under the caller's deadline."""

    name = "zeus"

    @action(schema=_ROUTE_SCHEMA)
    async def delegate(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Run an action on a specialist and return which agent answered (a fallback, maybe) and its result."""
        agent, name, inner = _route(payload)
        response = await ctx.client.delegate(agent, name, inner)
        answer: dict[str, Any] = {"agent": response.agent, "result": response.result}
        if response.fallback_for:
            answer["fallback_for"] = response.fallback_for
        return answer

    @action(schema=_ROUTE_SCHEMA)
    async def relay(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Stream an action of a specialist, passing each chunk on as soon as it arrives."""
        agent, name, inner = _route(payload)
        async for chunk in ctx.client.stream(agent, name, inner):
            yield chunk  # passed on as received, without converting it
