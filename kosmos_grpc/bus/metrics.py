"""Event counters, named as the rest of the mesh's dashboards expect.

The subject label comes from a fixed set, whatever subjects and patterns clients use: the
mesh's own subjects by their first three tokens (``kosmos.events.user``), an agent's subjects
as ``kosmos.agents.<agent>`` for the first :data:`AGENT_LABELS` agents seen (then
``kosmos.agents``), any other subject of a kosmos family as the family (``kosmos.events``), and
everything else as ``other``. So a process has a bounded number of series, the broker too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "AGENT_LABELS",
    "BROKER_BACKEND",
    "CUT_OFF",
    "DROPPED",
    "FAMILIES",
    "KNOWN_LABELS",
    "OTHER_SUBJECTS",
    "PUBLISHED",
    "RECEIVED",
    "BrokerCounts",
    "label_agents",
    "published",
    "received",
    "subject_label",
]

#: The ``backend`` label of what the embedded broker itself counts (its clients count as ``embedded``).
BROKER_BACKEND = "broker"
#: The subject label of a subject or pattern outside the mesh's families.
OTHER_SUBJECTS = "other"
#: The labels of the mesh's own subjects (their first three tokens).
KNOWN_LABELS = frozenset(
    {
        "kosmos.events.user",
        "kosmos.events.system",
        "kosmos.events.audit",
        "kosmos.events.notifications",
        "kosmos.commands.scale",
    }
)
#: The families: a subject of one that is not in KNOWN_LABELS is counted under its family.
FAMILIES = frozenset({"kosmos.events", "kosmos.commands", "kosmos.agents"})
#: How many agents' subjects (``kosmos.agents.<agent>``) a process counts apart.
AGENT_LABELS = 32
_AGENTS = "kosmos.agents"
_agents_seen: set[str] = set()
# Once the mesh's agents are known (label_agents), only theirs are labelled apart: a client
# publishing on kosmos.agents.<anything> cannot take the labels first.
_agents_known = False


def label_agents(names: Iterable[str]) -> None:
    """Label apart the subjects of these agents (the mesh's, from its config) and of no others."""
    global _agents_known
    _agents_seen.clear()
    _agents_seen.update(f"{_AGENTS}.{name}" for name in list(names)[:AGENT_LABELS])
    _agents_known = True


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
CUT_OFF = Counter(
    "kosmos_bus_subscribers_cut_off_total",
    "Subscribers the broker ended because they stopped reading (RESOURCE_EXHAUSTED).",
)


def subject_label(subject: str) -> str:
    """The bounded label value of a subject or pattern (see the module's docstring)."""
    tokens = subject.split(".", 3)
    three = ".".join(tokens[:3])
    if three in KNOWN_LABELS:
        return three
    family = ".".join(tokens[:2])
    if family not in FAMILIES:
        return OTHER_SUBJECTS
    if family == _AGENTS and len(tokens) > 2 and tokens[2] not in ("*", ">"):
        if three in _agents_seen:
            return three
        if not _agents_known and len(_agents_seen) < AGENT_LABELS:
            _agents_seen.add(three)
            return three
    return family


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


class BrokerCounts:
    """The embedded broker's counts: events published through it, and deliveries it made.

    Each subject's children are looked up once (at most a bounded number of subjects are kept).
    """

    __slots__ = ("_children",)

    _LIMIT = 4096

    def __init__(self) -> None:
        self._children: dict[str, tuple[Any, Any]] = {}

    def _child(self, subject: str) -> tuple[Any, Any]:
        found = self._children.get(subject)
        if found is None:
            if len(self._children) >= self._LIMIT:
                self._children.clear()
            label = subject_label(subject)
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
