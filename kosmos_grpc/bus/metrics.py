"""Event counters, named as the rest of the mesh's dashboards expect.

The subject label keeps only its first three tokens (``kosmos.agents.athena``), so the number
of series stays bounded however many subjects are used. The broker, which counts the subjects
of any client, keeps fewer still (:func:`broker_subject_label`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BROKER_BACKEND",
    "BROKER_PREFIXES",
    "DROPPED",
    "OTHER_SUBJECTS",
    "PUBLISHED",
    "RECEIVED",
    "BrokerCounts",
    "broker_subject_label",
    "published",
    "received",
    "subject_label",
]

#: The ``backend`` label of what the embedded broker itself counts (its clients count as ``embedded``).
BROKER_BACKEND = "broker"
#: The subject label of a subject outside ``kosmos.``, or past the broker's bound on prefixes.
OTHER_SUBJECTS = "other"
#: How many ``kosmos.`` prefixes the broker counts apart; the rest are ``other``.
BROKER_PREFIXES = 64

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


def broker_subject_label(subject: str, known: set[str]) -> str:
    """The broker's bounded label of ``subject``: the first three tokens of a ``kosmos.`` subject,
    while ``known`` (the prefixes seen so far, which this fills) holds fewer than
    :data:`BROKER_PREFIXES` of them; else ``other``, whatever a client publishes on."""
    if not subject.startswith("kosmos."):
        return OTHER_SUBJECTS
    prefix = subject_label(subject)
    if prefix in known:
        return prefix
    if len(known) >= BROKER_PREFIXES:
        return OTHER_SUBJECTS
    known.add(prefix)
    return prefix


class BrokerCounts:
    """The embedded broker's counts: events published through it, and deliveries it made.

    Each subject's children are looked up once (at most a bounded number of subjects are kept).
    """

    __slots__ = ("_children", "_known")

    _LIMIT = 4096

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._children: dict[str, tuple[Any, Any]] = {}

    def _child(self, subject: str) -> tuple[Any, Any]:
        found = self._children.get(subject)
        if found is None:
            if len(self._children) >= self._LIMIT:
                self._children.clear()
            label = broker_subject_label(subject, self._known)
            found = self._children[subject] = (
                PUBLISHED.labels(BROKER_BACKEND, label),
                RECEIVED.labels(BROKER_BACKEND, label),
            )
        return found

    def published(self, subject: str, delivered: int) -> None:
        """Count an event published on ``subject`` and the ``delivered`` subscriptions that took it."""
        publishes, deliveries = self._child(subject)
        publishes.inc()
        if delivered:
            deliveries.inc(delivered)

    def delivered(self, subject: str) -> None:
        """Count one event delivered on ``subject`` (to a subscriber of a broker bridged to NATS)."""
        self._child(subject)[1].inc()
