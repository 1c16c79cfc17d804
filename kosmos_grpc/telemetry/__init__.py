"""Observability: OpenTelemetry traces, Prometheus metrics and structured logs.

Each name is imported on first use (PEP 562): a process that only logs (``kosmos call``) loads
neither prometheus_client nor the tracing helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kosmos_grpc._lazy import lazy_names

if TYPE_CHECKING:
    from kosmos_grpc.telemetry.logs import JsonFormatter, TextFormatter, configure_logging, current_call
    from kosmos_grpc.telemetry.metrics import DelegationMetrics
    from kosmos_grpc.telemetry.tracing import configure_tracing

__all__ = [
    "DelegationMetrics",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "configure_tracing",
    "current_call",
]

_EXPORTS: dict[str, str] = {
    "DelegationMetrics": "kosmos_grpc.telemetry.metrics",
    "JsonFormatter": "kosmos_grpc.telemetry.logs",
    "TextFormatter": "kosmos_grpc.telemetry.logs",
    "configure_logging": "kosmos_grpc.telemetry.logs",
    "configure_tracing": "kosmos_grpc.telemetry.tracing",
    "current_call": "kosmos_grpc.telemetry.logs",
}


# Hidden from type checkers, which read the names above: a misspelt name stays an error for them.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(__name__, _EXPORTS, __all__)
