"""The agents the benchmarks call: an echo, a stream of n copies of a chunk, and a call that waits."""

from __future__ import annotations

import asyncio
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


class BenchWork(BenchEcho):
    """BenchEcho, plus a call that holds its handler slot for a while, as one waiting on I/O does."""

    @action
    async def work(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Wait payload.ms milliseconds (20 by default), then answer."""
        await asyncio.sleep(float(payload.get("ms", 20)) / 1000)
        return {"done": True}
