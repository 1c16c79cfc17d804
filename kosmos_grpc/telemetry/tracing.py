"""OpenTelemetry tracing for the mesh: one trace across every hop and every event.

The mesh traces through the OpenTelemetry API only, so an application that sets up its own SDK
gets the mesh's spans in its traces. The processes the ``kosmos`` command starts call
:func:`configure_tracing`, which follows the standard ``OTEL_*`` variables: spans go out over
OTLP/gRPC when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set. Without an
exporter nothing is recorded, but every call still gets a real trace id and passes its W3C
context on, so a process that does export downstream still sees one trace.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from kosmos_grpc.errors import KosmosError

__all__ = [
    "TRACER",
    "SpanKind",
    "configure_tracing",
    "end_span",
    "extract",
    "finish_span",
    "headers_with_context",
    "metadata_with_context",
    "publish_headers",
    "start_consumer_span",
    "start_server_span",
    "trace_id_hex",
]

log = logging.getLogger(__name__)

#: The mesh's tracer; a proxy until a tracer provider is set, so it may be taken at import.
TRACER = trace.get_tracer("kosmos_grpc")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing(service_name: str) -> TracerProvider | None:
    """Set this process's tracer provider as the ``OTEL_*`` variables say; it, or None when disabled.

    ``service.name`` is ``service_name`` unless ``OTEL_SERVICE_NAME`` says otherwise. Shut the
    provider down on the way out, so the last spans are sent.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    exporting = any(os.environ.get(name) for name in _ENDPOINTS) and _exporter_name() in {"otlp", ""}
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    # Not exporting: record nothing of our own, but still make trace ids and follow a caller's decision.
    provider = TracerProvider(
        resource=Resource.create(attributes), sampler=None if exporting else ParentBased(ALWAYS_OFF)
    )
    if exporting:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def _exporter_name() -> str:
    return os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()


def trace_id_hex(span: Span) -> str:
    """The span's trace id as 32 hex digits (the envelope's ``trace_id``), or "" when it has none."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def metadata_with_context(span: Span) -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying ``span``'s context (W3C ``traceparent``), or None when there is none to carry."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def headers_with_context(span: Span, headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Event headers: ``headers`` plus ``span``'s context, which a subscriber's span continues."""
    if not span.get_span_context().is_valid:
        return dict(headers) if headers else None
    carrier = dict(headers) if headers else {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def extract(pairs: Iterable[tuple[str, Any]] | Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a caller passed in gRPC metadata or event headers, or None when it passed none."""
    if not pairs:
        return None
    carrier = dict(pairs) if not isinstance(pairs, dict) else pairs
    if "traceparent" not in carrier:
        return None
    return propagate.extract(carrier)


def end_span(span: Span, code: str, error: KosmosError | BaseException | None = None) -> None:
    """End ``span`` with the outcome of its call: ``agent.response.status``, and the error if any."""
    if span.is_recording():
        span.set_attribute("agent.response.status", code)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def start_server_span(
    name: str,
    carrier: Iterable[tuple[str, Any]] | Mapping[str, str] | None,
    attributes: dict[str, Any],
    kind: SpanKind = SpanKind.SERVER,
) -> tuple[Span, object]:
    """A span continuing the trace ``carrier`` (gRPC metadata, event headers) names, made current.

    End it with :func:`finish_span`.
    """
    parent = extract(carrier)
    span = TRACER.start_span(name, context=parent, kind=kind, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def publish_headers(subject: str, headers: Mapping[str, str] | None, system: str) -> dict[str, str] | None:
    """Event headers carrying a new PRODUCER span's context: the publish of an event on ``subject``.

    The span covers handing the event over and ends at once; a subscriber's span continues it.
    """
    span = TRACER.start_span(
        f"publish {subject}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": system, "messaging.destination.name": subject},
    )
    try:
        return headers_with_context(span, headers)
    finally:
        span.end()


def start_consumer_span(subject: str, headers: Mapping[str, str], system: str) -> tuple[Span, object]:
    """The CONSUMER span of a handler taking an event, child of its publish; end it with :func:`finish_span`."""
    return start_server_span(
        f"process {subject}",
        headers,
        {"messaging.system": system, "messaging.destination.name": subject},
        SpanKind.CONSUMER,
    )


def finish_span(traced: tuple[Span, object], code: str, error: BaseException | None = None) -> None:
    """End a span made current by :func:`start_server_span`, with its call's outcome."""
    span, token = traced
    otel_context.detach(token)  # type: ignore[arg-type]
    end_span(span, code, error)
