"""Which patterns match a subject, by bitsets: a cost bounded whatever the patterns' shapes.

A trie walk visits every branch that agrees with a subject so far; patterns that mix ``*`` and
the subject's own tokens, differing only late, make thousands of such branches (4,096 patterns
over 13 tokens: a millisecond a publish). Here each distinct pattern has a bit, and a subject
of n tokens costs about 3n operations on integers of one bit per pattern (10,000 patterns:
1.3 KB each, some hundred nanoseconds an operation), whatever the patterns look like. The
subject trie uses this when its walk would be long.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["PatternBits"]

T = TypeVar("T")

_SINGLE = "*"
_REST = ">"


class PatternBits(Generic[T]):
    """Distinct patterns (already valid, at most ``max_tokens`` tokens) as bits; :meth:`match`
    gives the values of those that match a subject."""

    def __init__(self, max_tokens: int) -> None:
        self._max = max_tokens
        self._ids: dict[str, int] = {}
        self._values: list[T | None] = []
        self._free: list[int] = []
        #: By position: token -> the patterns with that literal there.
        self._literal: list[dict[str, int]] = [{} for _ in range(max_tokens)]
        #: By position: the patterns that take any token there (``*`` there, or ``>`` at or before it).
        self._any: list[int] = [0] * max_tokens
        #: By token count: the patterns of exactly that many tokens, without ``>``.
        self._exact: list[int] = [0] * (max_tokens + 1)
        #: By token count n: the patterns ending in ``>`` after n - 1 tokens (they need n or more).
        self._rest: list[int] = [0] * (max_tokens + 1)
        #: By token count n: those of ``_rest`` that a subject of n tokens can match (up to n), kept
        #: as they change so that a match starts from one lookup rather than n unions.
        self._rest_upto: list[int] = [0] * (max_tokens + 1)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, pattern: str, value: T) -> None:
        """Give ``pattern`` a bit, holding ``value`` (a pattern added again keeps its first value)."""
        if pattern in self._ids:
            return
        index = self._free.pop() if self._free else len(self._values)
        if index == len(self._values):
            self._values.append(value)
        else:
            self._values[index] = value
        self._ids[pattern] = index
        self._flip(pattern, 1 << index, set_bit=True)

    def remove(self, pattern: str) -> None:
        """Take ``pattern``'s bit back (nothing when it has none)."""
        index = self._ids.pop(pattern, None)
        if index is None:
            return
        self._flip(pattern, 1 << index, set_bit=False)
        self._values[index] = None
        self._free.append(index)

    def _flip(self, pattern: str, bit: int, *, set_bit: bool) -> None:
        def mark(row: list[int], at: int) -> None:
            row[at] = row[at] | bit if set_bit else row[at] & ~bit

        tokens = pattern.split(".")
        rest = tokens[-1] == _REST
        if rest:
            tokens.pop()
            mark(self._rest, len(tokens) + 1)
            upto = 0
            for count, patterns in enumerate(self._rest):
                upto |= patterns
                self._rest_upto[count] = upto
            for position in range(len(tokens), self._max):
                mark(self._any, position)
        else:
            mark(self._exact, len(tokens))
        for position, token in enumerate(tokens):
            if token == _SINGLE:
                mark(self._any, position)
                continue
            literals = self._literal[position]
            bits = literals.get(token, 0)
            bits = bits | bit if set_bit else bits & ~bit
            if bits:
                literals[token] = bits
            else:
                literals.pop(token, None)

    def match(self, tokens: list[str]) -> list[T]:
        """The values of every pattern matching the subject of ``tokens`` (valid, wildcard-free)."""
        count = len(tokens)
        if count > self._max:
            return []
        candidates = self._exact[count] | self._rest_upto[count]
        literal, anything = self._literal, self._any
        for position in range(count):
            if not candidates:
                return []
            candidates &= anything[position] | literal[position].get(tokens[position], 0)
        found: list[T] = []
        values = self._values
        while candidates:
            low = candidates & -candidates
            found.append(values[low.bit_length() - 1])  # type: ignore[arg-type]
            candidates ^= low
        return found
