"""OpenTelemetry tracing for the mesh: one trace across every hop and every event.

The mesh traces through the OpenTelemetry API only, so an application that sets up its own SDK
gets the mesh's spans in its traces. The processes the ``kosmos`` command starts call
:func:`configure_tracing`, which follows the standard ``OTEL_*`` variables: spans go out over
OTLP/gRPC when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set. Without an
exporter nothing is recorded, but every call still gets a real trace id and passes its W3C
context on, so a process that does export downstream still sees one trace.
"""

from __future__ import annotations

import os
import re
from random import getrandbits
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from kosmos_grpc.errors import KosmosError

    # What a span is, asked only of a span that is recorded: its name and attributes.
    Describe = Callable[[], tuple[str, dict[str, Any]]]

__all__ = [
    "TRACER",
    "SpanKind",
    "configure_tracing",
    "end_span",
    "extract",
    "finish_span",
    "parse_traceparent",
    "publish_headers",
    "spans_exported",
    "start_client_span",
    "start_consumer_span",
    "start_server_span",
    "trace_id_hex",
    "tracing_on",
]

#: The mesh's tracer; a proxy until a tracer provider is set, so it may be taken at import.
TRACER = trace.get_tracer("kosmos_grpc")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_W3C = "tracecontext,baggage"
_EMPTY = otel_context.Context()  # a new trace's parent: nothing, whatever is current
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _Shortcuts:
    """What this process may do without the SDK's general machinery, as :func:`configure_tracing` found.

    ``w3c``: only W3C trace context travels (the default propagators), so it is read and written
    here. ``children``: the sampler follows the parent, so a child of an unsampled span is not
    recorded, and is made here. ``roots``: a new trace is never recorded either.
    ``nothing_recorded``: nothing is exported, so even a sampled parent's child is made here
    (keeping the parent's flags for the processes further on). ``sdk``: a tracer provider is set.
    """

    w3c = children = roots = nothing_recorded = sdk = False
    unasked = 0  # calls left before tracing_on asks again whether there is an SDK


_SHORTCUTS = _Shortcuts()
# Calls that go on without spans after a provider is set (a provider is set once, at start-up).
_ASK_EVERY = 256


def configure_tracing(service_name: str, *, export_timeout: float | None = None) -> TracerProvider | None:
    """Set this process's tracer provider as the ``OTEL_*`` variables say; it, or None when disabled.

    ``service.name`` is ``service_name`` unless ``OTEL_SERVICE_NAME`` says otherwise. Shut the
    provider down on the way out, so the last spans are sent. ``export_timeout`` bounds each
    export in seconds (default: the exporting module's), unless an ``OTEL_*`` variable sets it.
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
    if exporting:  # an endpoint that cannot be reached slows nothing, and is said once
        from kosmos_grpc.telemetry.exporting import EXPORT_TIMEOUT, otlp_span_processor

        provider.add_span_processor(
            otlp_span_processor(EXPORT_TIMEOUT if export_timeout is None else export_timeout, service_name)
        )
    trace.set_tracer_provider(provider)
    _SHORTCUTS.sdk = True
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
    _SHORTCUTS.nothing_recorded = _SHORTCUTS.roots and not exporting
    return provider


def spans_exported() -> bool:
    """Whether the ``OTEL_*`` variables ask for spans to be exported (over OTLP)."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return any(os.environ.get(name) for name in _ENDPOINTS) and exporter in {"otlp", ""}


def trace_id_hex(span: Span) -> str:
    """The span's trace id as 32 hex digits (the envelope's ``trace_id``), or "" when it has none."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def tracing_on() -> bool:
    """Whether this process has a tracer provider (an SDK). Without one no span is made, and the
    context a caller passed on is passed on unchanged, as the API's no-op tracer would."""
    shortcuts = _SHORTCUTS
    if shortcuts.sdk:
        return True
    # A provider, once set, is set for good: after the first yes, nothing is asked again. Until
    # then asking costs more than the rest of a call's tracing, so a no holds for a while.
    shortcuts.unasked -= 1
    if shortcuts.unasked > 0:
        return False
    shortcuts.unasked = _ASK_EVERY
    shortcuts.sdk = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return shortcuts.sdk


def start_client_span(
    describe: Describe, kind: SpanKind = SpanKind.CLIENT
) -> tuple[Span, tuple[tuple[str, str], ...] | None]:
    """A span of a call out, child of the current one, and the gRPC metadata that passes its context on."""
    shortcuts = _SHORTCUTS
    current = otel_context.get_current()
    if not tracing_on():
        context = trace.get_current_span(current).get_span_context()
        if not context.is_valid:
            return INVALID_SPAN, None
        return NonRecordingSpan(context), _w3c(context)  # the caller's span, not ours to end
    if not shortcuts.w3c or baggage.get_all(current):
        span = _sdk_span(describe, kind, None)
        if not span.get_span_context().is_valid:
            return span, None
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, current))
        return span, tuple(carrier.items())
    parent = trace.get_current_span(current).get_span_context()
    if parent.is_valid:
        if shortcuts.children and (shortcuts.nothing_recorded or not parent.trace_flags.sampled):
            span = _unrecorded(parent.trace_id, parent.trace_flags, parent.trace_state)
        else:
            span = _sdk_span(describe, kind, None)
    elif shortcuts.roots:
        span = _unrecorded(_random_id(128), _UNSAMPLED, None)
    else:
        span = _sdk_span(describe, kind, None)
    return span, _w3c(span.get_span_context())


def start_server_span(
    describe: Describe,
    carrier: Iterable[tuple[str, Any]] | dict[str, str] | None,
    kind: SpanKind = SpanKind.SERVER,
    trace_id: str = "",
    *,
    intercepted: bool = False,
) -> tuple[Span, object] | None:
    """A span continuing the trace ``carrier`` (gRPC metadata, event headers) names, made current.

    Without trace context in ``carrier``, a caller's ``trace_id`` (the envelope's, 32 hex
    digits) is continued, else a new trace begins; never the context that happens to be current,
    except with ``intercepted`` (the server has ``grpc.aio`` interceptors): when the current span
    is a child of the very span ``carrier`` names, or begins a trace for a caller that named none
    (a tracing interceptor's SERVER span for this call), the new span is its child. End it with
    :func:`finish_span`. None when this process does not trace and the caller passed no context on.
    """
    pairs = carrier.items() if isinstance(carrier, dict) else carrier or ()
    shortcuts = _SHORTCUTS
    if not tracing_on():
        passed = parse_traceparent(pairs)
        if not isinstance(passed, _Remote):
            return None
        relayed: Span = NonRecordingSpan(SpanContext(passed.trace_id, passed.span_id, True, passed.flags, passed.state))
        return relayed, otel_context.attach(trace.set_span_in_context(relayed, _EMPTY))
    found = parse_traceparent(pairs) if shortcuts.w3c else "baggage"
    if isinstance(found, str):  # "baggage": the propagators read it all
        parent = extract(pairs) or _EMPTY
        if intercepted:
            caller = trace.get_current_span(parent).get_span_context()
            parent = _inner(caller.trace_id, caller.span_id) or parent
    elif found is None:  # no trace context: the envelope's trace, or a new one
        remote = _remote_from_trace_id(trace_id)
        inner = _inner(0, 0) if intercepted and remote is None else None
        if inner is not None:
            parent = inner
        elif remote is None and shortcuts.roots:
            span = _unrecorded(_random_id(128), _UNSAMPLED, None)
            return span, otel_context.attach(trace.set_span_in_context(span, _EMPTY))
        else:
            parent = _EMPTY if remote is None else trace.set_span_in_context(NonRecordingSpan(remote), _EMPTY)
    else:
        if shortcuts.children and (shortcuts.nothing_recorded or not found.flags.sampled):
            span = _unrecorded(found.trace_id, found.flags, found.state)
            return span, otel_context.attach(trace.set_span_in_context(span, _EMPTY))
        inner = _inner(found.trace_id, found.span_id) if intercepted else None
        if inner is None:
            remote = SpanContext(found.trace_id, found.span_id, True, found.flags, found.state)
            inner = trace.set_span_in_context(NonRecordingSpan(remote), _EMPTY)
        parent = inner
    span = _sdk_span(describe, kind, parent)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def _inner(trace_id: int, span_id: int) -> otel_context.Context | None:
    """The current context when its span is a recorded child of the caller's span ``span_id`` (or,
    for ``span_id`` 0, a caller that passed no context on, a recorded SERVER span beginning a trace).

    That span is an interceptor's, made for this very call (as opentelemetry-instrumentation-grpc
    makes its SERVER span): the call's own span goes inside it. A span that was merely current
    when the call began (the server started inside a span, say) has another parent, or another kind.
    """
    current = otel_context.get_current()
    span = trace.get_current_span(current)
    parent = getattr(span, "parent", _NOT_SDK)  # an SDK span's parent: its SpanContext, or None
    if parent is None:
        return current if span_id == 0 and getattr(span, "kind", None) is SpanKind.SERVER else None
    if isinstance(parent, SpanContext) and parent.span_id == span_id and parent.trace_id == trace_id:
        return current
    return None


_NOT_SDK = object()


def _sdk_span(describe: Describe, kind: SpanKind, parent: otel_context.Context | None) -> Span:
    """A span the SDK makes (and samples), child of ``parent`` (None: of the current span)."""
    name, attributes = describe()
    return TRACER.start_span(name, context=parent, kind=kind, attributes=attributes)


def _remote_from_trace_id(trace_id: str) -> SpanContext | None:
    """A caller known only by the envelope's trace_id: that trace, its span unknown (an id of ours)."""
    if len(trace_id) != 32:
        return None
    try:
        value = int(trace_id, 16)
    except ValueError:
        return None
    return SpanContext(value, _random_id(64), True, _UNSAMPLED) if value else None


def finish_span(
    traced: tuple[Span, object] | None, code: str, error: BaseException | None = None, *, detach: bool = True
) -> None:
    """End a span made current by :func:`start_server_span` (if it made one), with its call's outcome.

    ``detach=False`` leaves the context as it is: for a generator closed from another task,
    where the context it was made current in is no longer the current one.
    """
    if traced is None:
        return
    span, token = traced
    if detach:
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


def publish_headers(subject: str, headers: Mapping[str, str] | None, system: str) -> tuple[dict[str, str] | None, str]:
    """Event headers carrying a new PRODUCER span's context (the publish of an event on ``subject``),
    and its trace id for the envelope.

    The span covers handing the event over and ends at once; a subscriber's span continues it.
    """
    span, metadata = start_client_span(
        lambda: (f"publish {subject}", {"messaging.system": system, "messaging.destination.name": subject}),
        SpanKind.PRODUCER,
    )
    span.end()
    if not metadata:
        return (dict(headers) if headers else None), ""
    return ({**headers, **dict(metadata)} if headers else dict(metadata)), trace_id_hex(span)


def start_consumer_span(subject: str, headers: dict[str, str], system: str) -> tuple[Span, object] | None:
    """The CONSUMER span of a handler taking an event, child of its publish; end it with :func:`finish_span`."""
    return start_server_span(
        lambda: (f"process {subject}", {"messaging.system": system, "messaging.destination.name": subject}),
        headers,
        SpanKind.CONSUMER,
    )


def extract(pairs: Iterable[tuple[str, Any]] | Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a caller passed in gRPC metadata or event headers, or None when it passed none."""
    if not pairs:
        return None
    carrier = pairs if isinstance(pairs, dict) else dict(pairs)
    if "traceparent" not in carrier and "baggage" not in carrier:
        return None
    return propagate.extract(carrier, context=_EMPTY)


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


# The W3C grammar, as OpenTelemetry's TraceContextTextMapPropagator reads it: lower-case hex,
# blanks around, and (from a later version) fields after the flags.
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")


def parse_traceparent(pairs: Iterable[tuple[str, Any]]) -> _Remote | Literal["baggage"] | None:
    """The caller's span from W3C ``traceparent`` (and ``tracestate``) among ``pairs``.

    None when there is none or it is not valid (a new trace then), "baggage" when baggage
    comes too (the propagators then read it all). Reads as OpenTelemetry's W3C propagator does.
    """
    header = state = None
    for key, value in pairs:
        if key == "traceparent":
            header = value
        elif key == "tracestate":
            state = value
        elif key == "baggage":
            return "baggage"
    if not isinstance(header, str):
        return None
    match = _TRACEPARENT.match(header)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    trace_state = TraceState.from_header([state]) if isinstance(state, str) and state else None
    return _Remote(trace_id, span_id, TraceFlags(int(flags_hex, 16)), trace_state)
