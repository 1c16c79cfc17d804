"""What Apollo's and Prometheus's ``get_status`` share: its input, the circuits towards each agent, its reply.

A circuit is kept by its caller; ``get_status`` shows it under its target: every agent is asked
for its card (``Describe``, in parallel, within a short timeout) and the circuits are inverted.
An agent that does not answer shows no circuits of its own; its health says why.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from kosmos_grpc import AgentCard, NotFound
from kosmos_grpc.quoting import clip, echo

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from kosmos_grpc import Context, Coordinator

__all__ = [
    "MAX_AGENTS",
    "STATUS_SCHEMA",
    "agent_entry",
    "agents_asked",
    "budget",
    "circuits_towards",
    "iso_time",
    "seconds_setting",
    "status_reply",
]

#: The most agents one ``get_status`` reports on (and asks for their cards).
MAX_AGENTS = 256

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "agent": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "the one agent to report on (default: every agent of the mesh)",
        }
    },
    "additionalProperties": False,
}

Circuit = dict[str, Any]


def agents_asked(payload: Mapping[str, Any], registry: Mapping[str, str]) -> list[str]:
    """The agents a ``get_status`` reports on: ``payload.agent``, else every agent of the registry.

    Raises:
        NotFound: the mesh has no agent named ``payload.agent``.
    """
    agent = payload.get("agent")
    if agent is None:
        return sorted(registry)[:MAX_AGENTS]
    if agent not in registry:
        known = clip(", ".join(sorted(registry)) or "none", 300)
        raise NotFound(
            f"payload.agent: no agent named {echo(agent)} in the mesh (agents: {known})",
            metadata={"field": "payload.agent"},
        )
    return [agent]


def budget(ctx: Context, seconds: float) -> float:
    """``seconds``, or less when the call has less time left (a share of it, for the reply)."""
    left = ctx.time_remaining()
    return seconds if left is None else max(0.01, min(seconds, left * 0.8))


def iso_time(seconds: float | None) -> str | None:
    """Wall-clock ``seconds`` as ISO 8601 in UTC, to the millisecond (None stays None)."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


async def circuits_towards(client: Coordinator, callers: Sequence[str], seconds: float) -> dict[str, list[Circuit]]:
    """target -> the circuits its callers keep to it, from every caller's ``Describe`` within ``seconds``."""
    cards = await asyncio.gather(
        *(client.describe(caller, timeout_ms=seconds * 1000) for caller in callers), return_exceptions=True
    )
    towards: dict[str, list[Circuit]] = {}
    for caller, card in zip(callers, cards, strict=True):
        if isinstance(card, AgentCard):
            for circuit in card.circuits:
                towards.setdefault(circuit.target, []).append(
                    {"caller": caller, "state": circuit.state, "failures": circuit.failures}
                )
        elif not isinstance(card, Exception):  # a cancellation: not an answer to skip
            raise card
    return towards


def agent_entry(health: str, since: float | None, circuits: list[Circuit] | None) -> dict[str, Any]:
    """One agent's part of the reply."""
    return {
        "health": health,
        "since": iso_time(since),
        "circuits": sorted(circuits or [], key=lambda c: str(c["caller"])),
    }


def status_reply(
    agents: dict[str, dict[str, Any]], events: dict[str, Any], source: str, note: str | None = None
) -> dict[str, Any]:
    """The whole reply of a ``get_status``."""
    reply: dict[str, Any] = {"agents": agents, "events": events, "source": source}
    if note is not None:
        reply["note"] = note
    return reply


def seconds_setting(low: float, high: float, default: float, what: str) -> dict[str, Any]:
    """The JSON Schema of a settings key holding seconds, from ``low`` to ``high``."""
    return {"type": "number", "minimum": low, "maximum": high, "default": default, "description": what}
