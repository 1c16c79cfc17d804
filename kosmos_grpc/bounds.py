"""The bounds on what an envelope may hold, and the two counts of a payload's values: off the wire, and on a Struct.

Every one is checked before the work it guards, and each refusal names its field: a payload's
values are counted off the wire before protobuf parses it (its Python decoder takes 1.6 s for a
Struct of 400,000 keys), and on the Struct for an envelope that did not come that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import struct_pb2

from kosmos_grpc.errors import PayloadTooLarge

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_PAYLOAD_VALUES",
    "DEFAULT_MAX_TTL_MS",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "PAYLOAD_DEPTH",
    "check_payload_values",
    "too_many",
    "too_many_values",
]

#: The longest ttl_ms an envelope may ask for (24 h): past it a TTL bounds nothing.
DEFAULT_MAX_TTL_MS = 24 * 3600 * 1000
#: The most values a payload holds, nested ones included (each object member and array item is
#: one): turning 400,000 of them into a dict takes over a second, 10,000 about 6 ms.
DEFAULT_MAX_PAYLOAD_VALUES = 10_000
#: How deep a payload nests is bounded by protobuf's decoder, which stops at 100 message levels:
#: 33 levels of objects, the payload the first (each takes three: Value, Struct, map entry), or
#: under the payload 48 of arrays (two each); deeper is refused INVALID_ARGUMENT naming ``payload``
#: (by _grpc.refusing). No walk over the payload is needed for it, nor any cost on a normal call.
PAYLOAD_DEPTH = "33 levels of objects, or the payload and 48 of arrays"
#: The characters at most of a name (action, source_agent, target_agent) and of an id
#: (correlation_id, trace_id; message_id is a uuid4).
MAX_NAME_CHARS = 128
MAX_ID_CHARS = 256

_Container = struct_pb2.Struct | struct_pb2.ListValue


def check_payload_values(payload: struct_pb2.Struct, max_values: int = DEFAULT_MAX_PAYLOAD_VALUES) -> None:
    """PayloadTooLarge naming ``payload`` when it holds more than ``max_values`` values.

    A walk over the Struct, a level at a time, that counts a container's values before it looks
    at them and stops at the bound: it looks at twice ``max_values`` values at most. A payload of
    ``2 * max_values`` bytes or fewer need not be walked (each value takes 2 bytes at least).
    """
    left = max_values - len(payload.fields)
    level: list[_Container] = [payload]
    while level and left >= 0:
        nested: list[_Container] = []
        for container in level:
            if isinstance(container, struct_pb2.Struct):
                fields = container.fields
                values: Iterable[struct_pb2.Value] = [fields[key] for key in fields]
            else:
                values = container.values
            for value in values:
                kind = value.WhichOneof("kind")
                if kind == "struct_value":
                    inner: _Container = value.struct_value
                    left -= len(value.struct_value.fields)
                elif kind == "list_value":
                    inner = value.list_value
                    left -= len(inner.values)
                else:
                    continue
                nested.append(inner)
            if left < 0:
                break
        level = nested
    if left < 0:
        raise too_many(max_values)


def too_many(max_values: int) -> PayloadTooLarge:
    """The error for a payload of more than ``max_values`` values."""
    return PayloadTooLarge(
        f"payload holds more than {max_values:,} values (object members and array items, nested ones included)",
        metadata={"field": "payload", "limit": str(max_values)},
    )


# What too_many_values reads, as it goes down an encoded request: the messages on the way to the
# payload, then the payload's own. (reading, field) -> (read inside it, whether that is one value).
_REQUEST, _MESSAGE, _STRUCT, _ENTRY, _VALUE, _LIST, _EVENTS, _EVENT = range(8)
#: Where too_many_values starts: an AgentService request (the envelope is its field 1), or an
#: EventBusService one (its events are field 1, each event's envelope its field 3).
AGENT_REQUEST, BUS_REQUEST = _REQUEST, _EVENTS
_INSIDE: dict[tuple[int, int], tuple[int, int]] = {
    (_REQUEST, 1): (_MESSAGE, 0),  # ExecuteRequest.message, StreamRequest.message
    (_EVENTS, 1): (_EVENT, 0),  # PublishRequest.event, PublishStreamRequest.events
    (_EVENT, 3): (_MESSAGE, 0),  # Event.message
    (_MESSAGE, 6): (_STRUCT, 0),  # AgentMessage.payload
    (_STRUCT, 1): (_ENTRY, 1),  # Struct.fields: one entry, one value
    (_ENTRY, 2): (_VALUE, 0),  # the entry's value
    (_VALUE, 5): (_STRUCT, 0),  # Value.struct_value
    (_VALUE, 6): (_LIST, 0),  # Value.list_value
    (_LIST, 1): (_VALUE, 1),  # ListValue.values: one item, one value
}
# Deeper than this the decoder refuses the request anyway (100 message levels).
_MAX_LEVELS = 100


def too_many_values(request: bytes, max_values: int, start: int = AGENT_REQUEST) -> bool:
    """Whether the payload of an encoded ExecuteRequest or StreamRequest (``start`` AGENT_REQUEST),
    or of an event of a PublishRequest or PublishStreamRequest (BUS_REQUEST; each event counted on
    its own), holds more than ``max_values`` values, read off the wire before anything parses it.

    protobuf's Python decoder takes 1.6 s for a Struct of 400,000 keys (its maps cost more per
    key the more they hold): counted here, such a payload is refused after ``max_values`` of
    them. Bytes that are not a request this can read give False: the decoder then says what is
    wrong with them. A request of ``2 * max_values`` bytes or fewer cannot hold too many values
    (each takes 2 bytes at least) and need not be read.
    """
    data = request
    stack: list[tuple[int, int]] = []
    reading, end, i, left = start, len(data), 0, max_values
    try:
        while True:
            if i >= end:
                if i > end or not stack:
                    return False
                reading, end = stack.pop()
                continue
            key = data[i]
            i += 1
            if key >= 0x80:
                key, i = _varint(data, i, key)
            wire = key & 7
            if wire == 2:
                length = data[i]
                i += 1
                if length >= 0x80:
                    length, i = _varint(data, i, length)
                inside = _INSIDE.get((reading, key >> 3))
                if inside is None:
                    i += length
                    continue
                if reading == _EVENTS:
                    left = max_values  # a new event: its payload is counted from nothing
                left -= inside[1]
                if left < 0:
                    return True
                if len(stack) >= _MAX_LEVELS or i + length > end:
                    return False
                stack.append((reading, end))
                reading, end = inside[0], i + length
            elif wire == 0:
                i += 1
                if data[i - 1] >= 0x80:
                    _, i = _varint(data, i, data[i - 1])
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:  # groups, or not protobuf at all
                return False
    except (IndexError, ValueError):  # it ends inside a field, or a varint runs on
        return False


def _varint(data: bytes, i: int, first: int) -> tuple[int, int]:
    """The varint whose first byte, ``first`` (0x80 or more), came before ``i``, and where it ends."""
    value, shift = first & 0x7F, 7
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("a varint of more than 10 bytes")
