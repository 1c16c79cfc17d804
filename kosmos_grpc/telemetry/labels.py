"""Metric label values from names a request carries, bounded: a request cannot make series without end.

A delegation's target and action come from the caller, and through Zeus from a payload: labelled
as they are, every distinct name would be a new series for as long as the process lives (a few
requests with long random action names took Zeus's ``/metrics`` from 12 KB to 8.9 MB). So:

- an agent is its own label only when the registry knows it, else :data:`OTHER_LABEL`;
- an action is its own label once its target has answered it (OK: it is one of the target's
  actions; at most :data:`SERVED_LIMIT` per target); before that, only while fewer than
  :data:`GUESSED_LIMIT` such names have been labelled for the target, and only names of at most
  :data:`LABEL_LENGTH` characters (so the errors of a real action that has not succeeded yet,
  an agent down from the start, still show under its name); the rest are :data:`OTHER_LABEL`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Container

__all__ = ["GUESSED_LIMIT", "LABEL_LENGTH", "OTHER_LABEL", "SERVED_LIMIT", "UNKNOWN_LABEL", "DelegationLabels"]

#: The label of an agent or action that does not exist (NOT_FOUND, UNIMPLEMENTED).
UNKNOWN_LABEL = "_unknown"
#: The label of every name past the bounds: not known, too long, or one too many.
OTHER_LABEL = "_other"
#: Actions a target answered, labelled by name, at most; names not yet answered, at most; their length.
SERVED_LIMIT = 256
GUESSED_LIMIT = 16
LABEL_LENGTH = 64


class DelegationLabels:
    """The label values of one caller's delegations: its targets from ``known``, their actions bounded."""

    __slots__ = ("_guessed", "_served", "known")

    def __init__(self, known: Container[str] | None = None) -> None:
        #: The agents that may label series (the registry); None: any agent.
        self.known = known
        self._served: dict[str, set[str]] = {}
        self._guessed: dict[str, set[str]] = {}

    def agent(self, name: str) -> str:
        """``name`` when it is a known agent, else :data:`OTHER_LABEL`."""
        if name == UNKNOWN_LABEL or self.known is None or name in self.known:
            return name
        return OTHER_LABEL

    def action(self, target: str, name: str, code: str) -> str:
        """The label of action ``name`` on ``target`` (an agent label) for a call that ended with ``code``."""
        if name == UNKNOWN_LABEL:
            return name
        served = self._served.get(target)
        if served is None:
            served = self._served[target] = set()
        if name in served:
            return name
        if code == "OK" and len(served) < SERVED_LIMIT:
            served.add(name)  # the target has this action: its name labels every call from now on
            return name
        guessed = self._guessed.get(target)
        if guessed is None:
            guessed = self._guessed[target] = set()
        if name in guessed:
            return name
        if len(guessed) < GUESSED_LIMIT and len(name) <= LABEL_LENGTH:
            guessed.add(name)
            return name
        return OTHER_LABEL
