"""Every action of the seven agents attacked as a hostile client would: each answer OK or a deliberate status.

The seven and the event broker are served in this process (``tests.helpers.seven``), Athena on the
repository's ``corpus/`` and Prometheus reading a real ``/metrics`` page. Hypothesis sends each
action payloads whose every field may be any JSON value (NaN, infinities, numbers past 2**53),
odd unicode, a string of up to a megabyte, a deep nest, or missing, and values meant to hurt:
SQL that writes, attaches, loads extensions or runs away, FTS5 syntax, email headers injected,
URLs for an agent's name, Zeus's workflows with hostile inner values. Each answer must be OK or a
status someone chose (never INTERNAL or UNKNOWN), with the mesh's ErrorInfo, before the envelope's
deadline; after each action's attack no traceback was logged, and every agent still answers
SERVING and a normal call promptly. The examples are fixed (``derandomize``, no database).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import example, given, settings

from agents.demeter import Demeter
from agents.sql_guards import printf_units
from kosmos_grpc import InvalidEnvelope, new_message
from kosmos_grpc._proto.kosmos.v1 import envelope_pb2

from .helpers.hostile_checks import ATTACK as HOSTILE
from .helpers.hostile_checks import RECEIVE_LIMIT, error_info
from .helpers.hostile_payloads import ACTIONS, EXPLICIT, STREAMED
from .helpers.seven import NAMES, Reply, Seven

#: What an attacked action may answer: a decision, never a crash.
DELIBERATE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
#: The envelope's TTL of every attacking call: the deadline each answer must come by.
TTL_MS = 1000
#: How much later than its deadline an answer may come (a reply travelling, a thread handing it over).
LATE = 0.5
#: The longest status message a hostile payload may get back.
DETAILS_LIMIT = 1024

ATTACK = settings(HOSTILE, max_examples=50)


class Logged(logging.Handler):
    """The records at WARNING or above, and any with a traceback, that the agents logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        taken, self.records = self.records, []
        return taken


@pytest.fixture(scope="module")
def logged() -> Iterator[Logged]:
    handler = Logged()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def seven(tmp_path_factory: pytest.TempPathFactory, logged: Logged) -> Iterator[Seven]:
    with Seven(tmp_path_factory.mktemp("seven")) as mesh:
        yield mesh


def _still_well(seven: Seven) -> None:
    """Every agent SERVING, and normal calls answered within a second."""
    for name in NAMES:
        assert seven.serving(name), f"{name} is not SERVING"
    for agent, action, payload in (
        ("demeter", "query_data", {"sql": "SELECT 1"}),
        ("athena", "search", {"query": "saga"}),
        ("zeus", "delegate", {"agent": "dionysus", "action": "search", "payload": {"query": "x"}}),
    ):
        reply = seven.call(agent, action, payload, timeout=1)
        assert reply.answer.code == grpc.StatusCode.OK, f"{agent}.{action} after the attack: {reply.answer!r}"


def _no_traceback(logged: Logged) -> None:
    """No traceback nor error logged, and no warning by an agent: what is refused is no news to log."""
    bad = [
        r
        for r in logged.take()
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage() or r.name.startswith("agents.")
    ]
    shown = "\n".join(f"{r.name} {r.levelname}: {r.getMessage()[:300]}" for r in bad[:5])
    assert not bad, f"{len(bad)} errors logged during the attack:\n{shown}"


def _check(reply: Reply, request_bytes: int, what: str) -> None:
    """OK or a deliberate status carrying the mesh's ErrorInfo, short, and by the deadline."""
    answer = reply.answer
    assert reply.seconds <= TTL_MS / 1000 + LATE, f"{what}: answered after {reply.seconds:.2f} s: {answer!r}"
    assert answer.code in DELIBERATE, f"{what}: not a deliberate status: {answer!r}"
    if answer.code == grpc.StatusCode.OK:
        return
    assert len(answer.details) < DETAILS_LIMIT, f"{what}: a status message of {len(answer.details)} chars"
    if request_bytes > RECEIVE_LIMIT and answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return  # gRPC's own refusal of a message past the receive limit
    info = error_info(answer)
    assert info is not None, f"{what}: not the mesh's own answer: {answer!r}"
    assert info.domain == "kosmos", f"{what}: not the mesh's own answer: {answer!r}"


def _no_query_outlives_its_call(seven: Seven) -> None:
    """Demeter's queries of a call that has answered stop with it (polled, within LATE seconds)."""
    demeter = seven.servers["demeter"].agent
    assert isinstance(demeter, Demeter)
    until = time.monotonic() + LATE
    while demeter.queries_running and time.monotonic() < until:
        time.sleep(0.005)
    assert demeter.queries_running == 0, f"{demeter.queries_running} queries still run after their call answered"


def _size(payload: dict[str, Any]) -> int:
    try:
        return new_message("x", payload).ByteSize()
    except (ValueError, TypeError, OverflowError):
        return 0


@pytest.mark.parametrize(("agent", "action"), sorted(ACTIONS), ids=[f"{a}.{b}" for a, b in sorted(ACTIONS)])
def test_every_action_answers_hostile_payloads_with_a_deliberate_status(
    seven: Seven, logged: Logged, agent: str, action: str
) -> None:
    _still_well(seven)
    logged.take()
    streamed = (agent, action) in STREAMED

    def attack(payload: dict[str, Any]) -> None:
        if streamed:
            reply = seven.stream(agent, action, payload, timeout=TTL_MS / 1000 + 2 * LATE, ttl_ms=TTL_MS, most=100)
        else:
            reply = seven.call(agent, action, payload, timeout=TTL_MS / 1000 + 2 * LATE, ttl_ms=TTL_MS)
        _check(reply, _size(payload), f"{agent}.{action}")
        _no_query_outlives_its_call(seven)

    examples = given(payload=ACTIONS[agent, action])(attack)
    for payload in reversed(EXPLICIT.get((agent, action), [])):  # the named attacks, every run
        examples = example(payload=payload)(examples)
    ATTACK(examples)()
    _no_traceback(logged)
    _still_well(seven)


def test_a_lone_surrogate_cannot_be_sent_and_bad_utf8_is_refused_by_the_server(seven: Seven) -> None:
    # Protobuf strings are UTF-8: a client cannot even put a lone surrogate into one.
    with pytest.raises(UnicodeEncodeError):
        envelope_pb2.AgentMessage(action="\ud800")
    with pytest.raises(InvalidEnvelope, match="surrogates not allowed"):
        new_message("search", {"query": "\ud800"}, target_agent="athena")
    # Bytes that claim to be a string and are no UTF-8 (a surrogate's encoding) never reach a handler.
    valid = new_message("search", {"query": "zzz"}, target_agent="athena").SerializeToString()
    reply = seven.raw("athena", valid.replace(b"zzz", b"\xed\xa0\x80"))
    assert reply.answer.code == grpc.StatusCode.INVALID_ARGUMENT, reply.answer


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf, -1.0, 1e300])
def test_odd_numbers_where_a_count_is_wanted_are_refused_naming_the_field(seven: Seven, number: float) -> None:
    for agent, action, payload, field in (
        ("athena", "retrieve_context", {"query": "saga", "k": number}, "payload.k"),
        ("demeter", "query_data", {"sql": "SELECT 1", "max_rows": number}, "payload.max_rows"),
        ("dionysus", "write", {"instructions": "x", "max_sentences": number}, "payload.max_sentences"),
        # NaN passes a schema's bounds (no comparison holds for it): Zeus looks himself.
        ("zeus", "broadcast", {"action": "describe_data", "timeout_ms": number}, "payload.timeout_ms"),
    ):
        _refused(seven.call(agent, action, payload), grpc.StatusCode.INVALID_ARGUMENT, field)


def _refused(reply: Reply, code: grpc.StatusCode, field: str | None = None) -> str:
    """The status message of a refusal with ``code`` (naming ``field``, when given)."""
    assert reply.answer.code == code, reply.answer
    info = error_info(reply.answer)
    assert info is not None, reply.answer
    if field is not None:
        assert info.metadata.get("field") == field, reply.answer
    return reply.answer.details


# ---- Demeter: what SQLite cannot stop half-way is refused before it runs; all its memory is bounded

_A4M, _A2M = "printf('%.*c', 4000000, 'a')", "printf('%.*c', 2000000, 'a')"
#: Calls of one built-in each that ran for seconds to hours past any deadline, and what they
#: cost before the guards (measured on this machine, or scaled from a tenth of the size).
COSTLY = {
    "SELECT printf('%.*c', 1000000000, 'x')": "printf",  # 8.4 s, one character at a time
    "SELECT format('%.1000000000c%.1000000000c', 'x', 'y')": "format",
    f"SELECT instr({_A4M}, {_A2M} || 'b')": "instr",  # 97 s
    f"SELECT replace({_A4M}, {_A2M} || 'b', 'x')": "replace",  # as long
    f"SELECT trim({_A4M}, printf('%.*c', 400000, 'b') || 'a')": "trim",  # about an hour
    f"SELECT ltrim({_A4M}, printf('%.*c', 400000, 'b') || 'a')": "ltrim",
    # Two objects of 200,000 keys: 137 s, each key looked up by a scan of the other object.
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000),"
    " o(k, j) AS (SELECT json_group_object('k' || x, x), json_group_object('j' || x, x) FROM c)"
    " SELECT json_patch(k, j) FROM o": "json_patch",
}


@pytest.mark.parametrize("sql", sorted(COSTLY), ids=[COSTLY[sql] for sql in sorted(COSTLY)])
def test_a_builtin_call_sqlite_could_not_stop_is_refused_at_once(seven: Seven, sql: str) -> None:
    reply = seven.call("demeter", "query_data", {"sql": sql}, ttl_ms=5000)
    said = _refused(reply, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload.sql")
    assert f"one call of {COSTLY[sql]}()" in said
    assert reply.seconds < 1, f"refused after {reply.seconds:.2f} s"


def test_the_guarded_builtins_answer_as_sqlite_s_own(seven: Seven) -> None:
    sql = (
        "SELECT printf('%5.2f|%-4d|%s|%%|%,d|%.*c', 3.14159, 42, 'x', 1234567, 3, 'z'), format('%q', 'it''s'),"
        " instr('hello', 'l'), instr(x'0102', x'02'), instr(NULL, 'a'), instr(12345, 34), instr('abc', ''),"
        " replace('abcabc', 'b', 'XY'), trim('xxaxx', 'x'), ltrim('xxa', 'x'), rtrim('axx', 'x'), trim('  a  '),"
        f" length({_A4M}), length(replace(printf('%.*c', 1000000, 'a'), 'a', 'bb')),"
        """ json_patch('{"a": 1, "b": {"c": 2}}', '{"b": {"c": null, "d": 3}}')"""
    )
    rows = seven.call("demeter", "query_data", {"sql": sql}).result()["rows"]
    formatted, *found = rows[0]
    assert formatted == " 3.14|42  |x|%|1,234,567|zzz"
    assert found[:7] == ["it''s", 3, 2, None, 3, 1, "aXYcaXYc"]
    assert found[7:] == ["a", "a", "a", "a", 4_000_000, 2_000_000, '{"a":1,"b":{"d":3}}']


def test_like_and_glob_patterns_are_short_so_that_matching_stays_quick(seven: Seven) -> None:
    assert seven.call("demeter", "query_data", {"sql": "SELECT 'saga' LIKE '%ag%', 'saga' GLOB 's*a'"}).result()[
        "rows"
    ] == [[1, 1]]
    # 4,000 'a's against 400,000: 1.8 s for LIKE, 12 s for GLOB's classes, one step each.
    for sql in (
        "SELECT printf('%.*c', 400000, 'a') LIKE '%' || printf('%.*c', 4000, 'a') || 'b'",
        "SELECT printf('%.*c', 400000, 'a') GLOB '*' || replace(printf('%.*c', 4000, 'x'), 'x', '[a]') || 'b'",
    ):
        reply = seven.call("demeter", "query_data", {"sql": sql})
        assert "pattern too complex" in _refused(reply, grpc.StatusCode.INVALID_ARGUMENT, "payload.sql")
        assert reply.seconds < 1


@pytest.mark.parametrize(
    "sql",
    [
        # Sorted in memory, 1 MB a row, not spilled to a temporary file on disk (1 GB in 5 s before).
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT randomblob(1000000) FROM c"
        " ORDER BY random()",
        # json_group_array grows its text without SQLite's length limit: 150 MB in 5 s before.
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300)"
        " SELECT json_group_array(printf('%.*c', 1000000, 'x')) FROM c",
    ],
    ids=["sort", "json_group_array"],
)
def test_a_query_that_would_take_all_memory_is_resource_exhausted(seven: Seven, sql: str) -> None:
    reply = seven.call("demeter", "query_data", {"sql": sql}, ttl_ms=5000)
    assert "more memory than SQLite may take" in _refused(reply, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload.sql")
    assert seven.call("demeter", "query_data", {"sql": "SELECT 1"}).result()["rows"] == [[1]]


@pytest.mark.parametrize(
    ("format_args", "units"),
    [
        (["%d %s"], 0),
        (["%.*c", 5, "x"], 5),
        (["%*.*c|%10d", -7, "3e1", "x", 1], 20),  # '*' read in order, negative as its size, text by its number
        (["%.2f %.*c", 1e9, 4, "x"], 6),  # a big value that is no width is not counted
        (["%%%.*c", 9, "x"], 9),
        (["%Z %.*c", 10**9, "x"], 0),  # SQLite stops at a type it does not know
        (["%.*c", math.inf, "x"], 2**31),
        ([None], 0),
    ],
)
def test_printf_units_are_the_widths_and_precisions_asked(format_args: list[Any], units: int) -> None:
    assert printf_units(format_args) == units


# ---- Hermes: a subject or reference that would break or forge a header is the caller's mistake


@pytest.mark.parametrize("subject", ["a\u2028b", "a\u2029b", "a\x85b", "a\x9bb", "a\x0bb"])
def test_a_subject_holding_a_line_break_python_sees_is_invalid_argument(seven: Seven, subject: str) -> None:
    # \u2028, \u2029 and \x85 split lines for Python's email package: it raised ValueError (INTERNAL).
    reply = seven.call("hermes", "send_email", {"to": "ops@example.com", "subject": subject, "body": "b"})
    assert "line breaks" in _refused(reply, grpc.StatusCode.INVALID_ARGUMENT, "payload.subject")


@pytest.mark.parametrize("reference", ["<a\x00@b>", "<a\x01@b>", "<é@b>", "<a@b\x7f>", "<a\u2028@b>"])
def test_an_in_reply_to_that_is_no_printable_message_id_is_invalid_argument(seven: Seven, reference: str) -> None:
    # Was sent as it was: a NUL or a control character in the email's In-Reply-To and References.
    payload = {"to": "ops@example.com", "subject": "s", "body": "b", "in_reply_to": reference}
    _refused(seven.call("hermes", "send_email", payload), grpc.StatusCode.INVALID_ARGUMENT, "payload.in_reply_to")


# ---- Zeus: a question of several lines is emailed under a one-line subject; a broadcast too short is refused


@pytest.mark.parametrize("question", ["What is a saga?\r\nBcc: eve@example.org", "What\u2028is\x85a saga?\x00"])
def test_a_question_of_several_lines_is_emailed_under_one_line(seven: Seven, question: str) -> None:
    # Hermes refused the subject Zeus made of it (naming payload.subject, a field the caller never sent).
    answer = seven.call("zeus", "ask", {"question": question, "email_to": "ops@example.com"}).result()
    with Path(answer["email"]["path"]).open("rb") as file:
        email = BytesParser(policy=policy.default).parse(file)
    assert str(email["Subject"]).startswith("KOSMOS: What")
    assert "Bcc" not in email or "eve" not in str(email["Bcc"])
    assert not any(c in str(email["Subject"]) for c in "\r\n\u2028\x85\x00")
    published = seven.call("zeus", "publish_report", {"topic": question, "email_to": "ops@example.com"}).result()
    assert published["title"].startswith("Report: What")
    assert "\n" not in published["title"]


def test_a_broadcast_too_short_for_anyone_to_answer_asks_no_one_and_opens_no_circuit(seven: Seven) -> None:
    for timeout_ms in (1, math.nan):  # NaN passed the schema's bounds, and the library named "timeout_ms"
        _refused(
            seven.call("zeus", "broadcast", {"action": "describe_data", "timeout_ms": timeout_ms}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "payload.timeout_ms",
        )
    for _ in range(6):  # more than the breaker's 5 failures in a row
        reply = seven.call("zeus", "broadcast", {"action": "describe_data"}, ttl_ms=60)
        assert "no agent was asked" in _refused(reply, grpc.StatusCode.DEADLINE_EXCEEDED)
    gathered = seven.call("zeus", "broadcast", {"action": "describe_data"}).result()
    assert set(gathered["successes"]) == {"demeter"}, gathered["failures"]


def test_an_announcement_s_reason_is_bounded(seven: Seven) -> None:
    payload = {"report_id": "rpt-x", "reason": "r" * 1001}
    _refused(seven.call("zeus", "retract_report", payload), grpc.StatusCode.INVALID_ARGUMENT, "payload.reason")
