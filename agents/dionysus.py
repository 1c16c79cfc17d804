"""Dionysus, the writer: answers in prose on any topic; Athena's fallback when she cannot answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc import Agent, Context, InvalidEnvelope, action

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Dionysus"]

_SCHEMA = {"type": "object", "properties": {"topic": {"type": "string", "minLength": 1}}, "required": ["topic"]}


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

    @action(schema=_SCHEMA)
    async def answer(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Write a short answer about a topic."""
        return {"topic": payload.get("topic"), "answer": " ".join(_lines(payload))}

    @action(schema=_SCHEMA)
    async def explain(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Write about a topic line by line."""
        for index, line in enumerate(_lines(payload)):
            yield {"index": index, "text": line}
