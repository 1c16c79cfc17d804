"""Envelope building and validation, without the network."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2

from kosmos_grpc import DeadlineExceeded, InvalidEnvelope, PayloadTooLarge, Priority, new_message, validate_and_fill
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, envelope_pb2
from kosmos_grpc.bounds import MAX_ID_CHARS, MAX_NAME_CHARS, check_payload_values, too_many_values
from kosmos_grpc.envelope import dict_to_struct, new_message_id, struct_to_dict
from kosmos_grpc.errors import ActionNotFound, AgentNotFound, KosmosError
from kosmos_grpc.quoting import clip, echo


def test_new_message_fills_every_default() -> None:
    message = new_message("answer", {"topic": "grpc"}, source_agent="zeus", target_agent="athena")
    assert uuid.UUID(message.message_id).version == 4
    assert message.correlation_id == message.message_id
    assert message.ttl_ms == 60_000
    assert Priority(message.priority) is Priority.NORMAL
    assert message.target_agent == "athena"
    assert abs(message.timestamp.seconds - time.time()) < 5
    assert struct_to_dict(message.payload) == {"topic": "grpc"}


def test_message_ids_are_distinct_canonical_uuid4s() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_unset_target_agent_means_broadcast() -> None:
    assert not new_message("ping").HasField("target_agent")


def test_payload_round_trips_nested_json() -> None:
    payload: dict[str, object] = {
        "n": 3,
        "x": 1.5,
        "ok": True,
        "none": None,
        "list": [1, "a", {"b": [False]}],
        "s": "é",
        "e": [{}, []],
    }
    assert struct_to_dict(new_message("a", payload).payload) == payload


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"s": "x", "i": 3, "f": -2.5, "t": True, "f0": False, "n": None},
        {"nested": {"deep": {"list": [1, "two", None, [3.5, {"k": False}]]}}, "tuple": (1, 2)},
        {"big": 2**60, "unicode": "Zeus ⚡"},
        {"empty_list": [], "empty_dict": {}, "in_list": [[], {}]},
    ],
)
def test_dict_to_struct_matches_protobufs_own_update(data: dict[str, Any]) -> None:
    expected = struct_pb2.Struct()
    expected.update(data)
    assert dict_to_struct(data) == expected


def test_payload_that_is_not_json_is_rejected_naming_payload() -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        new_message("a", {"bad": object()})
    assert caught.value.field == "payload"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "action", ""), "action"),
        (lambda m: setattr(m, "message_id", "not-a-uuid"), "message_id"),
        (lambda m: setattr(m, "message_id", str(uuid.uuid1())), "message_id"),
        (lambda m: setattr(m, "ttl_ms", -1), "ttl_ms"),
        (lambda m: setattr(m, "priority", 42), "priority"),
    ],
)
def test_validate_names_the_bad_field(mutate: Callable[[envelope_pb2.AgentMessage], None], field: str) -> None:
    message = new_message("echo")
    mutate(message)
    with pytest.raises(InvalidEnvelope) as caught:
        validate_and_fill(message)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_expired_ttl_is_a_deadline_error() -> None:
    message = new_message("echo", ttl_ms=100)
    later = time.time_ns() + 200_000_000
    with pytest.raises(DeadlineExceeded, match="ttl_ms"):
        validate_and_fill(message, now_ns=later)


def test_payload_over_limit_names_payload_and_limit() -> None:
    message = new_message("echo", {"blob": "x" * 2000})
    with pytest.raises(PayloadTooLarge, match=r"payload is \d+ bytes, over the limit of 1000"):
        validate_and_fill(message, payload_limit=1000)


def test_validate_fills_missing_id_timestamp_and_correlation() -> None:
    message = new_message("echo")
    message.message_id = ""
    message.correlation_id = ""
    message.ClearField("timestamp")
    remaining = validate_and_fill(message)
    assert uuid.UUID(message.message_id).version == 4
    assert message.correlation_id == message.message_id
    assert message.HasField("timestamp")
    assert 59 < remaining <= 60


def test_ttl_zero_means_the_default_and_future_timestamps_do_not_extend_it() -> None:
    message = new_message("echo", ttl_ms=0)
    assert 59 < validate_and_fill(message) <= 60
    message.timestamp.seconds += 3600  # a sender whose clock runs ahead
    assert validate_and_fill(message) <= 60


@pytest.mark.parametrize(
    ("text", "expected"), [("high", Priority.HIGH), ("PRIORITY_LOW", Priority.LOW), (4, Priority.CRITICAL)]
)
def test_priority_parses_names_and_numbers(text: str | int, expected: Priority) -> None:
    assert Priority.parse(text) is expected


def test_unknown_priority_is_rejected() -> None:
    with pytest.raises(InvalidEnvelope, match="urgent"):
        Priority.parse("urgent")


def _values(value: Any) -> int:
    """How many values ``value`` holds: each object member and array item, nested ones included."""
    if isinstance(value, dict):
        return len(value) + sum(_values(v) for v in value.values())
    if isinstance(value, list):
        return len(value) + sum(_values(v) for v in value)
    return 0


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 5 and roll < 0.25:
        return {"k" * rng.randint(0, 20) + str(i): _random_json(rng, depth + 1) for i in range(rng.randint(0, 6))}
    if depth < 5 and roll < 0.45:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return rng.choice([0, 2.5, -(10**12), "", "x" * rng.randint(1, 300), None, True])


def test_the_values_counted_off_the_wire_are_those_of_the_payload() -> None:
    # The deserializer counts them before parsing: its count must be the payload's, to the value.
    rng = random.Random(12)
    for _ in range(300):
        payload = {f"p{i}": _random_json(rng) for i in range(rng.randint(0, 8))}
        held = _values(payload)
        message = new_message("echo", payload, correlation_id="c" * rng.randint(1, 200), trace_id="ab" * 16)
        data = agent_pb2.ExecuteRequest(message=message).SerializeToString()
        assert [too_many_values(data, limit) for limit in (held - 1, held, held + 1)] == [held > held - 1, False, False]


def test_a_payload_sent_in_pieces_is_counted_whole_and_garbage_is_left_to_the_decoder() -> None:
    # protobuf merges a field that comes twice: two payloads of 6 keys are one of 12.
    pieces = [
        agent_pb2.ExecuteRequest(message=new_message("echo", {f"{name}{i}": i for i in range(6)})).SerializeToString()
        for name in "xy"
    ]
    assert len(agent_pb2.ExecuteRequest.FromString(b"".join(pieces)).message.payload.fields) == 12
    assert too_many_values(b"".join(pieces), 11)
    assert not too_many_values(b"".join(pieces), 12)
    for garbage in (b"\xff\xff\xff", b"\x0a\xff", bytes(range(256)), b"\x08" + b"\xff" * 10_000, b"\x0b\x0c"):
        assert not too_many_values(garbage, 0)


def test_the_walk_over_a_struct_refuses_more_values_than_the_bound_naming_payload() -> None:
    rows = dict_to_struct({"rows": [{"a": i, "b": [i, i]} for i in range(10)]})  # 1 + 10 + 20 + 20 values
    check_payload_values(rows, max_values=51)
    with pytest.raises(PayloadTooLarge, match="more than 50 values") as caught:
        check_payload_values(rows, max_values=50)
    assert caught.value.metadata["field"] == "payload"
    message = new_message("echo", {"rows": list(range(20_001))})
    with pytest.raises(PayloadTooLarge, match="more than 10,000 values"):
        validate_and_fill(message)
    validate_and_fill(message, max_values=None)  # counted already, off the wire


@pytest.mark.parametrize(
    ("field", "length", "error"),
    [
        ("action", MAX_NAME_CHARS + 1, ActionNotFound),
        ("target_agent", MAX_NAME_CHARS + 1, AgentNotFound),
        ("source_agent", MAX_NAME_CHARS + 1, InvalidEnvelope),
        ("correlation_id", MAX_ID_CHARS + 1, InvalidEnvelope),
        ("trace_id", MAX_ID_CHARS + 1, InvalidEnvelope),
    ],
)
def test_every_string_of_the_envelope_is_bounded(field: str, length: int, error: type[KosmosError]) -> None:
    message = new_message("echo")
    setattr(message, field, "x" * (length - 1))
    validate_and_fill(message)
    setattr(message, field, "x" * length)
    with pytest.raises(error) as caught:
        validate_and_fill(message)
    assert type(caught.value) is error
    assert caught.value.metadata["field"] == field


def test_errors_clip_what_they_echo_within_bytes_on_a_character_boundary() -> None:
    assert echo("short") == "'short'"
    assert echo("n" * 10_000) == repr("n" * 120) + "... (10,000 characters)"
    for text in ("x" * 5_000, "\N{CJK UNIFIED IDEOGRAPH-4E00}" * 5_000, "\N{GRINNING FACE}" * 5_000):
        clipped = clip(text)
        assert len(clipped.encode()) <= 512
        assert clipped.endswith("... (5,000 characters)")
        assert text.startswith(clipped.removesuffix("... (5,000 characters)"))
