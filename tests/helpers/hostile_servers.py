"""The servers the hostile-input suite attacks, each in a process of its own, so its memory is its own.

``python -m tests.helpers.hostile_servers agent|broker`` serves a :class:`Target` agent (as
kosmos.toml serves Zeus: 64 handlers at once, 256 waiting, 1,024 RPCs) or the embedded event
broker on a free loopback port, logs at WARNING to stderr as ``kosmos serve`` does, prints its
address on stdout once SERVING, and serves until its stdin closes or SIGTERM.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.harness import wait_for_stop
from kosmos_grpc import Agent, AgentServer, Context, Idempotency, ServerSettings, action, runtime
from kosmos_grpc.bus import BrokerServer
from kosmos_grpc.telemetry.logs import configure_logging

__all__ = ["MAX_CHUNKS", "Target"]

#: The most chunks :meth:`Target.count` streams, whatever it is asked.
MAX_CHUNKS = 20


class Target(Agent):
    """A unary and a streaming action that never raise, whatever payload they get."""

    name = "target"

    @action
    async def echo(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Return the payload unchanged."""
        return payload

    @action
    async def count(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream payload.n chunks (3 unless n is a number; at most MAX_CHUNKS)."""
        n = payload.get("n")
        wanted = int(n) if isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) else 3
        for i in range(max(0, min(wanted, MAX_CHUNKS))):
            yield {"i": i}


async def serve(kind: str) -> None:
    """Serve ``kind`` ("agent" or "broker") until stopped."""
    if kind == "agent":
        # Its memory of executed calls holds 8 MiB of replies, not the default 64: the suite's bound on
        # memory is about what a server keeps by mistake, well under what it keeps by design.
        settings = ServerSettings(
            grace_seconds=1,
            max_concurrency=64,
            queue_limit=256,
            max_concurrent_rpcs=1024,
            idempotency=Idempotency(bytes=8 * 1024 * 1024),
        )
        agent = AgentServer(Target(), settings, resilience=False)
        await agent.start()
        print(agent.address, flush=True)
        await wait_for_stop()
        await agent.stop(0)
        return
    broker = BrokerServer(address="127.0.0.1:0", grace_seconds=1)
    await broker.start()
    print(broker.address, flush=True)
    await wait_for_stop()
    await broker.stop(0)


if __name__ == "__main__":
    configure_logging(level=logging.WARNING)
    runtime.run(serve(sys.argv[1]))
