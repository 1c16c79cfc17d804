"""Agents for the tracing test, each run in a process of its own under `kosmos up`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kosmos_grpc import Agent, Context, action
from kosmos_grpc.bus import Event

EVENT_SUBJECT = "kosmos.events.user.action"


class Planner(Agent):
    """Asks the scribe to write, and tells whoever listens that it planned."""

    name = "planner"

    @action
    async def plan(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Delegate to scribe.write, then publish one event (acknowledged by the bus)."""
        written = await ctx.client.delegate("scribe", "write", {"topic": payload.get("topic", "")})
        await ctx.bus.publish(EVENT_SUBJECT, {"planned": True}, acknowledge=True)
        return {"trace_id": ctx.envelope.trace_id, "scribe": written.result}


class Scribe(Agent):
    """Writes, and listens for events once asked to."""

    name = "scribe"

    def __init__(self) -> None:
        self.heard: list[str] = []

    @action
    async def write(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Write about payload.topic; say which trace the call belonged to."""
        return {"text": f"on {payload.get('topic')}", "trace_id": ctx.envelope.trace_id}

    @action
    async def recite(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream three lines, each saying which trace the call belonged to."""
        for line in range(3):
            yield {"line": line, "trace_id": ctx.envelope.trace_id}

    @action
    async def listen(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Subscribe to the planner's events with a handler."""

        async def heard(event: Event) -> None:
            self.heard.append(event.message_id)

        await ctx.bus.subscribe(EVENT_SUBJECT, heard)
        return {"listening": EVENT_SUBJECT}
