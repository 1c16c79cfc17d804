"""Zeus, the coordinator: the seed's workflows on the specialists, and plain routing to any of them.

``ask`` is sequential (Athena finds, Dionysus writes, Hermes emails), ``status`` parallel,
``generate_report`` a relayed stream, ``broadcast`` a scatter-gather over every agent and
``publish_report`` a saga whose completed steps are undone in reverse when a later one fails.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from agents.synthesis import derived_message_id, email_body, failure, one_line, status_summary
from kosmos_grpc import (
    Agent,
    Call,
    Chunk,
    Context,
    DeadlineExceeded,
    InvalidEnvelope,
    KosmosError,
    Saga,
    SagaFailed,
    SagaStep,
    action,
    parallel,
    scatter_gather,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["MIN_BROADCAST_MS", "REPORTS_PUBLISHED", "REPORTS_RETRACTED", "Zeus"]

#: Where a published report is announced, and its retraction when the saga is undone.
REPORTS_PUBLISHED = "kosmos.events.reports.published"
REPORTS_RETRACTED = "kosmos.events.reports.retracted"
#: The longest an announcement may wait for the bus to take it.
ANNOUNCE_TIMEOUT_MS = 3_000
#: The least a broadcast gives the agents: with less, every one of them times out, and each such
#: DEADLINE_EXCEEDED counts against its circuit in Zeus, so that a few broadcasts would open them all.
MIN_BROADCAST_MS = 100

_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_EMAIL = {"type": "string", "minLength": 3, "maxLength": 320, "description": "where to email the answer"}
_ROUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "agent": {**_NAME, "description": "the specialist to call"},
        "action": {**_NAME, "description": "the specialist's action"},
        "payload": {"type": "object", "description": "the specialist action's input"},
    },
    "required": ["agent", "action"],
}
_QUESTION = {"type": "string", "minLength": 1, "maxLength": 2000}
_ASK_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {**_QUESTION, "description": "what to answer, from Athena's corpus"},
        "email_to": _EMAIL,
        "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5, "description": "sources to draw on"},
    },
    "required": ["question"],
    "additionalProperties": False,
}
_STATUS_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {**_QUESTION, "default": "health checks and monitoring", "description": "what Athena searches"},
        "sql": {
            "type": "string",
            "minLength": 1,
            "maxLength": 10_000,
            "default": "SELECT region, orders, amount FROM sales_by_region ORDER BY amount DESC LIMIT 3",
            "description": "what Demeter runs",
        },
        "service": {**_NAME, "description": "whose metrics Prometheus reads (default: the whole mesh)"},
    },
    "additionalProperties": False,
}
_REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {**_QUESTION, "description": "what the report is about"},
        "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
        "max_sentences": {"type": "integer", "minimum": 1, "maximum": 20, "default": 8},
    },
    "required": ["topic"],
    "additionalProperties": False,
}
_PUBLISH_SCHEMA = {
    "type": "object",
    "properties": {**_REPORT_SCHEMA["properties"], "email_to": _EMAIL},  # type: ignore[dict-item]
    "required": ["topic", "email_to"],
    "additionalProperties": False,
}
_BROADCAST_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {**_NAME, "description": "the action every agent is asked"},
        "payload": {"type": "object", "default": {}, "description": "its input"},
        "timeout_ms": {"type": "number", "minimum": MIN_BROADCAST_MS, "maximum": 60_000, "default": 5_000},
    },
    "required": ["action"],
    "additionalProperties": False,
}
_ANNOUNCE_SCHEMA = {
    "type": "object",
    "properties": {
        "report_id": _NAME,
        "title": {"type": "string", "maxLength": 300},
        "reason": {"type": "string", "maxLength": 1000},
    },
    "required": ["report_id"],
    "additionalProperties": False,
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
    """The coordinator: runs the seed's workflows on the specialists, under the caller's deadline."""

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

    @action(schema=_ASK_SCHEMA)
    async def ask(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Sequential: Athena finds the sources, Dionysus writes the answer with citations, Hermes emails it."""
        question = payload["question"]
        found = await ctx.client.delegate("athena", "retrieve_context", {"query": question, "k": payload["k"]})
        draft = await ctx.client.delegate("dionysus", "write", {"instructions": question, "context": found.result})
        answer: dict[str, Any] = {
            "question": question,
            "answer": draft.result.get("text", ""),
            "citations": draft.result.get("citations", []),
            "sources_from": found.agent,
        }
        if found.fallback_for:
            answer["fallback_for"] = found.fallback_for
        if "email_to" in payload:
            sent = await ctx.client.delegate(
                "hermes",
                "send_email",
                {
                    "to": payload["email_to"],
                    "subject": f"KOSMOS: {one_line(question, 80)}",
                    "body": email_body(answer["answer"], answer["citations"]),
                },
                message_id=derived_message_id(ctx.envelope.message_id, "email"),
            )
            answer["email"] = sent.result
        return answer

    @action(schema=_STATUS_SCHEMA)
    async def status(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Parallel: Athena's documents, Demeter's data, Prometheus's metrics and Apollo's health, in one summary."""
        metrics = {"service": payload["service"]} if "service" in payload else {}
        parts = {
            "docs": Call("athena", "search", {"query": payload["query"], "k": 3}),
            "data": Call("demeter", "query_data", {"sql": payload["sql"], "max_rows": 100}),
            "metrics": Call("prometheus", "get_metrics", metrics),
            "health": Call("apollo", "get_status", {}),
        }
        outcomes = await parallel(ctx.client, list(parts.values()), collect=True)
        answers: dict[str, Any] = {}
        failures: dict[str, dict[str, str]] = {}
        answered_by: dict[str, str] = {}
        for part, outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, KosmosError):
                failures[part] = failure(outcome)
            else:
                answers[part] = outcome.result
                answered_by[part] = outcome.agent
        return {"summary": status_summary(answers, failures), "parts": answers, "by": answered_by, "failures": failures}

    @action(schema=_REPORT_SCHEMA)
    async def generate_report(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Athena's sources, then Dionysus's report on them, relayed chunk by chunk as he writes it."""
        found = await ctx.client.delegate("athena", "retrieve_context", {"query": payload["topic"], "k": payload["k"]})
        request = {
            "instructions": payload["topic"],
            "context": found.result,
            "max_sentences": payload["max_sentences"],
        }
        async for chunk in ctx.client.stream("dionysus", "stream_generate", request):
            yield chunk

    @action(schema=_BROADCAST_SCHEMA)
    async def broadcast(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Scatter-gather: ask every other agent the same action at once; every success and every failure."""
        others = sorted(name for name in self.host.registry if name != self.name)
        if not math.isfinite(payload["timeout_ms"]):  # NaN passes a schema's bounds: no comparison holds for it
            raise InvalidEnvelope(
                "payload.timeout_ms", f"payload.timeout_ms must be a number, not {payload['timeout_ms']}"
            )
        left = ctx.time_remaining()
        timeout_ms = payload["timeout_ms"] if left is None else min(payload["timeout_ms"], left * 1000 * 0.9)
        if timeout_ms < MIN_BROADCAST_MS:
            raise DeadlineExceeded(
                f"the call has {timeout_ms:.0f} ms left for its broadcast, under the {MIN_BROADCAST_MS} ms it needs:"
                " no agent was asked",
                metadata={"field": "ttl_ms"},
            )
        gathered = await scatter_gather(ctx.client, others, payload["action"], payload["payload"], timeout_ms)
        return {
            "action": payload["action"],
            "asked": others,
            "successes": {name: response.result for name, response in gathered.successes.items()},
            "failures": {name: failure(error) for name, error in gathered.failures.items()},
        }

    @action(schema=_PUBLISH_SCHEMA)
    async def publish_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Saga: Demeter stores the report, Hermes emails it, the bus announces it; a failure undoes the rest."""
        topic, to = payload["topic"], payload["email_to"]
        found = await ctx.client.delegate("athena", "retrieve_context", {"query": topic, "k": payload["k"]})
        request = {"instructions": topic, "context": found.result}
        draft = await ctx.client.delegate("dionysus", "write", {**request, "max_sentences": payload["max_sentences"]})
        title = f"Report: {one_line(topic, 150)}"
        body = email_body(draft.result.get("text", ""), draft.result.get("citations", []))
        # Zeus names the report, so every step knows it from the start, and the saga retried under
        # this call's message_id stores the same report again rather than a second one.
        report_id = "rpt-" + derived_message_id(ctx.envelope.message_id, "report").replace("-", "")[:24]
        email = {"to": to, "subject": title, "body": body}
        announcement = {"report_id": report_id, "title": title}
        saga = Saga(
            [
                SagaStep("demeter", "store_report", {**announcement, "body": body}, _delete_report, name="store"),
                SagaStep("hermes", "send_email", email, _retraction, name="email"),
                SagaStep("zeus", "announce_report", announcement, _retract_announcement, name="announce"),
            ],
            self.host.bus,
            name="publish_report",
        )
        try:
            result = await saga.run(ctx.client)
        except SagaFailed as exc:
            exc.metadata["report_id"] = report_id  # what was stored and undone, for the caller to check
            raise
        _, sent, announced = (response.result for response in result.responses)
        return {
            "report_id": report_id,
            "title": title,
            "email": sent,
            "announced": announced,
            "saga_id": result.saga_id,
        }

    @action(schema=_ANNOUNCE_SCHEMA)
    async def announce_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The saga's last step: announce a stored and emailed report on the bus, acknowledged by it."""
        event_id = await self._publish(ctx, REPORTS_PUBLISHED, payload)
        return {"subject": REPORTS_PUBLISHED, "event_id": event_id}

    @action(schema=_ANNOUNCE_SCHEMA)
    async def retract_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Undo an announcement: announce its retraction."""
        event_id = await self._publish(ctx, REPORTS_RETRACTED, payload)
        return {"subject": REPORTS_RETRACTED, "event_id": event_id}

    async def _publish(self, ctx: Context, subject: str, event: dict[str, Any]) -> str:
        left = ctx.time_remaining()
        timeout_ms = ANNOUNCE_TIMEOUT_MS if left is None else max(1.0, min(ANNOUNCE_TIMEOUT_MS, left * 1000))
        try:
            return await ctx.bus.publish(
                subject, event, correlation_id=ctx.correlation_id, acknowledge=True, timeout_ms=timeout_ms
            )
        except KosmosError as exc:
            # Said as the bus's failure, not as this call's (which answered in time); not retried, as
            # the bus may have taken it all the same.
            raise DeadlineExceeded(
                f"the event bus did not take the announcement on {subject} within {timeout_ms:.0f} ms: {exc.message}",
                metadata={"cause": "event bus", "subject": subject},
            ) from None


def _delete_report(payload: dict[str, Any], result: Any) -> Call:
    return Call("demeter", "delete_report", {"report_id": payload["report_id"]})


def _retraction(payload: dict[str, Any], result: Any) -> Call:
    original = result.get("email_message_id", "")
    body = f"Please disregard the report '{payload['subject']}' sent as {original}: it was not published."
    retraction = {"to": payload["to"], "subject": f"Retraction: {payload['subject']}", "body": body}
    if original:
        retraction["in_reply_to"] = original
    return Call("hermes", "send_email", retraction)


def _retract_announcement(payload: dict[str, Any], result: Any) -> Call:
    return Call("zeus", "retract_report", {**payload, "reason": "the report's saga was undone"})
