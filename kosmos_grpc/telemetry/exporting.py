"""Spans out over OTLP/gRPC, where an endpoint that cannot be reached costs nothing and is said once.

OpenTelemetry's OTLP exporter retries an unreachable endpoint for up to 10 s per batch, logging
each try, and a process's exit waits for its last batch: every ``kosmos`` command took 7 s more,
and an agent logged two lines every few seconds for as long as it ran. Here an export is bounded
(``OTEL_EXPORTER_OTLP_TIMEOUT``, else :data:`EXPORT_TIMEOUT`), an endpoint that refuses the
connection is not retried (the batch is dropped at once), and the exporter's own warnings are
replaced by one line per process naming the endpoint; the rest are counted, not logged.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

__all__ = ["EXPORTER_LOGGERS", "EXPORT_TIMEOUT", "ExportTrouble", "otlp_span_processor"]

log = logging.getLogger("kosmos_grpc.telemetry.tracing")

#: Seconds an export may take (retries included) unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT says.
EXPORT_TIMEOUT = 2.0
#: Where the exporter and the batch processor log their trouble.
EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter", "opentelemetry.sdk._shared_internal")
_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
_RETRYABLE = "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES"
# The SDK's retryable codes less UNAVAILABLE, which is what an endpoint that is not there answers.
_RETRIED = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ExportTrouble(logging.Filter):
    """On the exporter's loggers: the first warning or error becomes one line of ours, the rest are counted."""

    def __init__(self, endpoint: str, service: str = "") -> None:
        super().__init__()
        self.endpoint = endpoint
        #: Who says it (the agent, or kosmos-cli), so the lines of a whole mesh tell which process.
        self.service = service
        #: The exporter's warnings and errors seen, the first included.
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Let debug and info lines through; replace the first warning by ours, drop the rest."""
        if record.levelno < logging.WARNING:
            return True
        self.count += 1
        if self.count == 1:
            log.warning(
                "%scannot export spans to %s (%s): spans are being dropped, further exporter errors are not logged;"
                " start the collector, or unset OTEL_EXPORTER_OTLP_ENDPOINT",
                f"{self.service}: " if self.service else "",
                self.endpoint,
                _cause(record.getMessage()),
            )
        return False


def _cause(message: str) -> str:
    """The exporter's complaint in a few words."""
    lowered = message.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "deadline_exceeded" in lowered or "deadline exceeded" in lowered:
        return "no answer"
    for code in grpc.StatusCode:
        if f"StatusCode.{code.name}" in message:
            return code.name
    return message.splitlines()[0][:200] if message else "an export failed"


def _timeout(seconds: float) -> float | None:
    """The export timeout: None when an OTEL_* variable sets it (the exporter reads it), else ``seconds``."""
    return None if any(os.environ.get(name, "").strip() for name in _TIMEOUTS) else seconds


def otlp_span_processor(timeout: float = EXPORT_TIMEOUT, service: str = "") -> SpanProcessor:
    """A batch processor exporting over OTLP/gRPC to the endpoint the OTEL_* variables name, each
    export bounded by ``timeout`` seconds (a short-lived command waits that long at most on its way out).

    Its trouble is reported once through :class:`ExportTrouble`, installed on
    :data:`EXPORTER_LOGGERS` (once per process, whatever the number of calls).
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
    )
    retried = None if os.environ.get(_RETRYABLE, "").strip() else _RETRIED
    exporter = OTLPSpanExporter(timeout=_timeout(timeout), retryable_error_codes=retried)
    for name in EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExportTrouble) for f in logger.filters):
            logger.addFilter(ExportTrouble(endpoint.strip(), service))
    return BatchSpanProcessor(exporter)
