"""Hostile input against live servers: every answer a deliberate status, the server still SERVING and prompt.

A Target agent (a unary and a streaming action that never raise) and the embedded event broker
each run in a process of their own, started once for the module and stopped by PID. Hypothesis
throws at them arbitrary envelopes (every field, huge and odd strings, out-of-range numbers, odd
timestamps and priorities), payloads, gRPC metadata, events, subjects, patterns, queue names,
headers and raw bytes, over every RPC of ``kosmos.v1.AgentService``, ``kosmos.v1.EventBusService``
and ``grpc.health.v1.Health``. After each example: no traceback in the server's log, health says
SERVING, and a normal call answers within a 100 ms deadline; after each test, the server's
memory is back within a bound of where the test found it. The examples are fixed
(``derandomize``, no database), so every run throws the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from kosmos_grpc import new_message
from kosmos_grpc._grpc import SMALL_REQUEST
from kosmos_grpc._proto.kosmos.v1 import agent_pb2, envelope_pb2, events_pb2

from .conftest import ROOT, environment
from .helpers.hostile_checks import ATTACK, HEALTH_SERVICE, Answer, Served, check_deliberate, error_info, start_servers
from .helpers.hostile_inputs import (
    DAY_MS,
    Envelope,
    Long,
    ShownEvent,
    envelopes,
    events,
    field_one,
    raw_bytes,
    small_payloads,
    subjects,
    texts,
)
from .helpers.hostile_servers import MAX_CHUNKS

AGENT = "kosmos.v1.AgentService"
BUS = "kosmos.v1.EventBusService"
#: How much more memory a server may hold after a test's attacks than before them.
MEMORY_BOUND = 64 * 1024 * 1024
#: The longest envelope string (payload aside) a server may accept.
LONGEST_ACCEPTED = 4096
#: The most lines a server may log while refusing a test's worth of bad requests: once per burst.
LOG_LINES_BOUND = 10
#: The longest line a server may log: what it echoes of a request is cut short, as in a status.
LOG_LINE_LIMIT = 2048


Servers = dict[str, Served]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("hostile")
    started = start_servers(["agent", "broker"], folder, environment({"PYTHONUNBUFFERED": "1"}), ROOT)
    try:
        for served in started:
            _still_well(served)
            served.baseline = served.rss()
        yield {served.kind: served for served in started}
    finally:
        for served in started:
            served.stop()


def _unary(served: Served, method: str, request: bytes, timeout: float = 10) -> tuple[Answer, bytes]:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = served.channel.unary_unary(method)
    try:
        return Answer(grpc.StatusCode.OK), call(request, timeout=timeout)
    except grpc.RpcError as error:
        return Answer.of(error), b""


def _streamed(
    served: Served, method: str, request: bytes, most: int, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[Answer, list[bytes]]:
    """Read at most ``most`` messages under a deadline, then cancel: a stream never holds the test."""
    call: grpc.UnaryStreamMultiCallable[bytes, bytes] = served.channel.unary_stream(method)
    responses = call(request, timeout=10, metadata=metadata)
    got: list[bytes] = []
    try:
        for message in responses:
            got.append(message)
            if len(got) >= most:
                responses.cancel()
                return Answer(grpc.StatusCode.OK), got
    except grpc.RpcError as error:
        return Answer.of(error), got
    return Answer(grpc.StatusCode.OK), got


def _normal_call(served: Served, timeout: float) -> None:
    if served.kind == "agent":
        method, request = f"/{AGENT}/Execute", _request(new_message("echo", {"ping": 1}, target_agent="target"))
    else:
        event = events_pb2.Event(subject="kosmos.events.audit.log", message=new_message("ping"))
        method, request = f"/{BUS}/Publish", _request(event)
    answer, _ = _unary(served, method, request, timeout)
    assert answer.code == grpc.StatusCode.OK, f"a normal call to the {served.kind} within {timeout} s: {answer!r}"


def _still_well(served: Served) -> None:
    """SERVING, and a normal call answered within 100 ms (after a warm-up call)."""
    assert served.serving(), f"the {served.kind} is not SERVING"
    _normal_call(served, timeout=5)
    _normal_call(served, timeout=0.1)


def _attack(served: Served, examples: Callable[[], None], *, log_lines: int | None = None) -> None:
    """Run Hypothesis ``examples`` against ``served``; then its log must hold no traceback (and at most
    ``log_lines`` lines, unless None) and its memory must come back within the bound.

    The log is read once the examples are done, not after each: a line a server writes belongs to
    no one example for sure, and a check that could blame the wrong one would make Hypothesis'
    replays disagree with themselves.
    """
    _still_well(served)
    served.new_log()
    before = served.rss()
    examples()
    _still_well(served)
    written = served.new_log()
    assert "Traceback" not in written, f"the {served.kind} logged a traceback:\n{written[-4000:]}"
    lines = written.splitlines()
    longest = max(lines, key=len, default="")
    assert len(longest) <= LOG_LINE_LIMIT, f"the {served.kind} logged a line of {len(longest)} chars: {longest[:300]}"
    if log_lines is not None:
        assert len(lines) <= log_lines, f"the {served.kind} logged {len(lines)} lines:\n" + "\n".join(
            line[:300] for line in lines[:20]
        )
    after = served.wait_for_rss_below(before + MEMORY_BOUND)
    assert after <= before + MEMORY_BOUND, (
        f"the {served.kind} holds {(after - before) / 2**20:.0f} MiB more than before the attack "
        f"({before / 2**20:.0f} -> {after / 2**20:.0f} MiB)"
    )


def _request(message: Message) -> bytes:
    """An ExecuteRequest, StreamRequest or PublishRequest of ``message``: each holds it as field 1."""
    return field_one(message.SerializeToString())


def _send_envelope(agent: Served, rpc: str, message: envelope_pb2.AgentMessage) -> Answer:
    if rpc == "Execute":
        return _unary(agent, f"/{AGENT}/Execute", _request(message))[0]
    return _streamed(agent, f"/{AGENT}/Stream", _request(message), 5)[0]


def _long_fields(message: envelope_pb2.AgentMessage) -> list[str]:
    fields = ["message_id", "source_agent", "target_agent", "action", "correlation_id", "trace_id"]
    return [name for name in fields if len(getattr(message, name)) > LONGEST_ACCEPTED]


#: gRPC metadata a hostile client may send along: trace context that is not, and odd keys.
metadata = st.lists(
    st.tuples(
        st.sampled_from(["traceparent", "tracestate", "baggage", "x-kosmos", "grpc-accept-encoding-x"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    ),
    max_size=4,
).map(tuple)


def test_execute_answers_any_envelope_with_a_deliberate_status(servers: Servers) -> None:
    agent = servers["agent"]

    @ATTACK
    @given(envelope=envelopes(), extra=metadata)
    def examples(envelope: Envelope, extra: tuple[tuple[str, str], ...]) -> None:
        message = envelope.message
        request = _request(message)
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = agent.channel.unary_unary(f"/{AGENT}/Execute")
        try:
            reply = call(request, timeout=10, metadata=extra)
        except grpc.RpcError as error:
            check_deliberate(Answer.of(error), request_bytes=len(request))
        else:
            assert not _long_fields(message), f"accepted {_long_fields(message)} over {LONGEST_ACCEPTED} characters"
            assert message.ttl_ms <= DAY_MS, f"accepted a ttl_ms of {message.ttl_ms}"
            assert len(reply) <= message.payload.ByteSize() + LONGEST_ACCEPTED, "the reply echoes more than it should"
        _still_well(agent)

    _attack(agent, examples)


def test_stream_answers_any_envelope_with_a_deliberate_status(servers: Servers) -> None:
    agent = servers["agent"]

    @ATTACK
    @given(envelope=envelopes(action="count"), extra=metadata)
    def examples(envelope: Envelope, extra: tuple[tuple[str, str], ...]) -> None:
        message = envelope.message
        request = _request(message)
        answer, chunks = _streamed(agent, f"/{AGENT}/Stream", request, MAX_CHUNKS + 2, extra)
        check_deliberate(answer, request_bytes=len(request))
        assert len(chunks) <= MAX_CHUNKS + 1, f"{len(chunks)} chunks from an action that makes {MAX_CHUNKS} at most"
        if answer.code == grpc.StatusCode.OK and chunks:
            assert not _long_fields(message), f"accepted {_long_fields(message)} over {LONGEST_ACCEPTED} characters"
            assert message.ttl_ms <= DAY_MS, f"accepted a ttl_ms of {message.ttl_ms}"
        _still_well(agent)

    _attack(agent, examples)


@pytest.mark.parametrize("rpc", ["Execute", "Stream"])
def test_ttl_over_a_day_is_refused_naming_ttl_ms(servers: Servers, rpc: str) -> None:
    agent = servers["agent"]

    @settings(ATTACK, max_examples=10)
    @given(ttl_ms=st.one_of(st.integers(DAY_MS + 1, 2**63 - 1), st.just(2**62), st.just(2**63 - 1)))
    def examples(ttl_ms: int) -> None:
        message = new_message("echo" if rpc == "Execute" else "count", {"n": 1}, target_agent="target", ttl_ms=ttl_ms)
        answer = _send_envelope(agent, rpc, message)
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, f"ttl_ms {ttl_ms}: {answer!r}"
        info = error_info(answer)
        assert info is not None, answer
        assert info.metadata["field"] == "ttl_ms", answer
        _still_well(agent)

    _attack(agent, examples)


@pytest.mark.parametrize("rpc", ["Execute", "Stream"])
def test_long_envelope_strings_are_refused_naming_the_field_in_a_short_status(servers: Servers, rpc: str) -> None:
    agent = servers["agent"]

    @settings(ATTACK, max_examples=15)
    @given(
        field=st.sampled_from(["source_agent", "target_agent", "action", "correlation_id", "trace_id"]),
        length=st.sampled_from([LONGEST_ACCEPTED + 1, 20_000, 100_000, 1 << 20]),
        char=st.sampled_from(["x", "é", "😀"]),
    )
    def examples(field: str, length: int, char: str) -> None:
        message = new_message("echo" if rpc == "Execute" else "count", {"n": 1}, target_agent="target")
        setattr(message, field, Long(char * length))
        answer = _send_envelope(agent, rpc, message)
        assert answer.code != grpc.StatusCode.OK, f"{field} of {length} characters was accepted"
        check_deliberate(answer)
        info = error_info(answer)
        assert info is not None
        assert info.metadata["field"] == field, answer
        _still_well(agent)

    _attack(agent, examples)


# Every RPC a hostile client can reach, on which server, and the message it takes.
RPCS: list[tuple[str, str, str, type[Message]]] = [
    ("agent", f"/{AGENT}/Execute", "unary", agent_pb2.ExecuteRequest),
    ("agent", f"/{AGENT}/Stream", "stream", agent_pb2.StreamRequest),
    ("agent", f"/{AGENT}/Describe", "unary", agent_pb2.DescribeRequest),
    ("agent", f"/{HEALTH_SERVICE}/Check", "unary", health_pb2.HealthCheckRequest),
    ("agent", f"/{HEALTH_SERVICE}/Watch", "stream", health_pb2.HealthCheckRequest),
    ("broker", f"/{BUS}/Publish", "unary", events_pb2.PublishRequest),
    ("broker", f"/{BUS}/PublishStream", "client-stream", events_pb2.PublishStreamRequest),
    ("broker", f"/{BUS}/Subscribe", "stream", events_pb2.SubscribeRequest),
    ("broker", f"/{HEALTH_SERVICE}/Check", "unary", health_pb2.HealthCheckRequest),
    ("broker", f"/{HEALTH_SERVICE}/Watch", "stream", health_pb2.HealthCheckRequest),
]


def _decodes(kind: type[Message], data: bytes) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


def _send_raw(served: Served, method: str, shape: str, data: list[bytes]) -> Answer:
    if shape == "unary":
        return _unary(served, method, data[0])[0]
    if shape == "stream":
        return _streamed(served, method, data[0], 1)[0]
    call: grpc.StreamUnaryMultiCallable[bytes, bytes] = served.channel.stream_unary(method)
    try:
        call(iter(data), timeout=10)
    except grpc.RpcError as error:
        return Answer.of(error)
    return Answer(grpc.StatusCode.OK)


@pytest.mark.parametrize(("server", "method", "shape", "kind"), RPCS, ids=[f"{r[0]}{r[1]}" for r in RPCS])
def test_bytes_on_every_rpc_get_invalid_argument_unless_they_decode(
    servers: Servers, server: str, method: str, shape: str, kind: type[Message]
) -> None:
    served = servers[server]
    mesh = HEALTH_SERVICE not in method  # grpc's own health servicer answers without the mesh's ErrorInfo

    @settings(ATTACK, max_examples=25)
    @given(data=st.lists(raw_bytes, min_size=1, max_size=3 if shape == "client-stream" else 1))
    def examples(data: list[bytes]) -> None:
        answer = _send_raw(served, method, shape, data)
        if all(_decodes(kind, each) for each in data):
            check_deliberate(answer, mesh=mesh)
        else:
            assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, f"undecodable bytes: {answer!r}"
            check_deliberate(answer, mesh=mesh)
        _still_well(served)

    _attack(served, examples, log_lines=LOG_LINES_BOUND)


@pytest.mark.parametrize("server", ["agent", "broker"])
def test_health_answers_any_service_name(servers: Servers, server: str) -> None:
    served = servers[server]
    check_request = health_pb2.HealthCheckRequest

    @settings(ATTACK, max_examples=40)
    @given(service=st.one_of(st.sampled_from(["", AGENT, BUS]), texts), watch=st.booleans())
    def examples(service: str, watch: bool) -> None:
        request = check_request(service=service).SerializeToString()
        if len(request) > SMALL_REQUEST:  # a service name of more than 64 KiB is a request too large
            if watch:
                answer, _ = _streamed(served, f"/{HEALTH_SERVICE}/Watch", request, 1)
            else:
                answer, _ = _unary(served, f"/{HEALTH_SERVICE}/Check", request)
            assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, answer
            check_deliberate(answer, mesh=True)
        elif watch:
            answer, replies = _streamed(served, f"/{HEALTH_SERVICE}/Watch", request, 1)
            assert answer.code == grpc.StatusCode.OK, answer
            assert replies, "Watch answers with the status at once"
        else:
            answer, _ = _unary(served, f"/{HEALTH_SERVICE}/Check", request)
            assert answer.code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), answer
            check_deliberate(answer, mesh=False)
        _still_well(served)

    _attack(served, examples)


def test_describe_answers_with_the_card(servers: Servers) -> None:
    agent = servers["agent"]
    answer, reply = _unary(agent, f"/{AGENT}/Describe", agent_pb2.DescribeRequest().SerializeToString())
    assert answer.code == grpc.StatusCode.OK
    card = agent_pb2.DescribeResponse.FromString(reply).card
    assert {a.name for a in card.actions} == {"echo", "count"}


def test_publish_answers_any_event_with_a_deliberate_status(servers: Servers) -> None:
    broker = servers["broker"]

    @ATTACK
    @given(shown=events())
    def examples(shown: ShownEvent) -> None:
        event = shown.event
        request = _request(event)
        answer, _ = _unary(broker, f"/{BUS}/Publish", request)
        check_deliberate(answer, request_bytes=len(request))
        if answer.code == grpc.StatusCode.OK:
            assert not _long_fields(event.message), f"accepted {_long_fields(event.message)}"
            assert event.message.ttl_ms <= DAY_MS, f"accepted a ttl_ms of {event.message.ttl_ms}"
        _still_well(broker)

    _attack(broker, examples)


def test_publish_stream_answers_any_events_and_logs_its_refusals_once_per_burst(servers: Servers) -> None:
    broker = servers["broker"]

    @settings(ATTACK, max_examples=25)
    @given(batches=st.lists(st.lists(events(small_payloads), max_size=3), min_size=1, max_size=3))
    def examples(batches: list[list[ShownEvent]]) -> None:
        # PublishStreamRequest.events is field 1, repeated: its encoding is each event's in turn.
        requests = [b"".join(_request(shown.event) for shown in batch) for batch in batches]
        call: grpc.StreamUnaryMultiCallable[bytes, bytes] = broker.channel.stream_unary(f"/{BUS}/PublishStream")
        try:
            reply = events_pb2.PublishStreamResponse.FromString(call(iter(requests), timeout=10))
        except grpc.RpcError as error:
            check_deliberate(Answer.of(error), request_bytes=max(len(r) for r in requests))
        else:
            assert reply.accepted <= sum(len(batch) for batch in batches)
        _still_well(broker)

    _attack(broker, examples, log_lines=LOG_LINES_BOUND)


def test_subscribe_answers_any_pattern_and_queue_with_a_deliberate_status(servers: Servers) -> None:
    broker = servers["broker"]

    @ATTACK
    @given(pattern=subjects, queue=st.one_of(st.just(""), texts))
    def examples(pattern: str, queue: str) -> None:
        request = events_pb2.SubscribeRequest(pattern=pattern, queue=queue).SerializeToString()
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = broker.channel.unary_stream(f"/{BUS}/Subscribe")
        responses = call(request, timeout=10)
        responses.initial_metadata()  # sent once the subscription is in place, or with the refusal
        assert isinstance(responses, grpc.Future)
        if responses.done():
            try:
                next(iter(responses))
            except grpc.RpcError as error:
                check_deliberate(Answer.of(error))
            except StopIteration:
                pass
        else:
            responses.cancel()
        _still_well(broker)

    _attack(broker, examples)


def test_servers_ran_the_whole_module_without_a_restart_and_hold_little_more_memory(servers: Servers) -> None:
    """Run last: after every attack above, both servers are the processes first started, and hold at
    most twice the per-test bound more than once warmed up (their memory is not a slow leak)."""
    for served in servers.values():
        assert served.process.poll() is None, f"the {served.kind} exited"
        _still_well(served)
        bound = served.baseline + 2 * MEMORY_BOUND
        after = served.wait_for_rss_below(bound)
        assert after <= bound, (
            f"the {served.kind} holds {(after - served.baseline) / 2**20:.0f} MiB more than when it started "
            f"({served.baseline / 2**20:.0f} -> {after / 2**20:.0f} MiB)"
        )
