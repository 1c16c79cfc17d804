"""The agent the benchmarks call: an echo, and a stream of n copies of a chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kosmos_grpc import Agent, Context, action


class BenchEcho(Agent):
    """Echoes its payload; streams n copies of payload.chunk."""

    name = "echo"

    @action
    async def echo(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Return the payload unchanged."""
        return payload

    @action
    async def chunks(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield payload.chunk payload.n times."""
        chunk = payload["chunk"]
        for _ in range(int(payload["n"])):
            yield chunk
