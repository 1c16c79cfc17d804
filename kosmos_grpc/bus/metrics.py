"""Event counters, named as the rest of the mesh's dashboards expect.

The subject label keeps only its first three tokens (``kosmos.agents.athena``), so the number
of series stays bounded however many subjects are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DROPPED", "PUBLISHED", "RECEIVED", "published", "received", "subject_label"]

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


def _cached(counter: Counter) -> Callable[[str, str], Any]:
    """``counter``'s child for (backend, subject), looked up once per subject rather than per event."""
    children: dict[tuple[str, str], Any] = {}

    def child(backend: str, subject: str) -> Any:
        found = children.get((backend, subject))
        if found is None:
            if len(children) >= 4096:
                children.clear()
            found = children[(backend, subject)] = counter.labels(backend, subject_label(subject))
        return found

    return child


published = _cached(PUBLISHED)
received = _cached(RECEIVED)
