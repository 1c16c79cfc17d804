"""Structured logs: each line of a call says which agent, action, correlation_id and trace it belongs to.

The agent server sets :data:`current_call` for every call it serves, and the formatters read it
when a record is formatted, in the task that logged it: a handler's ``log.info(...)`` needs no
extra arguments to be tied to its call, and nothing runs for calls that log nothing.

:func:`configure_logging` installs one handler on the root logger, with :class:`JsonFormatter`
(one JSON object a line) or :class:`TextFormatter` (the usual human line, with the call appended).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace

if TYPE_CHECKING:
    from typing import TextIO

    from kosmos_grpc.calls import Envelope

__all__ = [
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LoggedCall",
    "TextFormatter",
    "configure_logging",
    "current_call",
]

#: The formats ``configure_logging``, ``kosmos --log-format`` and ``[mesh] log_format`` accept.
LOG_FORMATS = ("text", "json")
#: The human line, before the call's fields.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LoggedCall(Protocol):
    """What a line logged during a call says of it (a handler's ``Context`` is one)."""

    @property
    def agent_name(self) -> str: ...

    @property
    def envelope(self) -> Envelope: ...


#: The call the running handler serves; set by the agent server for each call (each runs in a task of its own).
current_call: ContextVar[LoggedCall | None] = ContextVar("kosmos_current_call", default=None)

# Marks the handler configure_logging installed, so a second call replaces it instead of adding one.
_HANDLER_NAME = "kosmos"


def _call_fields(call: LoggedCall) -> dict[str, str]:
    """The fields that tie a line to ``call``: who serves it, what it is, and its trace."""
    message = call.envelope
    fields = {
        "agent": call.agent_name,
        "action": message.action,
        "correlation_id": message.correlation_id,
        "message_id": message.message_id,
    }
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    elif message.trace_id:  # no span here (no tracing set up): the trace the caller sent
        fields["trace_id"] = message.trace_id
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ms), ``level``, ``logger``, ``message``, and the call.

    Within a call, also ``agent``, ``action``, ``correlation_id``, ``message_id`` and ``trace_id``
    (with ``span_id`` when an OpenTelemetry span is current); an exception comes as its traceback
    in ``exception``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = current_call.get()
        if call is not None:
            line.update(_call_fields(call))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human line (:data:`TEXT_FORMAT`); within a call, ``[agent.action corr=… trace=…]`` appended."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, with the call's fields before any traceback that follows it."""
        text = super().formatMessage(record)
        call = current_call.get()
        if call is None:
            return text
        fields = _call_fields(call)
        trace_id = fields.get("trace_id")
        where = f"{fields['agent']}.{fields['action']} corr={fields['correlation_id']}"
        return f"{text} [{where} trace={trace_id}]" if trace_id else f"{text} [{where}]"


def configure_logging(format: str = "text", level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (standard error by default) through one root handler, as text or JSON.

    Calling it again replaces the handler it installed, so it is safe to call more than once;
    handlers installed by others are left alone.

    Args:
        format: ``"text"`` or ``"json"``.
        level: the root logger's level.
        stream: where the lines go; standard error when None.

    Raises:
        ValueError: ``format`` is neither ``"text"`` nor ``"json"``.
    """
    if format not in LOG_FORMATS:
        raise ValueError(f"log format {format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
