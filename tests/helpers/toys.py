"""Stand-ins for Athena and Dionysus that the tests serve: a few fixed sentences, at once or one by one.

They keep the real agents' names, so configs and fallbacks read as the mesh's, without the real
ones' index or model to load; ``tests.helpers.toys:Athena`` in a config serves one in a process.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from kosmos_grpc import Agent, Context, InvalidEnvelope, action

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Athena", "Dionysus"]

_KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "grpc": (
        "gRPC is a remote procedure call framework built on HTTP/2 and protocol buffers.",
        "Each call has a deadline, and a status code says how it ended.",
        "Server streaming lets one request receive many responses as they are made.",
    ),
    "kosmos": (
        "KOSMOS is a gRPC service mesh for multi-agent systems.",
        "Zeus coordinates, and the specialists each serve one generic AgentService.",
        "Every message travels in one envelope with a TTL, a priority and a correlation id.",
    ),
    "nats": (
        "NATS is a messaging system with a subject hierarchy.",
        "A star wildcard matches one token and a greater-than wildcard matches the rest.",
        "JetStream adds persistence and redelivery.",
    ),
}

_TOPIC = {"type": "string", "enum": sorted(_KNOWLEDGE)}
_ANSWER_SCHEMA = {"type": "object", "properties": {"topic": _TOPIC}, "required": ["topic"]}
_EXPLAIN_SCHEMA = {
    "type": "object",
    "properties": {"topic": _TOPIC, "pause_ms": {"type": "number", "minimum": 0, "maximum": 5000}},
    "required": ["topic"],
}


def _topic(payload: dict[str, Any]) -> str:
    topic = payload.get("topic")
    if not isinstance(topic, str) or topic.lower() not in _KNOWLEDGE:
        known = ", ".join(sorted(_KNOWLEDGE))
        raise InvalidEnvelope("payload.topic", f"payload.topic must be one of: {known}")
    return topic.lower()


class Athena(Agent):
    """Knowledge: answers what she knows about a topic."""

    name = "athena"

    @action(schema=_ANSWER_SCHEMA)
    async def answer(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer a question about a topic in one response."""
        topic = _topic(payload)
        return {"topic": topic, "answer": " ".join(_KNOWLEDGE[topic])}

    @action(schema=_EXPLAIN_SCHEMA)
    async def explain(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Explain a topic sentence by sentence, streaming each as it is ready."""
        topic = _topic(payload)
        pause = payload.get("pause_ms", 100)
        if not isinstance(pause, int | float) or not 0 <= pause <= 5000:
            raise InvalidEnvelope("payload.pause_ms", "payload.pause_ms must be a number from 0 to 5000")
        for index, sentence in enumerate(_KNOWLEDGE[topic]):
            if index:
                await asyncio.sleep(pause / 1000)  # stands in for the time a model takes per sentence
            yield {"index": index, "text": sentence}


_PROSE_SCHEMA = {"type": "object", "properties": {"topic": {"type": "string", "minLength": 1}}, "required": ["topic"]}


def _lines(payload: dict[str, Any]) -> list[str]:
    topic = payload.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidEnvelope("payload.topic", "payload.topic must be a non-empty string")
    topic = topic.strip()
    return [
        f"Of {topic} I know less than Athena, but I can tell it well.",
        f"Every story of {topic} begins with a question someone could not leave alone.",
        f"Ask Athena again later for the facts of {topic}; take this meanwhile.",
    ]


class Dionysus(Agent):
    """Writing: answers in prose on any topic, with the same actions as Athena so he can stand in for her."""

    name = "dionysus"

    @action(schema=_PROSE_SCHEMA)
    async def answer(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Write a short answer about a topic."""
        return {"topic": payload.get("topic"), "answer": " ".join(_lines(payload))}

    @action(schema=_PROSE_SCHEMA)
    async def explain(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Write about a topic line by line."""
        for index, line in enumerate(_lines(payload)):
            yield {"index": index, "text": line}
