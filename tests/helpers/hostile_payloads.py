"""Hypothesis strategies for the seven agents' payloads: each field valid, odd, huge, deep or missing.

Each action's fields draw mostly valid values (so that the attack reaches the handler, not only
the schema), and now and then any JSON value (NaN, infinities, numbers past 2**53, odd unicode),
a huge string, a deep nest, or nothing at all; the values meant for each field are hostile too:
SQL that tries to write, escape or run away for Demeter, FTS5 syntax for Athena, header injection
for Hermes, URLs and addresses where Prometheus wants an agent's name.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from .hostile_inputs import Long, Nested

__all__ = [
    "ACTIONS",
    "ADDRESS_ATTACKS",
    "AGENT_NAMES",
    "EXPLICIT",
    "FTS_ATTACKS",
    "PAYLOADS",
    "REFERENCE_ATTACKS",
    "RUNAWAY_SQL",
    "SERVICE_ATTACKS",
    "SQL_ATTACKS",
    "STREAMED",
    "SUBJECT_ATTACKS",
    "json_values",
    "odd_text",
    "payload_of",
]

AGENT_NAMES = ("zeus", "athena", "dionysus", "hermes", "demeter", "apollo", "prometheus")

_ODD_PIECES = st.sampled_from(
    [
        *("\x00", "\r\n", "\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x1e", "\u202e", "\ufeff", "\U0001f600"),
        *("é", '"', "'", "%", "*", "\\", ";", "--", "\t", "\x7f", "\x1b[31m", "<", ">", "@", ",", ":", "\u0301"),
    ]
)
#: Short text, arbitrary or made of the pieces that break parsers, headers and terminals.
odd_text = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(_ODD_PIECES, st.text(max_size=4)), max_size=8).map("".join),
)
#: Long repetitive text, up to 1 MiB of characters (4 MiB of UTF-8 at most).
huge_text = st.builds(
    lambda piece, n: Long(piece * n),
    st.sampled_from(["x", "é", "\U0001f600", "\x00", "a ", "A. ", "\r\n", "%"]),
    st.sampled_from([2_001, 10_001, 100_001, 1 << 20]),
)
_numbers = st.one_of(
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, -0.0, 1e-300, 1e300, 2**53 + 1, math.nan, math.inf, -math.inf, 0.5]),
)
#: Any JSON value a Struct can carry, odd numbers and text included.
json_values = st.recursive(
    st.none() | st.booleans() | _numbers | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


def _nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"d": payload}
    return Nested(payload)


_deep = st.integers(20, 300).map(_nested)


@st.composite
def payload_of(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A payload for these fields: each mostly valid, else odd, huge, deep or left out; maybe a key too many."""
    payload: dict[str, Any] = {}
    for name, valid in fields.items():
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue
        if roll == 1:
            payload[name] = draw(json_values)
        elif roll == 2:
            payload[name] = draw(st.one_of(huge_text, _deep))
        else:
            payload[name] = draw(valid)
    if draw(st.integers(0, 9)) == 0:
        payload[draw(odd_text)] = draw(json_values)
    return payload


_k = st.one_of(st.integers(-3, 60), st.sampled_from([1, 5, 20, 50]))
#: FTS5's syntax, which Athena must read as words: quotes, NEAR, prefixes, column filters, operators.
FTS_ATTACKS = (
    *('"', '""', "NEAR(", "NEAR(a b, 0)", "*", "a*", "^title", "title:", "title: saga", "{title body}: x", "- x"),
    *("a OR", "AND", "NOT NOT", "(", ")", 'col:"x"', '"unterminated', "+", "a:b:c", "x'; DROP TABLE x; --"),
)
_FTS = st.sampled_from(FTS_ATTACKS)
_query = st.one_of(
    _FTS,
    st.text(min_size=1, max_size=200),
    st.lists(_FTS, min_size=1, max_size=10).map(" ".join),
    st.integers(1, 400).map(lambda n: " ".join(f"w{i}q" for i in range(n))[:2000]),
)
_QUERY = {"query": _query, "k": _k}

_RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
#: A query that runs until it is stopped.
RUNAWAY_SQL = f"{_RUNAWAY} SELECT count(*) FROM c"
#: SQL that writes, escapes the read-only file, loads code, or makes SQLite run or grow without end.
SQL_ATTACKS = tuple(
    [
        "SELECT 1",
        "SELECT region, orders, amount FROM sales_by_region ORDER BY amount DESC",
        "SELECT * FROM orders",
        "ATTACH DATABASE ':memory:' AS m",
        "ATTACH DATABASE '/tmp/kosmos-evil.db' AS m",
        "DETACH DATABASE reports",
        "PRAGMA writable_schema = ON",
        "PRAGMA query_only = OFF",
        "SELECT * FROM pragma_database_list",
        "SELECT load_extension('/tmp/evil')",
        "SELECT fts3_tokenizer('simple')",
        "SELECT zeroblob(1000000000)",
        "SELECT randomblob(1000000000)",
        "SELECT randomblob(100000000)",
        "SELECT randomblob(3000000)",
        "SELECT printf('%.*c', 1000000000, 'x')",
        "SELECT printf('%.*c', 2147483647, 'x')",
        "SELECT printf('%.1000000000c%.1000000000c', 'x', 'y')",
        "SELECT length(printf('%.*c', 4000000, 'x'))",
        "SELECT replace(zeroblob(4000000), x'00', 'xx')",
        "SELECT length(replace(printf('%.*c', 4000000, 'a'), 'a', 'aa'))",
        "SELECT instr(printf('%.*c', 4000000, 'a'), printf('%.*c', 2000000, 'a') || 'b')",
        "SELECT length(trim(printf('%.*c', 4000000, 'a'), printf('%.*c', 400000, 'b') || 'a'))",
        "SELECT printf('%.*c', 400000, 'a') LIKE '%' || printf('%.*c', 4000, 'a') || 'b'",
        "SELECT printf('%.*c', 400000, 'a') GLOB '*' || replace(printf('%.*c', 4000, 'x'), 'x', '[a]') || 'b'",
        RUNAWAY_SQL,
        f"{_RUNAWAY} SELECT x FROM c",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000), o(k, j) AS (SELECT"
        " json_group_object('k' || x, x), json_group_object('j' || x, x) FROM c) SELECT json_patch(k, j) FROM o",
        f"{_RUNAWAY} SELECT group_concat(x) FROM c",
        f"{_RUNAWAY} SELECT randomblob(1000000) FROM c ORDER BY random()",
        "INSERT INTO regions (name, timezone) VALUES ('Atlantis', 'UTC')",
        "DELETE FROM reports.stored_reports",
        "CREATE TEMP TABLE t (x)",
        "VACUUM INTO '/tmp/kosmos-copy.db'",
        "SELECT 1; SELECT 2",
        "SELECT ?",
        "SELECT :a, @b, $c",
        "SELECT ?999999",
        "SELECT CAST(x'ff' AS TEXT)",
        "SELECT abs(-9223372036854775808)",
        "SELECT 1e999, -1e999, 0.0 / 0, 9223372036854775807",
        "SELECT " + "(" * 1000 + "1" + ")" * 1000,
        "SELECT 1" + " UNION SELECT 1" * 600,
        ";",
        "-- nothing",
        "SELECT '\x00'",
    ]
)
_SQL = st.sampled_from(SQL_ATTACKS)
_scalar = st.one_of(st.none(), st.booleans(), _numbers, odd_text, huge_text)
_params = st.one_of(
    st.lists(_scalar, max_size=5),
    st.dictionaries(st.sampled_from(["a", "b", "c", "_", "x" * 64]), _scalar, max_size=3),
    st.lists(st.just(1), min_size=101, max_size=101),
)
_report_id = st.one_of(st.sampled_from(["rpt-1", "../../etc/passwd", "'; DROP TABLE reports; --", "x" * 101]), odd_text)

#: Addresses that carry a second recipient, a display name, a header of their own, or are no address.
ADDRESS_ATTACKS = (
    *("ops@example.com", "a@localhost", "a@b.c\r\nBcc: eve@example.org", "a@b.c, eve@example.org", "<a@b.c>"),
    *("Eve <eve@example.org>", '"a b"@example.com', "a@b.c\x00", "a@[127.0.0.1]", "a@-b.c", "@b.c", "a@", "a@b"),
    *("a" * 65 + "@b.c", "a@" + "b" * 254 + ".c", "é@example.com", "a@b.c\n", "a..b@c.d", "a@b.c\u2028"),
)
_ADDRESSES = st.sampled_from(ADDRESS_ATTACKS)
#: Subjects and Message-IDs that would end their header line early, or forge one.
SUBJECT_ATTACKS = ("Hello\r\nBcc: eve@example.org", "a\u2028b", "a\x85b", "a\u2029b", "=?utf-8?b?QmNjOiBldmU=?=", " ")
REFERENCE_ATTACKS = ("<a@b>", "<a@b>\r\nBcc: eve@example.org", "<a\x00@b>", "no-brackets@x", "<é@b>")
_to = st.one_of(
    _ADDRESSES, st.lists(_ADDRESSES, max_size=22), st.lists(st.just("x@example.com"), min_size=20, max_size=25)
)
_subject = st.one_of(
    st.sampled_from(["Hello", *SUBJECT_ATTACKS]),
    odd_text,
    st.sampled_from([Long("é" * 998), Long("x" * 999)]),
)
_body = st.one_of(
    st.sampled_from(["It works.", "\r\n.\r\nMAIL FROM:<eve@example.org>\r\n", "\x00\x01\x7f", "line\rline\nline"]),
    odd_text,
    huge_text,
)
_message_ref = st.one_of(st.sampled_from(REFERENCE_ATTACKS), odd_text)

_document = st.fixed_dictionaries(
    {"source": st.one_of(st.sampled_from(["README.md", "a#b"]), odd_text), "snippet": st.one_of(odd_text, huge_text)},
    optional={"title": odd_text, "score": _numbers, "extra": json_values},
)
_context = st.one_of(
    st.fixed_dictionaries({}, optional={"documents": st.lists(_document, max_size=5), "note": odd_text}),
    st.lists(
        st.fixed_dictionaries(
            {"source": st.just("s"), "snippet": st.just(Long("Sentences about a saga and its steps. " * 105))}
        ),
        min_size=50,
        max_size=50,
    ).map(lambda documents: {"documents": documents}),
)
_WRITE = {"instructions": st.one_of(odd_text, huge_text), "context": _context, "max_sentences": _k}
_status_agent = st.one_of(st.sampled_from([*AGENT_NAMES, "nobody", "127.0.0.1:22"]), odd_text)
#: What Prometheus may be asked to scrape instead of an agent: URLs, addresses, paths, names almost right.
SERVICE_ATTACKS = (
    *("http://169.254.169.254/latest/meta-data", "127.0.0.1:22", "localhost:9464", "http://127.0.0.1:9464/metrics"),
    *("file:///etc/passwd", "../../etc/passwd", "zeus\x00", "zeus/../athena", "ZEUS", " zeus", "zeus\r\nHost: x"),
)
_service = st.one_of(st.sampled_from([*AGENT_NAMES, *SERVICE_ATTACKS]), odd_text)

#: agent -> action -> the fields of its payload and the values meant for each.
PAYLOADS: dict[str, dict[str, dict[str, st.SearchStrategy[Any]]]] = {
    "athena": {"retrieve_context": _QUERY, "search": _QUERY},
    "dionysus": {"write": _WRITE, "stream_generate": _WRITE, "retrieve_context": _QUERY, "search": _QUERY},
    "hermes": {
        "send_email": {
            "to": _to,
            "subject": _subject,
            "body": _body,
            "reply_to": _ADDRESSES,
            "in_reply_to": _message_ref,
        }
    },
    "demeter": {
        "query_data": {"sql": st.one_of(_SQL, odd_text), "params": _params, "max_rows": _k},
        "describe_data": {},
        "store_report": {"title": st.one_of(odd_text, huge_text), "body": _body, "report_id": _report_id},
        "get_report": {"report_id": _report_id},
        "delete_report": {"report_id": _report_id},
    },
    "apollo": {"get_status": {"agent": _status_agent}},
    "prometheus": {"get_metrics": {"service": _service}, "get_status": {"agent": _status_agent}},
}
#: Every specialist's (agent, action), as Zeus's routing and broadcast are asked them.
_ROUTES = sorted((agent, action) for agent, actions in PAYLOADS.items() for action in actions)
_ACTION_NAMES = sorted({action for _, action in _ROUTES} | {"ask", "status", "broadcast", "publish_report"})


@st.composite
def _routed(draw: st.DrawFn) -> dict[str, Any]:
    """A delegate or relay payload: a real route (or an odd one), its inner payload hostile."""
    agent, action = draw(st.sampled_from(_ROUTES))
    inner = draw(payload_of(PAYLOADS[agent][action]))
    fields: dict[str, st.SearchStrategy[Any]] = {
        "agent": st.one_of(st.just(agent), st.sampled_from(AGENT_NAMES)),
        "action": st.one_of(st.just(action), st.sampled_from(_ACTION_NAMES)),
        "payload": st.just(inner),
    }
    return draw(payload_of(fields))


@st.composite
def _broadcast(draw: st.DrawFn) -> dict[str, Any]:
    agent, action = draw(st.sampled_from(_ROUTES))
    fields: dict[str, st.SearchStrategy[Any]] = {
        "action": st.one_of(st.just(action), st.sampled_from(_ACTION_NAMES), odd_text),
        "payload": payload_of(PAYLOADS[agent][action]),
        "timeout_ms": st.one_of(_numbers, st.sampled_from([1, 50, 500, 1500])),
    }
    return draw(payload_of(fields))


_topic = st.one_of(_query, st.sampled_from(["x\r\nBcc: eve@example.org", "a\u2028b", "\x00"]))
_REPORT = {"topic": _topic, "k": _k, "max_sentences": _k}
_ZEUS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "delegate": _routed(),
    "relay": _routed(),
    "ask": payload_of({"question": _topic, "email_to": _ADDRESSES, "k": _k}),
    "status": payload_of({"query": _query, "sql": st.one_of(_SQL, odd_text), "service": _service}),
    "generate_report": payload_of(_REPORT),
    "broadcast": _broadcast(),
    "publish_report": payload_of({**_REPORT, "email_to": _ADDRESSES}),
    "announce_report": payload_of(
        {"report_id": _report_id, "title": odd_text, "reason": st.one_of(odd_text, huge_text)}
    ),
    "retract_report": payload_of({"report_id": _report_id, "title": odd_text, "reason": odd_text}),
}

#: Every (agent, action) of the seven, and the payloads to attack it with.
ACTIONS: dict[tuple[str, str], st.SearchStrategy[dict[str, Any]]] = {
    **{("zeus", action): strategy for action, strategy in _ZEUS.items()},
    **{
        (agent, action): payload_of(fields) for agent, actions in PAYLOADS.items() for action, fields in actions.items()
    },
}
#: The actions that stream.
STREAMED = frozenset({("zeus", "relay"), ("zeus", "generate_report"), ("dionysus", "stream_generate")})


_EMAIL = {"to": "ops@example.com", "subject": "Hello", "body": "It works."}
#: Payloads every run tries first, whatever Hypothesis draws: each named attack in its field.
EXPLICIT: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("demeter", "query_data"): [{"sql": sql} for sql in SQL_ATTACKS],
    ("athena", "retrieve_context"): [{"query": query} for query in FTS_ATTACKS],
    ("athena", "search"): [{"query": query, "k": 50} for query in FTS_ATTACKS],
    ("hermes", "send_email"): [
        *({**_EMAIL, "to": to} for to in ADDRESS_ATTACKS),
        *({**_EMAIL, "reply_to": to} for to in ADDRESS_ATTACKS[2:8]),
        *({**_EMAIL, "subject": subject} for subject in SUBJECT_ATTACKS),
        *({**_EMAIL, "in_reply_to": reference} for reference in REFERENCE_ATTACKS),
        {**_EMAIL, "body": "\r\n.\r\nMAIL FROM:<eve@example.org>\r\nRCPT TO:<eve@example.org>\r\n"},
    ],
    ("prometheus", "get_metrics"): [{"service": service} for service in SERVICE_ATTACKS],
    ("zeus", "ask"): [
        *({"question": "What is a saga?", "email_to": to} for to in ADDRESS_ATTACKS[2:8]),
        *({"question": subject, "email_to": "ops@example.com"} for subject in SUBJECT_ATTACKS),
    ],
    ("zeus", "status"): [  # Demeter's own attack tries every SQL_ATTACKS: here, a few through Zeus
        {"sql": RUNAWAY_SQL, "query": '"', "service": "127.0.0.1:22"},
        *({"sql": sql} for sql in SQL_ATTACKS if "ATTACH" in sql or "printf" in sql),
    ],
    ("zeus", "broadcast"): [
        *({"action": action, "timeout_ms": ms} for action in _ACTION_NAMES for ms in (500,)),
        *({"action": "describe_data", "timeout_ms": ms} for ms in (math.nan, math.inf, 1e-300, 1, -1)),
        {"action": "query_data", "payload": {"sql": RUNAWAY_SQL}},
    ],
    ("zeus", "publish_report"): [{"topic": subject, "email_to": "ops@example.com"} for subject in SUBJECT_ATTACKS],
}
