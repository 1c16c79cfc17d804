"""Hypothesis strategies for hostile input: envelopes with every field odd, payloads, events, raw bytes.

Huge values print short (``'x'*65536``, ``{200000 keys}``), so a falsifying example stays readable.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import struct_pb2
from hypothesis import strategies as st

from kosmos_grpc import new_message
from kosmos_grpc._proto.kosmos.v1 import envelope_pb2, events_pb2
from kosmos_grpc.envelope import dict_to_struct

__all__ = [
    "DAY_MS",
    "INT32",
    "INT64",
    "Envelope",
    "Long",
    "ManyKeys",
    "Nested",
    "ShownEvent",
    "brief",
    "envelopes",
    "events",
    "field_one",
    "headers",
    "names",
    "payloads",
    "raw_bytes",
    "small_payloads",
    "subjects",
    "texts",
]

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# A day in milliseconds: the largest ttl_ms the mesh should take by default.
DAY_MS = 24 * 3600 * 1000


class Long(str):
    """A long string that prints as ``'ab'*n``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{self[:2]!r}*{len(self) // max(1, len(self[:2]))}"


class ManyKeys(dict[str, Any]):
    """A payload of many keys that prints as ``{n keys}``."""

    def __repr__(self) -> str:
        return f"{{{len(self)} keys}}"


def _long(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # Up to 256 Ki characters (1 MiB of UTF-8 at most): several such fields still fit the server's
    # receive limit (twice the payload limit), so what answers is the mesh, not gRPC's own check.
    return st.builds(lambda c, n: Long(c * n), chars, st.sampled_from([300, 1025, 5000, 70_000, 1 << 18]))


_odd_chars = st.sampled_from(["x", "\x00", "é", "\u202e", "😀", ".", "*", ">", " ", "\n", "\ufeff", "%"])

#: Any text: short and arbitrary, or long and repetitive.
texts = st.one_of(st.text(max_size=40), _long(_odd_chars))

#: Agent or action names: the real ones, and anything else.
names = st.one_of(st.sampled_from(["target", "echo", "count", ""]), texts)


class Nested(dict[str, Any]):
    """A payload nested ``depth`` objects deep, that prints as ``{'d': ... depth n}``."""

    def __repr__(self) -> str:
        depth, inner = 0, self
        while inner:
            depth, inner = depth + 1, inner["d"]
        return f"{{'d': ... depth {depth}}}"


def _nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"d": payload}
    return Nested(payload)


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**53), 2**53),
    st.text(max_size=40),
)


@functools.cache
def _many_keys(n: int) -> ManyKeys:
    return ManyKeys((f"k{i}", i) for i in range(n))


@functools.cache
def _many_keys_struct(n: int) -> struct_pb2.Struct:
    return dict_to_struct(_many_keys(n))


#: JSON objects: small and arbitrary (odd floats, odd keys), or deeply nested.
small_payloads: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            _json_leaf,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=20,
        ),
        max_size=6,
    ),
    st.integers(1, 300).map(_nested),
)

#: Those, and big ones: around the 4 MiB payload limit and past it, and of many keys.
payloads: st.SearchStrategy[dict[str, Any]] = st.one_of(
    small_payloads,
    st.sampled_from([1 << 20, 4 * (1 << 20) - 64, 5 * (1 << 20)]).map(lambda n: {"blob": Long("x" * n)}),
    st.sampled_from([1000, 20_000, 100_000]).map(_many_keys),
)


def _fill(payload: dict[str, Any], into: struct_pb2.Struct) -> None:
    """Fill ``into`` with ``payload``; the big payloads of many keys are built once, then copied."""
    if isinstance(payload, ManyKeys):
        into.CopyFrom(_many_keys_struct(len(payload)))
    else:
        dict_to_struct(payload, into)


def brief(message: envelope_pb2.AgentMessage) -> str:
    """An envelope in one short line: each field's value cut short, the payload by its size."""
    fields = []
    for name in ("message_id", "source_agent", "target_agent", "action", "correlation_id", "trace_id"):
        value = getattr(message, name)
        if value or (name == "target_agent" and message.HasField("target_agent")):
            fields.append(f"{name}={value[:40]!r}" + (f"+{len(value) - 40} chars" if len(value) > 40 else ""))
    fields.append(f"priority={message.priority} ttl_ms={message.ttl_ms}")
    if message.HasField("timestamp"):
        fields.append(f"timestamp={message.timestamp.seconds}s{message.timestamp.nanos}ns")
    fields.append(f"payload of {message.payload.ByteSize()} bytes, keys {list(message.payload.fields)[:4]!r}")
    return "AgentMessage(" + ", ".join(fields) + ")"


class Envelope:
    """A drawn AgentMessage that prints short (:func:`brief`)."""

    __slots__ = ("message",)

    def __init__(self, message: envelope_pb2.AgentMessage) -> None:
        self.message = message

    def __repr__(self) -> str:
        return brief(self.message)


class ShownEvent:
    """A drawn Event that prints short."""

    __slots__ = ("event",)

    def __init__(self, event: events_pb2.Event) -> None:
        self.event = event

    def __repr__(self) -> str:
        event = self.event
        size = sum(len(k) + len(v) for k, v in event.headers.items())
        message = brief(event.message) if event.HasField("message") else "no message"
        subject = f"{event.subject[:60]!r} ({len(event.subject)} chars)"
        return f"Event(subject={subject}, {len(event.headers)} headers of {size} chars, {message})"


def field_one(inner: bytes) -> bytes:
    """``inner`` as field 1, length-delimited: how each request here wraps its message, built without a
    copy of the message (protobuf refuses to copy one nested past its recursion limit)."""
    length, prefix = len(inner), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(prefix) + inner


def _odd(draw: st.DrawFn) -> bool:
    """Whether to make a field odd: one time in six, so that most calls have one or two odd fields
    and get past the first check to the next (and a failing example shrinks to the fields that matter)."""
    return draw(st.integers(0, 5)) == 5


@st.composite
def envelopes(
    draw: st.DrawFn, *, action: str = "echo", payload: st.SearchStrategy[dict[str, Any]] = payloads
) -> Envelope:
    """An AgentMessage for ``action`` of the Target agent, any of whose fields may be odd."""
    message = new_message(action, target_agent="target")
    if _odd(draw):
        message.action = draw(names)
    if _odd(draw):
        message.message_id = draw(st.one_of(st.just(""), st.uuids().map(str), texts))
    if _odd(draw):
        message.source_agent = draw(names)
    if _odd(draw):
        target = draw(st.one_of(st.none(), names))
        if target is None:
            message.ClearField("target_agent")
        else:
            message.target_agent = target
    for field in ("correlation_id", "trace_id"):
        if _odd(draw):
            setattr(message, field, draw(texts))
    if _odd(draw):
        message.priority = envelope_pb2.Priority.ValueType(draw(st.one_of(st.integers(0, 5), INT32)))
    if _odd(draw):
        message.ttl_ms = draw(st.one_of(st.integers(0, 2 * DAY_MS), INT64))
    if _odd(draw):
        if draw(st.booleans()):
            message.ClearField("timestamp")
        else:
            message.timestamp.seconds = draw(INT64)
            message.timestamp.nanos = draw(INT32)
    drawn = draw(payload)
    if drawn:
        _fill(drawn, message.payload)
    return Envelope(message)


#: Subjects and patterns: dotted tokens of odd text and wildcards, or anything at all.
subjects = st.one_of(
    st.lists(st.one_of(st.sampled_from(["kosmos", "events", "*", ">", "", "a"]), st.text(max_size=6)), max_size=12).map(
        ".".join
    ),
    texts,
)

#: Event headers: many, long or odd names and values.
headers = st.one_of(
    st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=8),
    st.dictionaries(texts, texts, max_size=3),
)


@st.composite
def events(draw: st.DrawFn, payload: st.SearchStrategy[dict[str, Any]] = payloads) -> ShownEvent:
    """An Event with an odd subject, odd headers and an odd envelope (or none)."""
    event = events_pb2.Event(subject=draw(st.one_of(st.just("kosmos.events.audit.log"), subjects)))
    for key, value in draw(headers).items():
        event.headers[key] = value
    if draw(st.integers(0, 4)):
        event.message.CopyFrom(draw(envelopes(action="", payload=payload)).message)
    return ShownEvent(event)


def _mutated(valid: bytes, cuts: list[int], flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid)
    for where, value in flips:
        if data:
            data[where % len(data)] = value
    for cut in cuts:
        if data:
            del data[cut % len(data) :]
    return bytes(data)


def _valid_requests() -> list[bytes]:
    message = new_message("echo", {"x": 1.5, "y": [True, None, "z"]}, target_agent="target")
    event = events_pb2.Event(subject="kosmos.events.audit.log", headers={"k": "v"}, message=message)
    return [
        message.SerializeToString(),
        events_pb2.PublishRequest(event=event).SerializeToString(),
        events_pb2.SubscribeRequest(pattern="kosmos.>", queue="q").SerializeToString(),
    ]


#: Bytes for any request: arbitrary, valid requests cut short or with a byte changed, or wire-shaped garbage.
raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _mutated,
        st.sampled_from(_valid_requests()).map(field_one),
        st.lists(st.integers(0, 10_000), max_size=1),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    ),
    st.sampled_from(
        [b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10, b"\x0a\x05abc", b"\x12" * 3, b"\xff\xff\xff"]
    ),
)
