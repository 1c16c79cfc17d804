"""Observability: OpenTelemetry traces, Prometheus metrics and structured logs."""

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
