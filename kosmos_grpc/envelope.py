"""Build and validate the ``AgentMessage`` envelope: defaults, TTL, priority, payload limits.

This is the hot path of every call, so conversions between JSON-like dicts and
``google.protobuf.Struct`` are hand-rolled here rather than going through ``json_format``.
"""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
from kosmos_grpc.bounds import (
    DEFAULT_MAX_PAYLOAD_VALUES,
    DEFAULT_MAX_TTL_MS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    check_payload_values,
)
from kosmos_grpc.errors import (
    ActionNotFound,
    AgentNotFound,
    DeadlineExceeded,
    InvalidEnvelope,
    KosmosError,
    PayloadTooLarge,
)
from kosmos_grpc.quoting import echo

__all__ = [
    "DEFAULT_MAX_HOPS",
    "DEFAULT_PAYLOAD_LIMIT",
    "DEFAULT_TTL_MS",
    "ROUTE_LIMIT",
    "AgentMessage",
    "Priority",
    "check_payload_size",
    "dict_to_struct",
    "new_message",
    "new_message_id",
    "struct_to_dict",
    "validate_and_fill",
]

AgentMessage = envelope_pb2.AgentMessage

DEFAULT_TTL_MS = 60_000
DEFAULT_PAYLOAD_LIMIT = 4 * 1024 * 1024
#: Delegations in a row a call may have passed through (``route``), by default and at most.
DEFAULT_MAX_HOPS = 8
ROUTE_LIMIT = 64
# Spelled-out character classes: twice as fast to match as re.IGNORECASE.
_UUID4 = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}")


# The RFC 4122 variant digit for each hex digit of randomness: 8, 9, a or b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_message_id() -> str:
    """A random uuid4 in canonical text form (three times faster than ``str(uuid.uuid4())``)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Priority(enum.IntEnum):
    """How urgent a message is; UNSPECIFIED on the wire means NORMAL."""

    UNSPECIFIED = envelope_pb2.PRIORITY_UNSPECIFIED
    LOW = envelope_pb2.PRIORITY_LOW
    NORMAL = envelope_pb2.PRIORITY_NORMAL
    HIGH = envelope_pb2.PRIORITY_HIGH
    CRITICAL = envelope_pb2.PRIORITY_CRITICAL

    @classmethod
    def parse(cls, value: Priority | int | str) -> Priority:
        """A priority from its enum, number or name (``"high"``, ``"PRIORITY_HIGH"``)."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            name = value.upper().removeprefix("PRIORITY_")
            try:
                return cls[name]
            except KeyError:
                choices = ", ".join(p.name.lower() for p in cls if p)
                raise InvalidEnvelope("priority", f"priority {value!r} is not one of {choices}") from None
        try:
            return cls(value)
        except ValueError:
            raise InvalidEnvelope("priority", f"priority {value!r} is not a known priority") from None


_PRIORITIES = frozenset(int(p) for p in Priority)
# google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z: outside it no
# library (Python's datetime included) can read the time.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def dict_to_struct(data: Mapping[str, Any], into: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    """A Struct holding a JSON-like mapping (``into``, filled in place, when given).

    Does what ``Struct.update`` does with fewer Python calls: exact JSON types are matched
    first and scalars are set inline. Raises TypeError for a value JSON cannot hold.
    """
    struct = struct_pb2.Struct() if into is None else into
    fields = struct.fields
    for key, value in data.items():
        kind = type(value)
        if kind is str:
            fields[key].string_value = value
        elif kind is int or kind is float:
            fields[key].number_value = value
        else:
            _set_value(fields[key], value)
    return struct


def _set_list(values: Any, items: Iterable[Any]) -> None:
    add = values.add
    for item in items:
        kind = type(item)
        if kind is str:
            add().string_value = item
        elif kind is int or kind is float:
            add().number_value = item
        else:
            _set_value(add(), item)


def _set_value(target: struct_pb2.Value, value: Any) -> None:
    kind = type(value)
    if kind is bool:
        target.bool_value = value
    elif value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif kind is dict:
        _set_struct(target, value)
    elif kind is list or kind is tuple:
        _set_list_value(target, value)
    # Subclasses (an IntEnum, an OrderedDict...) take the slower, general checks.
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    elif isinstance(value, Mapping):
        _set_struct(target, value)
    elif isinstance(value, list | tuple):
        _set_list_value(target, value)
    else:
        raise TypeError(f"{kind.__name__} is not a JSON value")


def _set_struct(target: struct_pb2.Value, value: Mapping[str, Any]) -> None:
    if value:
        dict_to_struct(value, target.struct_value)
    else:  # filling nothing in would leave the Value with no kind at all: it would read as None
        target.struct_value.SetInParent()


def _set_list_value(target: struct_pb2.Value, value: list[Any] | tuple[Any, ...]) -> None:
    if value:
        _set_list(target.list_value.values, value)
    else:
        target.list_value.SetInParent()


_INT_RANGE = 2**53  # beyond it a double no longer holds every integer


def _from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; give integral values back as int, as the sender most likely meant.
        return int(number) if number.is_integer() and -_INT_RANGE < number < _INT_RANGE else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_from_value(v) for v in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The JSON-like dict a Struct holds."""
    fields = struct.fields
    # Keys then lookups: iterating the map is C, while .items() goes through a Python ItemsView.
    return {key: _from_value(fields[key]) for key in fields}


def new_message(
    action: str,
    payload: Mapping[str, Any] | None = None,
    *,
    source_agent: str = "",
    target_agent: str | None = None,
    correlation_id: str | None = None,
    trace_id: str = "",
    priority: Priority | int | str = Priority.NORMAL,
    ttl_ms: int = DEFAULT_TTL_MS,
    message_id: str | None = None,
    into: envelope_pb2.AgentMessage | None = None,
) -> envelope_pb2.AgentMessage:
    """A new envelope with a fresh uuid4, the current time and the given fields.

    ``into`` fills an empty message in place (the one inside a request) instead of making one.
    """
    if ttl_ms < 0:
        raise InvalidEnvelope("ttl_ms", f"ttl_ms must be 0 (the default) or more, got {ttl_ms}")
    message = envelope_pb2.AgentMessage() if into is None else into
    message.message_id = message_id = message_id or new_message_id()
    message.timestamp.seconds, message.timestamp.nanos = divmod(time.time_ns(), 1_000_000_000)
    message.action = action
    message.correlation_id = correlation_id or message_id
    message.priority = envelope_pb2.Priority.ValueType(Priority.parse(priority))
    message.ttl_ms = ttl_ms
    if source_agent:
        message.source_agent = source_agent
    if trace_id:
        message.trace_id = trace_id
    if target_agent is not None:
        message.target_agent = target_agent
    if payload:
        try:
            dict_to_struct(payload, message.payload)
        except (TypeError, ValueError) as exc:
            raise InvalidEnvelope("payload", f"payload is not a JSON object: {exc}") from None
    return message


def validate_and_fill(
    message: envelope_pb2.AgentMessage,
    *,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    max_values: int | None = DEFAULT_MAX_PAYLOAD_VALUES,
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS,
    now_ns: int | None = None,
    require_action: bool = True,
) -> float:
    """Check an incoming envelope, fill its defaults in place and return its TTL left in seconds.

    Raises InvalidEnvelope naming the field (a string over its length, a ttl_ms over
    ``max_ttl_ms``...), DeadlineExceeded for an expired TTL, PayloadTooLarge for a payload over
    ``payload_limit`` bytes or ``max_values`` values (None: counted already, off the wire), and
    ActionNotFound or AgentNotFound for an action or target_agent longer than any name: each
    before the payload is turned into a dict.
    """
    # Every field is read once into a local: attribute access on a message is not free.
    action = message.action
    if require_action and not action:
        raise InvalidEnvelope("action", "action is required")
    correlation_id = message.correlation_id
    # One test for the usual case, every string within its bound; _too_long says which is not.
    if (
        len(action) > MAX_NAME_CHARS
        or len(correlation_id) > MAX_ID_CHARS
        or len(message.trace_id) > MAX_ID_CHARS
        or len(message.source_agent) > MAX_NAME_CHARS
        or len(message.target_agent) > MAX_NAME_CHARS
    ):
        raise _too_long(message)
    message_id = message.message_id
    if not message_id:
        message.message_id = message_id = new_message_id()
    elif _UUID4.fullmatch(message_id) is None:
        raise InvalidEnvelope("message_id", f"message_id {echo(message_id, 64)} is not a uuid4 in canonical text form")
    if not correlation_id:
        message.correlation_id = message_id
    ttl_ms = message.ttl_ms
    if ttl_ms <= 0:
        if ttl_ms < 0:
            raise InvalidEnvelope("ttl_ms", f"ttl_ms must be 0 (the default) or more, got {ttl_ms}")
        ttl_ms = DEFAULT_TTL_MS
    elif ttl_ms > max_ttl_ms:
        raise InvalidEnvelope(
            "ttl_ms", f"ttl_ms {ttl_ms:,} is over the maximum of {max_ttl_ms:,} ({max_ttl_ms / 3_600_000:g} h)"
        )
    if message.priority not in _PRIORITIES:
        raise InvalidEnvelope("priority", f"priority {message.priority} is not a known priority")
    now_ns = time.time_ns() if now_ns is None else now_ns
    if message.HasField("timestamp"):
        stamp = message.timestamp
        seconds, nanos = stamp.seconds, stamp.nanos
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            raise InvalidEnvelope(
                "timestamp",
                f"timestamp {seconds}s {nanos}ns is not a time: google.protobuf.Timestamp runs from "
                "0001-01-01 to 9999-12-31, with nanos from 0 to 999,999,999",
            )
        age_ns = now_ns - seconds * 1_000_000_000 - nanos
        # A timestamp ahead of this clock (skew) never lengthens the TTL.
        remaining = (ttl_ms - age_ns / 1_000_000) / 1000 if age_ns > 0 else ttl_ms / 1000
    else:
        message.timestamp.seconds, message.timestamp.nanos = divmod(now_ns, 1_000_000_000)
        remaining = ttl_ms / 1000
    if remaining <= 0:
        raise DeadlineExceeded(
            f"ttl_ms expired: the message is {ttl_ms - remaining * 1000:.0f} ms old and its ttl_ms is {ttl_ms}",
            metadata={"field": "ttl_ms"},
        )
    payload = message.payload
    size = payload.ByteSize()
    if size > payload_limit:
        raise _too_large(size, payload_limit)
    if max_values is not None and size > 2 * max_values:  # a smaller one cannot hold too many
        check_payload_values(payload, max_values)
    return remaining


def check_payload_size(message: envelope_pb2.AgentMessage, payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> None:
    """PayloadTooLarge (naming ``payload``) when the payload is over ``payload_limit`` bytes."""
    size = message.payload.ByteSize()
    if size > payload_limit:
        raise _too_large(size, payload_limit)


def _too_large(size: int, payload_limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"payload is {size} bytes, over the limit of {payload_limit} bytes",
        metadata={"field": "payload", "limit": str(payload_limit)},
    )


def _too_long(message: envelope_pb2.AgentMessage) -> KosmosError:
    """The error for the first string of ``message`` over its bound: no action or agent has such a
    name (UNIMPLEMENTED, NOT_FOUND, as for any name not served), and an id past it is refused."""
    action, target = message.action, message.target_agent
    if len(action) > MAX_NAME_CHARS:
        return ActionNotFound(
            f"action {echo(action)} names no action: names are at most {MAX_NAME_CHARS} characters",
            metadata={"field": "action"},
        )
    if len(target) > MAX_NAME_CHARS:
        return AgentNotFound(
            f"target_agent {echo(target)} names no agent: names are at most {MAX_NAME_CHARS} characters",
            metadata={"field": "target_agent"},
        )
    for field, limit in (
        ("source_agent", MAX_NAME_CHARS),
        ("correlation_id", MAX_ID_CHARS),
        ("trace_id", MAX_ID_CHARS),
    ):
        length = len(getattr(message, field))
        if length > limit:
            return InvalidEnvelope(field, f"{field} is {length:,} characters, over the limit of {limit}")
    raise AssertionError("no field is too long")  # pragma: no cover - called only when one is
