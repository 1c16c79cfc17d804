"""SQLite built-ins that one call could keep busy past any deadline, guarded: a call too costly is refused.

SQLite's progress handler runs between virtual-machine steps, never inside a function, so one
call of a quadratic built-in runs to its end however long it takes: ``instr`` of a 2 MB needle in
a 4 MB haystack 97 s, ``trim`` of a long character set about an hour, ``printf('%.*c', 2e9, 'x')``
9 s (it appends each character alone), ``json_patch`` of two objects of 200,000 keys 137 s
(it looks each key up one by one). On Demeter's connections each is overridden by a wrapper
that estimates the call's work from its arguments, refuses it past a budget, and has SQLite's own
function compute the rest on a private in-memory connection, so that every result is SQLite's to
the byte. LIKE and GLOB, quadratic too, are bounded by SQLite's limit on a pattern's length (see
:data:`LIKE_PATTERN_BYTES`).

The costs: a function defined in Python is not "innocuous", so with ``trusted_schema`` off a view
or trigger of a custom data file that calls one of these is refused ("unsafe use of replace()");
and its result cannot carry SQLite's JSON subtype, so ``json_patch()`` inside ``json_object()`` or
``json_array()`` is a string there unless wrapped in ``json()``.
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["LIKE_PATTERN_BYTES", "Guards"]

#: The longest LIKE or GLOB pattern (SQLITE_LIMIT_LIKE_PATTERN_LENGTH): what SQLite's "Defense Against
#: the Dark Arts" advises. Matching costs up to the pattern's length times the text's: 50 bytes
#: against a 4 MiB value is about 0.3 s at worst (GLOB character classes), 50,000 (the default) minutes.
LIKE_PATTERN_BYTES = 50
#: Byte comparisons one instr() or replace() may make (its haystack's length times its needle's):
#: about 0.1 s at worst (SQLite compares by memcmp, some 5e10 bytes a second).
SEARCH_BUDGET = 10_000_000_000
#: Character comparisons one trim(), ltrim() or rtrim() of a character set may make (the text's
#: length times the set's): about 0.25 s (2.4 ns each, one at a time).
TRIM_BUDGET = 100_000_000
#: Bytes of one json_patch()'s target times its patch's: about 0.25 s at worst (an object's keys
#: are each looked up by a scan of the other's: 277 kB by 277 kB took 1.8 s).
PATCH_BUDGET = 10_000_000_000
_NUMBER = 24  # about what a number takes as text
# A conversion of printf/format: its flags, widths and precisions, then its type. SQLite reads
# '*' from the arguments in order, and stops at the first type it does not know.
_CONVERSION = re.compile(r"%([-+ #!0,.*0-9l]*)(.?)", re.DOTALL)
_DIGITS = re.compile(r"\d+")
_LEADING_INTEGER = re.compile(rb"\s*[-+]?\d+")
_TAKES_NO_ARGUMENT = frozenset("%n")
_KNOWN_TYPES = frozenset("dsgzqQwcouxXfeEGinp%r")
_INT32 = 2**31


def _size(value: Any) -> int:
    """About how many bytes ``value`` takes as SQLite text or blob."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    return _NUMBER


def _characters(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes) else _NUMBER


def _as_int(value: Any) -> int:
    """The magnitude SQLite's printf reads for a '*' argument (int64 then int32: capped at 2**31)."""
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if math.isfinite(value) else _INT32
    elif isinstance(value, str | bytes):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        found = _LEADING_INTEGER.match(data[:64])
        number = int(found.group()) if found else 0
    else:
        number = 0
    return min(abs(number), _INT32)


def printf_units(args: Sequence[Any]) -> int:
    """How many characters the widths and precisions of ``printf(args)`` ask for, in all."""
    if not args or args[0] is None:
        return 0
    template = args[0]
    text = template.decode("latin-1") if isinstance(template, bytes) else str(template)
    taken, units = 1, 0
    for conversion in _CONVERSION.finditer(text):
        spec, kind = conversion.group(1), conversion.group(2)
        units += sum(min(int(digits), _INT32) for digits in _DIGITS.findall(spec))
        for _ in range(spec.count("*")):
            units += _as_int(args[taken]) if taken < len(args) else 0
            taken += 1
        if kind not in _KNOWN_TYPES:
            break  # SQLite ends the string there
        if kind not in _TAKES_NO_ARGUMENT:
            taken += 1
    return units


def _search_units(args: Sequence[Any]) -> int:
    return _size(args[0]) * _size(args[1])


def _trim_units(args: Sequence[Any]) -> int:
    return _size(args[0]) * _characters(args[1])


class _Refused(Exception):
    """Raised inside a guarded call: SQLite then fails the statement, and the guard says why."""


class Guards:
    """The guarded built-ins of one connection (used on its thread alone) and why its last call failed."""

    def __init__(self, value_bytes: int) -> None:
        self.value_bytes = value_bytes
        self._private = sqlite3.connect(":memory:", check_same_thread=False)
        self._private.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_bytes)
        #: Why a guarded call of the current query was refused (said to the caller), if one was.
        self.refused: str | None = None
        #: What SQLite's own function raised for a guarded call of the current query, if it raised.
        self.failed: BaseException | None = None

    def install(self, conn: sqlite3.Connection) -> None:
        """Override the costly built-ins on ``conn`` (the LIKE and GLOB limit is set there too)."""
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, LIKE_PATTERN_BYTES)
        search = (_search_units, SEARCH_BUDGET, "byte comparisons")
        trim = (_trim_units, TRIM_BUDGET, "character comparisons")
        patch = (_search_units, PATCH_BUDGET, "bytes squared of its target and patch")
        printf = (printf_units, self.value_bytes, "characters of widths and precisions")
        for name, arity, (cost, budget, unit) in (
            ("instr", 2, search),
            ("replace", 3, search),
            ("trim", 2, trim),
            ("ltrim", 2, trim),
            ("rtrim", 2, trim),
            ("printf", -1, printf),
            ("format", -1, printf),
            ("json_patch", 2, patch),
        ):
            conn.create_function(name, arity, self._guarded(name, cost, budget, unit), deterministic=True)

    def reset(self) -> None:
        """Forget the last query's refusal (a new query starts)."""
        self.refused = self.failed = None

    def close(self) -> None:
        self._private.close()

    def _guarded(self, name: str, cost: Callable[[Sequence[Any]], int], budget: int, unit: str) -> Callable[..., Any]:
        statements: dict[int, str] = {}

        def guarded(*args: Any) -> Any:
            work = cost(args)
            if work > budget:
                self.refused = (
                    f"payload.sql: one call of {name}() would take {work:,} {unit}, more than one call may"
                    f" ({budget:,}): SQLite cannot stop a function half-way, so it is not run"
                )
                raise _Refused(name)
            sql = statements.get(len(args))
            if sql is None:
                sql = statements.setdefault(len(args), f"SELECT {name}({', '.join('?' * len(args))})")
            try:
                return self._private.execute(sql, args).fetchone()[0]
            except (sqlite3.Error, MemoryError) as exc:  # too big, say: the statement fails as SQLite's would
                self.failed = exc
                raise _Refused(name) from None

        return guarded
