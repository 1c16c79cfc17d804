"""A loaded ``kosmos.toml`` checked against its description (config_schema): one line naming the key at fault."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, cast

from kosmos_grpc.config_schema import CONFIG, Key, Table
from kosmos_grpc.errors import ConfigError

__all__ = ["check", "suggest"]

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
}
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "a table"}


def _kind(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def suggest(key: str, known: list[str]) -> str:
    """``; did you mean 'x'?`` for the nearest known key, or the list of known keys."""
    nearest = difflib.get_close_matches(key, known, n=1)
    if nearest:
        return f"; did you mean {nearest[0]!r}?"
    return f" (known: {', '.join(known)})" if known else " (it takes none)"


def _header(where: str) -> str:
    return f"[{where}]" if where else "the top level"


def _bound(key: Key) -> str | None:
    noun = f"{key.noun} " if key.noun else ""
    if key.minimum is not None and key.maximum is not None:
        return f"{noun}from {key.minimum:g} to {key.maximum:g}"
    if key.minimum is not None:
        return f"at least {key.minimum:g}"
    if key.above is not None:
        return f"above {key.above:g}"
    return None


def _allowed(key: Key, value: Any) -> str | None:
    """Why a scalar of the right type is refused (its enum, pattern or bounds), or None."""
    if key.enum is not None and value not in key.enum:
        if key.noun:
            return f"{value!r} is not {key.noun}"
        return f"must be {', '.join(repr(v) for v in key.enum[:-1])} or {key.enum[-1]!r}, not {value!r}"
    if key.pattern is not None and isinstance(value, str) and not re.search(key.pattern, value):
        return f"must be {key.noun or f'a string matching {key.pattern}'}, not {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = key.minimum if key.minimum is not None else -math.inf
        high = key.maximum if key.maximum is not None else math.inf
        out = not math.isfinite(value) or value < low or value > high
        if out or (key.above is not None and value <= key.above):
            return f"must be {_bound(key) or 'a finite number'}, not {value}"
    return None


def _value(key: Key, value: Any, name: str) -> None:
    kinds = _TYPES[key.type]
    if isinstance(value, dict):
        raise ConfigError(f"{name} is a table; it should be {_NAMES[kinds[-1]]}")
    if not isinstance(value, kinds) or (isinstance(value, bool) and key.type != "boolean"):
        raise ConfigError(f"{name} has the wrong type ({_kind(value)}); it should be {_NAMES[kinds[-1]]}")
    if key.items is None:
        why = _allowed(key, value)
        if why is not None:
            raise ConfigError(f"{name} {why}")
        return
    item_kinds = _TYPES[key.items]
    for item in cast("list[Any]", value):
        wrong = not isinstance(item, item_kinds) or (isinstance(item, bool) and key.items != "boolean")
        if wrong or _allowed(key, item) is not None:
            raise ConfigError(f"{name} holds {key.noun or _NAMES[item_kinds[-1]] + 's'}, not {item!r}")


def check(data: dict[str, Any], table: Table = CONFIG, where: str = "") -> None:
    """Raise ConfigError, one line naming the key and its table, at the first thing ``table`` does not describe."""
    if table.open:
        return
    known = [*table.keys, *table.tables]
    for name, value in data.items():
        dotted = f"{where}.{name}" if where else name
        if table.each is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is {_kind(value)}; it should be a table ([{dotted}])")
            check(value, table.each, dotted)
        elif name in table.keys:
            _value(table.keys[name], value, dotted)
        elif name in table.tables:
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is {_kind(value)}; it should be a table ([{dotted}])")
            check(value, table.tables[name], dotted)
        else:
            hint = f"; an agent's own settings go in [{where}.settings]" if "settings" in table.tables else ""
            raise ConfigError(f"unknown key {name!r} in {_header(where)}{suggest(name, known)}{hint}")
    for name, key in table.keys.items():
        if key.required and name not in data:
            raise ConfigError(f"{where} needs {name!r}")
    if len(data) < table.min_tables:
        raise ConfigError(f"no [{where}.<name>] tables")
