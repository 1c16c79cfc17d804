"""Agents for the coordination-pattern tests: they note what they are asked, in order, in one shared Journal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kosmos_grpc import Agent, Context, ResourceExhausted, action
from kosmos_grpc.patterns import Step, sequential


@dataclass
class Journal:
    """What the agents of one test did, in the order they did it, and the signals between them."""

    entries: list[str] = field(default_factory=list)
    #: (agent, payload) of every compensation call, failed ones included.
    releases: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: The message_id of every compensation call, in the same order.
    release_message_ids: list[str] = field(default_factory=list)
    hang_started: asyncio.Event = field(default_factory=asyncio.Event)
    hang_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Reached only by three calls running at the same time.
    rendezvous: asyncio.Barrier = field(default_factory=lambda: asyncio.Barrier(3))


class Worker(Agent):
    """Stamps, reserves and releases, quotes (fast, slow or failing), refuses, or hangs."""

    name = "worker"

    def __init__(
        self,
        journal: Journal,
        *,
        quote_delay_ms: float = 0,
        quote_fails: bool = False,
        release_failures: int = 0,
        release_stalls: int = 0,
    ) -> None:
        self.journal = journal
        self.quote_delay_ms = quote_delay_ms
        self.quote_fails = quote_fails
        self.release_failures = release_failures
        self.release_stalls = release_stalls

    @action
    async def stamp(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Add this agent's name and the call's correlation_id to the trail it was given."""
        self.journal.entries.append(f"{self.name}.stamp")
        return {
            "trail": [*(payload.get("trail") or []), self.name],
            "correlation_ids": [*(payload.get("correlation_ids") or []), ctx.correlation_id],
        }

    @action
    async def refuse(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Fail with RESOURCE_EXHAUSTED (once a hanging call has started, when told to wait for one)."""
        if payload.get("after_hang"):
            await asyncio.wait_for(self.journal.hang_started.wait(), 5)
        self.journal.entries.append(f"{self.name}.refuse")
        raise ResourceExhausted(f"{self.name} has nothing left")

    @action
    async def rendezvous(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer only once two other calls have reached this point too (so never when run one by one)."""
        await asyncio.wait_for(self.journal.rendezvous.wait(), 5)
        return {"agent": self.name, "payload": payload}

    @action
    async def hang(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Wait far longer than any test, noting whether the call was cancelled."""
        self.journal.hang_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.journal.hang_cancelled.set()
            raise
        return {}

    @action
    async def sleep(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Sleep payload.ms milliseconds."""
        await asyncio.sleep(payload["ms"] / 1000)
        return {"agent": self.name, "slept_ms": payload["ms"]}

    @action
    async def quote(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Quote a price after this agent's delay, or fail if it is one that fails."""
        await asyncio.sleep(self.quote_delay_ms / 1000)
        if self.quote_fails:
            raise RuntimeError("no quote today")
        return {"agent": self.name, "item": payload["item"], "price": 10}

    @action
    async def reserve(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Reserve payload.item."""
        self.journal.entries.append(f"{self.name}.reserve")
        return {"reservation": f"{self.name}-{payload.get('item', '')}"}

    @action
    async def release(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Undo a reservation; first stalls past any deadline, then fails, as often as this agent was told to."""
        self.journal.releases.append((self.name, payload))
        self.journal.release_message_ids.append(ctx.envelope.message_id)
        if self.release_stalls > 0:
            self.release_stalls -= 1
            self.journal.entries.append(f"{self.name}.release_stalled")
            await asyncio.sleep(3600)
        if self.release_failures > 0:
            self.release_failures -= 1
            self.journal.entries.append(f"{self.name}.release_failed")
            raise RuntimeError("the ledger is locked")
        self.journal.entries.append(f"{self.name}.release")
        return {"released": True}


class Alpha(Worker):
    """A worker named alpha."""

    name = "alpha"


class Beta(Worker):
    """A worker named beta."""

    name = "beta"


class Gamma(Worker):
    """A worker named gamma."""

    name = "gamma"


class Conductor(Agent):
    """Runs a pattern from inside a handler, through ctx.client."""

    name = "conductor"

    @action
    async def pipeline(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """alpha.stamp then beta.stamp on the payload; the last result."""
        responses = await sequential(ctx.client, [Step("alpha", "stamp"), Step("beta", "stamp")], payload)
        return responses[-1].result
