"""What Zeus writes from his specialists' answers: the status summary, an email's body, a failure as data."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import TYPE_CHECKING, Any

from kosmos_grpc.quoting import clip

if TYPE_CHECKING:
    from kosmos_grpc import KosmosError

__all__ = ["derived_message_id", "email_body", "failure", "one_line", "status_summary"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def derived_message_id(parent: str, step: str) -> str:
    """A message_id made from the call's own and the step's name: the same workflow retried under
    its message_id asks its steps again under theirs, so Hermes sends its email once."""
    digest = hashlib.sha256(f"{parent}/{step}".encode()).digest()[:16]
    return str(uuid.UUID(bytes=digest, version=4))


def one_line(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters: every run of spaces, line breaks and
    control characters one space. What a question becomes in an email's subject, a header."""
    return clip(" ".join(_CONTROL.sub(" ", text).split()), limit)


def failure(error: KosmosError) -> dict[str, str]:
    """A failed call as the workflow's answer shows it: its status and one line of why."""
    return {"code": error.code.name, "message": clip(error.message, 300)}


def email_body(text: str, citations: list[dict[str, Any]]) -> str:
    """The answer, then its numbered sources."""
    lines = [text.strip(), ""]
    if citations:
        lines.append("Sources:")
        lines += [
            f"[{c.get('index', '?')}] {c.get('title') or c.get('source', '')} ({c.get('source', '')})"
            for c in citations
        ]
    lines += ["", "-- Sent by KOSMOS (Zeus, through Hermes)"]
    return "\n".join(lines)


def _health_line(status: dict[str, Any]) -> str:
    agents: dict[str, Any] = status.get("agents", {})
    serving = sorted(name for name, info in agents.items() if info.get("health") == "SERVING")
    others = {name: info.get("health", "?") for name, info in sorted(agents.items()) if name not in serving}
    line = f"{len(serving)} of {len(agents)} agents SERVING"
    if others:
        line += " (" + ", ".join(f"{name} {health}" for name, health in others.items()) + ")"
    source = status.get("source")
    return f"{line}, as {source} sees it" if source else line


def _metrics_line(metrics: dict[str, Any]) -> str:
    calls, rate = metrics.get("calls", 0), metrics.get("error_rate", 0.0) or 0.0
    line = f"{calls} delegations, {rate:.1%} failed"
    p95 = (metrics.get("latency_seconds") or {}).get("p95")
    return f"{line}, p95 {p95 * 1000:.1f} ms" if isinstance(p95, int | float) else line


def status_summary(parts: dict[str, Any], failures: dict[str, dict[str, str]]) -> str:
    """One paragraph over what each specialist said, and which could not say."""
    lines: list[str] = []
    if "health" in parts:
        lines.append(_health_line(parts["health"]))
    if "metrics" in parts:
        lines.append(_metrics_line(parts["metrics"]))
    if "data" in parts:
        rows = len(parts["data"].get("rows", []))
        lines.append(f"the data query returned {rows} row{'s' if rows != 1 else ''}")
    if "docs" in parts:
        documents = parts["docs"].get("documents", [])
        lines.append(f"top document: {documents[0].get('title', '?')}" if documents else "no document matched")
    for part, why in failures.items():
        lines.append(f"{part}: {why['code']}")
    if not lines:
        return "Nothing answered."
    text = "; ".join(lines)
    return text[0].upper() + text[1:] + "."
