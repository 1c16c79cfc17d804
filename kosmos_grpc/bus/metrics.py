"""Event counters, named as the rest of the mesh's dashboards expect.

The subject label keeps only its first three tokens (``kosmos.agents.athena``), so the number
of series stays bounded however many subjects are used.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

__all__ = ["DROPPED", "PUBLISHED", "RECEIVED", "published", "subject_label"]

PUBLISHED = Counter(
    "nats_messages_published_total", "Events published, by backend and subject prefix.", ("backend", "subject")
)
RECEIVED = Counter(
    "nats_messages_received_total",
    "Events received by subscribers, by backend and subject prefix.",
    ("backend", "subject"),
)
DROPPED = Counter(
    "kosmos_events_dropped_total", "Events dropped because a subscriber's buffer was full.", ("backend", "subject")
)


def subject_label(subject: str) -> str:
    """The first three tokens of a subject or pattern: the bounded label value."""
    return ".".join(subject.split(".", 3)[:3])


_published: dict[tuple[str, str], Any] = {}


def published(backend: str, subject: str) -> Any:
    """The published counter for a subject (its child looked up once per subject, not per event)."""
    key = (backend, subject)
    child = _published.get(key)
    if child is None:
        if len(_published) >= 4096:
            _published.clear()
        child = _published[key] = PUBLISHED.labels(backend, subject_label(subject))
    return child
