"""PEP 562 lazy names for a package's ``__init__``: each imported from its module on first use.

So ``import kosmos_grpc`` costs nothing and ``kosmos --help`` loads neither grpc nor OpenTelemetry;
type checkers read the names from the package's ``TYPE_CHECKING`` block instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_names"]


def lazy_names(
    package: str, exports: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each name to its module."""

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use and keep the name for the next lookups."""
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
