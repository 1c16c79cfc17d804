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
from random import getrandbits
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

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
    "publish_headers",
    "spans_exported",
    "start_client_span",
    "start_consumer_span",
    "start_server_span",
    "trace_id_hex",
]

log = logging.getLogger(__name__)

#: The mesh's tracer; a proxy until a tracer provider is set, so it may be taken at import.
TRACER = trace.get_tracer("kosmos_grpc")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_W3C = "tracecontext,baggage"
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _Shortcuts:
    """What this process may do without the SDK's general machinery, as :func:`configure_tracing` found.

    ``w3c``: only W3C trace context travels (the default propagators), so it is read and written
    here. ``children``: the sampler follows the parent, so a child of an unsampled span is not
    recorded, and is made here. ``roots``: a new trace is never recorded either.
    """

    w3c = children = roots = False


_SHORTCUTS = _Shortcuts()


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

    exporting = spans_exported()
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
    ours = trace.get_tracer_provider() is provider  # else another provider was set first
    sampler = provider.sampler.get_description()
    _SHORTCUTS.w3c = ours and os.environ.get("OTEL_PROPAGATORS", _W3C).replace(" ", "") == _W3C
    _SHORTCUTS.children = (
        _SHORTCUTS.w3c
        and sampler.startswith("ParentBased{")
        and "remoteParentNotSampled:AlwaysOffSampler" in sampler
        and "localParentNotSampled:AlwaysOffSampler" in sampler
    )
    _SHORTCUTS.roots = _SHORTCUTS.children and sampler.startswith("ParentBased{root:AlwaysOffSampler")
    return provider


def spans_exported() -> bool:
    """Whether the ``OTEL_*`` variables ask for spans to be exported (over OTLP)."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return any(os.environ.get(name) for name in _ENDPOINTS) and exporter in {"otlp", ""}


def trace_id_hex(span: Span) -> str:
    """The span's trace id as 32 hex digits (the envelope's ``trace_id``), or "" when it has none."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def start_client_span(
    name: str, attributes: dict[str, Any], kind: SpanKind = SpanKind.CLIENT
) -> tuple[Span, tuple[tuple[str, str], ...] | None]:
    """A span of a call out, child of the current one, and the gRPC metadata that passes its context on."""
    shortcuts = _SHORTCUTS
    if not shortcuts.w3c:
        span = TRACER.start_span(name, kind=kind, attributes=attributes)
        if not span.get_span_context().is_valid:
            return span, None  # no tracing set up in this process
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, tuple(carrier.items())
    current = otel_context.get_current()
    if baggage.get_all(current):
        span = TRACER.start_span(name, kind=kind, attributes=attributes)
        carrier = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, current))
        return span, tuple(carrier.items())
    parent = trace.get_current_span(current).get_span_context()
    if parent.is_valid:
        if shortcuts.children and not parent.trace_flags.sampled:
            span = _unrecorded(parent.trace_id, parent.trace_flags, parent.trace_state)
        else:
            span = TRACER.start_span(name, kind=kind, attributes=attributes)
    elif shortcuts.roots:
        span = _unrecorded(_random_id(128), _UNSAMPLED, None)
    else:
        span = TRACER.start_span(name, kind=kind, attributes=attributes)
    return span, _w3c(span.get_span_context())


def start_server_span(
    name: str,
    carrier: Iterable[tuple[str, Any]] | dict[str, str] | None,
    attributes: Callable[[], dict[str, Any]],
    kind: SpanKind = SpanKind.SERVER,
) -> tuple[Span, object]:
    """A span continuing the trace ``carrier`` (gRPC metadata, event headers) names, made current.

    End it with :func:`finish_span`. ``attributes`` is only called for a span that is recorded.
    """
    pairs = carrier.items() if isinstance(carrier, dict) else carrier or ()
    shortcuts = _SHORTCUTS
    found = _parse_w3c(pairs) if shortcuts.w3c else "baggage"
    if isinstance(found, str):  # "baggage"
        parent = extract(pairs)
    elif found is None:  # a new trace
        if shortcuts.roots:
            span = _unrecorded(_random_id(128), _UNSAMPLED, None)
            return span, otel_context.attach(trace.set_span_in_context(span))
        parent = None
    else:
        if shortcuts.children and not found.flags.sampled:
            span = _unrecorded(found.trace_id, found.flags, found.state)
            return span, otel_context.attach(trace.set_span_in_context(span))
        remote = SpanContext(found.trace_id, found.span_id, True, found.flags, found.state)
        parent = trace.set_span_in_context(NonRecordingSpan(remote))
    span = TRACER.start_span(name, context=parent, kind=kind, attributes=attributes())
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def finish_span(traced: tuple[Span, object], code: str, error: BaseException | None = None) -> None:
    """End a span made current by :func:`start_server_span`, with its call's outcome."""
    span, token = traced
    otel_context.detach(token)  # type: ignore[arg-type]
    end_span(span, code, error)


def end_span(span: Span, code: str, error: KosmosError | BaseException | None = None) -> None:
    """End ``span`` with the outcome of its call: ``agent.response.status``, and the error if any."""
    if span.is_recording():
        span.set_attribute("agent.response.status", code)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def publish_headers(subject: str, headers: Mapping[str, str] | None, system: str) -> dict[str, str] | None:
    """Event headers carrying a new PRODUCER span's context: the publish of an event on ``subject``.

    The span covers handing the event over and ends at once; a subscriber's span continues it.
    """
    span, metadata = start_client_span(
        f"publish {subject}", {"messaging.system": system, "messaging.destination.name": subject}, SpanKind.PRODUCER
    )
    span.end()
    if not metadata:
        return dict(headers) if headers else None
    return {**headers, **dict(metadata)} if headers else dict(metadata)


def start_consumer_span(subject: str, headers: dict[str, str], system: str) -> tuple[Span, object]:
    """The CONSUMER span of a handler taking an event, child of its publish; end it with :func:`finish_span`."""
    return start_server_span(
        f"process {subject}",
        headers,
        lambda: {"messaging.system": system, "messaging.destination.name": subject},
        SpanKind.CONSUMER,
    )


def extract(pairs: Iterable[tuple[str, Any]] | Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a caller passed in gRPC metadata or event headers, or None when it passed none."""
    if not pairs:
        return None
    carrier = pairs if isinstance(pairs, dict) else dict(pairs)
    if "traceparent" not in carrier:
        return None
    return propagate.extract(carrier)


def _unrecorded(trace_id: int, flags: TraceFlags, state: TraceState | None) -> Span:
    """A span no one records, in trace ``trace_id``: made without the SDK.

    The sampler's answer is known (nothing of ours is recorded, and the parent is not sampled),
    so only a span id is made, as the SDK makes it; this is most of a span's cost saved.
    """
    return NonRecordingSpan(SpanContext(trace_id, _random_id(64), False, flags, state))


def _random_id(bits: int) -> int:
    value = getrandbits(bits)
    while not value:  # zero is the invalid id
        value = getrandbits(bits)
    return value


def _w3c(context: SpanContext) -> tuple[tuple[str, str], ...]:
    """W3C trace context for ``context``: ``traceparent``, and ``tracestate`` when it has one."""
    parent = ("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")
    state = context.trace_state
    return (parent, ("tracestate", state.to_header())) if state else (parent,)


class _Remote(NamedTuple):
    """The caller's span, as its W3C ``traceparent`` and ``tracestate`` name it."""

    trace_id: int
    span_id: int
    flags: TraceFlags
    state: TraceState | None


def _parse_w3c(pairs: Iterable[tuple[str, Any]]) -> _Remote | Literal["baggage"] | None:
    """The caller's span from a W3C ``traceparent``; None when there is none (or it is malformed:
    a new trace then), "baggage" when baggage comes too (the propagators then read it all)."""
    header = state = None
    for key, value in pairs:
        if key == "traceparent":
            header = value
        elif key == "tracestate":
            state = value
        elif key == "baggage":
            return "baggage"
    if not isinstance(header, str) or len(header) != 55 or header.count("-") != 3:
        return None
    version, trace_hex, span_hex, flags_hex = header.split("-")
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if version != "00" or not trace_id or not span_id:
        return None
    trace_state = TraceState.from_header([state]) if isinstance(state, str) and state else None
    return _Remote(trace_id, span_id, TraceFlags(flags & 1), trace_state)
