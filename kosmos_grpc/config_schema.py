"""Every table and key of ``kosmos.toml``, described once: the loader checks against it
(:mod:`kosmos_grpc.config_check`), the JSON Schema comes from it.

A new key is one ``Key`` in its table below (say, in ``AGENT``:
``"start_seconds": Key("number", "How long ...", minimum=0)``) plus the field of that name (or
``attr``) in the dataclass config.py builds from the table (``AgentConfig``), which then receives
it, checked; ``make schema`` rewrites ``kosmos.schema.json``, and ``make test`` fails until it does.
A new table is a ``Table`` in ``CONFIG.tables`` plus the lines in config.py that read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import grpc

from kosmos_grpc.envelope import ROUTE_LIMIT
from kosmos_grpc.telemetry.logs import LOG_FORMATS

__all__ = [
    "AGENT",
    "CONFIG",
    "RESTART_POLICIES",
    "STATUS_NAMES",
    "Key",
    "Table",
    "json_schema",
    "schema_text",
]

#: The values of ``[agents.<name>] restart``.
RESTART_POLICIES = ("always", "on-failure", "never")
#: What ``[breaker] statuses`` may hold: gRPC status names, in capitals or in lower case.
STATUS_NAMES = tuple(code.name for code in grpc.StatusCode) + tuple(code.name.lower() for code in grpc.StatusCode)


@dataclass(frozen=True, slots=True)
class Key:
    """One key holding a value: its JSON type, what it means, and the values it may take."""

    type: str
    description: str
    #: The dataclass field the value goes to (None: the key's own name).
    attr: str | None = None
    required: bool = False
    minimum: float | None = None
    #: The value must be above this (``minimum`` is inclusive, this is not).
    above: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    #: A regular expression a string must match (searched, as JSON Schema does).
    pattern: str | None = None
    #: For an array: the type of its items, and their enum or pattern.
    items: str | None = None
    #: How errors name an allowed value ("a port"), or for an array its items ("gRPC status names").
    noun: str | None = None


@dataclass(frozen=True, slots=True)
class Table:
    """A TOML table: its keys, its sub-tables, or (``each``) any number of named tables of one shape."""

    description: str
    keys: dict[str, Key] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    #: ``[agents.<name>]``: every key of this table is a name, and its value a table of this shape.
    each: Table | None = None
    min_tables: int = 0
    #: Any keys at all: whoever reads the table checks them (an agent its ``settings``).
    open: bool = False


def _retry(scope: str) -> Table:
    return Table(
        f"How calls to {scope} are retried: UNAVAILABLE, and RESOURCE_EXHAUSTED with a RetryInfo, only.",
        {
            "attempts": Key("integer", "Attempts in all, the first included.", minimum=1),
            "initial_seconds": Key("number", "The first backoff, doubled each retry.", "initial", minimum=0),
            "max_seconds": Key("number", "The longest backoff.", "maximum", minimum=0),
            "jitter_seconds": Key("number", "Up to this much more, at random, on each backoff.", "jitter", minimum=0),
            "attempt_timeout_seconds": Key(
                "number",
                "The longest one attempt may take (a unary answer, a stream's first chunk); then it counts as "
                "DEADLINE_EXCEEDED for the breaker and the fallback is tried. Each attempt also ends before the "
                "caller's deadline: at half the time left when a fallback follows, else at 95% of it.",
                "attempt_timeout",
                above=0,
            ),
        },
    )


def _breaker(scope: str) -> Table:
    return Table(
        f"When a caller's circuit to {scope} opens, and how it closes again.",
        {
            "failure_threshold": Key("integer", "Counted failures in a row that open the circuit.", minimum=1),
            "recovery_timeout_seconds": Key(
                "number", "How long the circuit stays open before it half-opens.", "recovery_timeout", minimum=0
            ),
            "half_open_max_calls": Key("integer", "Probe calls let through while half-open.", minimum=1),
            "statuses": Key(
                "array",
                "The gRPC statuses that count as failures.",
                "counted",
                items="string",
                enum=STATUS_NAMES,
                noun="gRPC status names",
            ),
        },
    )


def _port(description: str) -> Key:
    return Key("integer", description, minimum=0, maximum=65535, noun="a port")


_IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
# host:port: a name, an IPv4 address or a bracketed IPv6 one, and a port of 1 to 5 digits.
_ADDRESS = r"^([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"
_ADDRESS_NOUN = "'host:port' (127.0.0.1:50052; port 0 takes a free one)"

AGENT = Table(
    "One agent of the mesh: the object that implements it, where it listens, and how it is called and run.",
    {
        "object": Key(
            "string",
            "The agent's class, as module:Class (agents.athena:Athena).",
            required=True,
            pattern=_IMPORT_PATH,
            noun="'module:Class'",
        ),
        "address": Key(
            "string",
            "host:port the agent listens on (port 0: a free port).",
            required=True,
            pattern=_ADDRESS,
            noun=_ADDRESS_NOUN,
        ),
        "max_concurrent_rpcs": Key(
            "integer",
            "More calls at once are answered RESOURCE_EXHAUSTED (default: [mesh] max_concurrent_rpcs).",
            minimum=1,
        ),
        "max_concurrency": Key("integer", "Handlers run at once; more calls wait by priority.", minimum=1),
        "queue_limit": Key("integer", "Calls waiting at most; then the lowest priority is shed.", minimum=0),
        "fallback": Key("string", "The agent that answers in this one's place while it is down or its circuit open."),
        "metrics_port": _port("Where its process serves Prometheus /metrics, on its address's host (0: a free port)."),
        "restart": Key(
            "string",
            "When `kosmos up` restarts its process: always, on-failure (a non-zero exit) or never.",
            enum=RESTART_POLICIES,
        ),
    },
    {
        "retry": _retry("this agent (over [retry])"),
        "breaker": _breaker("this agent (over [breaker])"),
        "settings": Table(
            "The agent's own settings (Dionysus's llm_url, say), checked by its class's settings_schema when loaded.",
            open=True,
        ),
    },
)

CONFIG = Table(
    "A KOSMOS mesh: its agents, the limits every server applies, the event bus, telemetry and resilience.",
    tables={
        "mesh": Table(
            "The limits every server of the mesh applies, and how its processes log.",
            {
                "payload_limit_bytes": Key(
                    "integer", "The largest payload an envelope may carry.", "payload_limit", minimum=1
                ),
                "grace_seconds": Key("number", "How long a stop (SIGTERM) lets in-flight calls finish.", minimum=0),
                "max_concurrent_rpcs": Key(
                    "integer",
                    "More calls at once are answered RESOURCE_EXHAUSTED with a RetryInfo (CRITICAL ones: a reserve).",
                    minimum=1,
                ),
                "max_stream_seconds": Key("number", "The longest a stream may run, whatever its TTL.", above=0),
                "stream_idle_seconds": Key(
                    "number", "How long one write of a stream may wait for a client that reads nothing.", above=0
                ),
                "max_streams_per_connection": Key(
                    "integer",
                    "Streams one client connection may hold open at once (default: half the agent's slots).",
                    minimum=1,
                ),
                "max_streams_per_peer": Key(
                    "integer",
                    "Streams one client host may hold open at once, whatever its connections (default: no cap "
                    "of its own; on one machine every peer is 127.0.0.1).",
                    minimum=1,
                ),
                "max_open_stream_bytes": Key(
                    "integer",
                    "Bytes of requests a server's open streams may hold in all; more are refused with a RetryInfo.",
                    minimum=1,
                ),
                "idempotency_seconds": Key(
                    "number", "How long a server remembers executed message_ids, so a retry runs once.", above=0
                ),
                "idempotency_entries": Key(
                    "integer", "How many executed message_ids a server remembers at most.", minimum=1
                ),
                "idempotency_bytes": Key("integer", "How many bytes of replies that memory holds at most.", minimum=1),
                "max_payload_values": Key(
                    "integer",
                    "The most values (object members and array items, nested ones included) a payload may hold.",
                    minimum=1,
                ),
                "max_ttl_ms": Key("integer", "The longest ttl_ms an envelope may ask for (default 24 h).", minimum=1),
                "log_format": Key("string", "text, or json: a JSON object a line.", enum=LOG_FORMATS),
                "state_dir": Key(
                    "string",
                    "The folder of what agents keep (indexes, databases, the outbox, the Maildir), one sub-folder "
                    "each; relative to the working folder (default .kosmos).",
                    pattern=r"\S",
                    noun="a folder",
                ),
                "max_hops": Key(
                    "integer",
                    "Delegations in a row a call may have passed through (an agent delegating to itself, say); "
                    "a deeper call is refused with FAILED_PRECONDITION.",
                    minimum=1,
                    maximum=ROUTE_LIMIT,
                ),
            },
        ),
        "bus": Table(
            "The event bus: the embedded broker, or a NATS server, and what the bus carries.",
            {
                "address": Key(
                    "string",
                    "host:port of the embedded event broker (`kosmos broker`).",
                    pattern=_ADDRESS,
                    noun=_ADDRESS_NOUN,
                ),
                "metrics_port": _port("Where the broker serves Prometheus /metrics, on its address's host."),
                "nats": Key(
                    "string",
                    "A NATS server's URL: events go through NATS (with address too, the broker bridges to it).",
                    "nats_url",
                    pattern="^(nats|tls|ws|wss)://",
                    noun="a nats:// URL",
                ),
                "durable": Key(
                    "array",
                    "Subjects kept by JetStream when on NATS (patterns with * and >).",
                    items="string",
                    noun="subjects (strings)",
                ),
                "max_deliveries": Key(
                    "integer",
                    "How often a durable subscription may fail on one event before it is dead-lettered.",
                    minimum=1,
                ),
                "delegation_events": Key(
                    "boolean", "Whether each delegation is announced on kosmos.agents.<agent>.requests|responses."
                ),
                "subscriber_buffer_bytes": Key(
                    "integer",
                    "What the broker buffers for one subscriber, in bytes, before its newest events are dropped.",
                    minimum=1024,
                ),
                "subscriber_stall_seconds": Key(
                    "number",
                    "How long one write to a subscriber that does not read may wait before the broker cuts it off.",
                    above=0,
                ),
            },
        ),
        "telemetry": Table(
            "Tracing: what goes into every process's gRPC channels and servers.",
            {
                "grpc_instrumentation": Key(
                    "boolean", "Whether opentelemetry-instrumentation-grpc's interceptors go into every process too."
                ),
            },
        ),
        "retry": _retry("every agent"),
        "breaker": _breaker("every agent"),
        "interceptors": Table(
            "Import paths (module:factory) of the interceptors every agent adds to its chains.",
            {
                "inbound": Key(
                    "array",
                    "Around each call an agent serves.",
                    items="string",
                    pattern=_IMPORT_PATH,
                    noun="import paths ('module:factory')",
                ),
                "outbound": Key(
                    "array",
                    "Around each of an agent's own delegations.",
                    items="string",
                    pattern=_IMPORT_PATH,
                    noun="import paths ('module:factory')",
                ),
            },
        ),
        "agents": Table("The agents of the mesh, by name.", each=AGENT, min_tables=1),
    },
)


def _key_schema(key: Key) -> dict[str, Any]:
    out: dict[str, Any] = {"description": key.description, "type": key.type}
    scalar = out
    if key.items is not None:
        scalar = {"type": key.items}
        out["items"] = scalar
    if key.enum is not None:
        scalar["enum"] = list(key.enum)
    if key.pattern is not None:
        scalar["pattern"] = key.pattern
    for word, bound in (("minimum", key.minimum), ("exclusiveMinimum", key.above), ("maximum", key.maximum)):
        if bound is not None:
            scalar[word] = int(bound) if float(bound).is_integer() else bound
    return out


def _table_schema(table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {"description": table.description, "type": "object"}
    if table.open:
        return out
    if table.each is not None:
        out["additionalProperties"] = _table_schema(table.each)
        if table.min_tables:
            out["minProperties"] = table.min_tables
        return out
    properties = {name: _key_schema(key) for name, key in table.keys.items()}
    properties.update({name: _table_schema(sub) for name, sub in table.tables.items()})
    out["properties"] = properties
    required = [name for name, key in table.keys.items() if key.required]
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``kosmos.toml``, as ``kosmos.schema.json`` publishes it.

    It uses only keywords that mean the same in draft 7, the newest draft Taplo's validator reads.
    """
    schema = _table_schema(CONFIG)
    schema["required"] = ["agents"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kosmos.toml",
        **schema,
    }


def schema_text() -> str:
    """``json_schema()`` as the text of ``kosmos.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
