"""The mesh config file: what it accepts and how it says what is wrong."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import pytest

import agents.athena
from kosmos_grpc import ConfigError, ServerSettings, load_agent, load_config

ROOT = Path(__file__).resolve().parent.parent


_AGENT = "[agents.a]\nobject='m:C'\naddress='h:1'\n"


def test_the_shipped_config_loads_zeus_and_a_specialist() -> None:
    config = load_config(ROOT / "kosmos.toml")
    assert set(config.agents) == {"zeus", "athena", "dionysus"}
    assert config.limits.payload_limit == 4 * 1024 * 1024
    assert config.resilience.chain("athena") == ["athena", "dionysus"]
    assert config.agent("zeus").max_concurrency == 64
    agent = load_agent(config.agent("athena").object)
    assert isinstance(agent, agents.athena.Athena)
    assert {name for name, spec in agent.actions.items() if not spec.streaming} == {"retrieve_context", "search"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agents.a]\naddress = '127.0.0.1:0'\n", "agents.a needs 'object'"),
        ("[mesh]\n", "no [agents.<name>] tables"),
        ("[agents.a]\nobject = 'x:Y'\naddress = 5\n", "agents.a.address has the wrong type"),
        ("[agents.a\n", "cannot be read"),
        (
            "[agents.a]\nobject='m:C'\naddress='h:1'\n[mesh]\npayload_limit_bytes = 'big'\n",
            "mesh.payload_limit_bytes",
        ),
        (f"{_AGENT}fallback = 'nobody'\n", "agents.a.fallback 'nobody' is not another agent"),
        (f"{_AGENT}fallback = 'a'\n", "agents.a.fallback 'a' is not another agent"),
        (f"{_AGENT}[retry]\nattempts = 0\n", "retry.attempts must be at least 1, not 0"),
        (f"{_AGENT}[breaker]\nstatuses = ['SOMETIMES']\n", "breaker.statuses holds gRPC status names, not 'SOMETIMES'"),
        (f"{_AGENT}[breaker]\nstatuses = 'UNAVAILABLE'\n", "breaker.statuses has the wrong type (a string)"),
        (f"{_AGENT}[bus]\ndurable = ['a.>.b']\n", "bus.durable: pattern 'a.>.b' has '>' before its last token"),
        (f"{_AGENT}[bus]\nnats = 'http://h:4222'\n", "bus.nats must be a nats:// URL, not 'http://h:4222'"),
        ("[agents.a]\nobject = 'agents.athena'\naddress = 'h:1'\n", "agents.a.object must be 'module:Class', not"),
        (f"{_AGENT}restart = 'sometimes'\n", "agents.a.restart must be 'always', 'on-failure' or 'never'"),
        ("[agents.a]\nobject = 'm:C'\naddress = 'localhost'\n", "agents.a.address must be 'host:port' (127.0.0.1"),
        ("[agents.a]\nobject = 'm:C'\naddress = 'h:port'\n", "agents.a.address must be 'host:port'"),
        (f"{_AGENT}[bus]\naddress = '50050'\n", "bus.address must be 'host:port'"),
        (f"{_AGENT}[interceptors]\ninbound = ['nocolon']\n", "interceptors.inbound holds import paths"),
        (f"{_AGENT}[telemetry]\ngrpc_instrumentation = 1\n", "telemetry.grpc_instrumentation has the wrong type"),
        (f"{_AGENT}[agents.a.breaker]\nfailure_threshold = 'five'\n", "agents.a.breaker.failure_threshold"),
        (f"{_AGENT}max_concurrency = 'many'\n", "agents.a.max_concurrency has the wrong type"),
        (f"{_AGENT}max_concurrency = 0\n", "agents.a.max_concurrency must be at least 1, not 0"),
        (f"{_AGENT}queue_limit = -1\n", "agents.a.queue_limit must be at least 0, not -1"),
        (f"[mesh]\nidempotency_seconds = 0\n{_AGENT}", "mesh.idempotency_seconds must be above 0, not 0"),
        (f"[mesh]\nidempotency_seconds = nan\n{_AGENT}", "mesh.idempotency_seconds must be above 0, not nan"),
        (f"[mesh]\nidempotency_bytes = 0\n{_AGENT}", "mesh.idempotency_bytes must be at least 1, not 0"),
        (f"[mesh]\nlog_format = 'xml'\n{_AGENT}", "mesh.log_format must be 'text' or 'json', not 'xml'"),
        (f"[mesh]\nlog_format = 1\n{_AGENT}", "mesh.log_format has the wrong type"),
        (f"{_AGENT}metrics_port = 65536\n", "agents.a.metrics_port must be a port from 0 to 65535, not 65536"),
        (f"{_AGENT}metrics_port = -1\n", "agents.a.metrics_port must be a port from 0 to 65535, not -1"),
        (f"{_AGENT}metrics_port = '9464'\n", "agents.a.metrics_port has the wrong type"),
        (f"{_AGENT}[bus]\naddress = 'h:2'\nmetrics_port = 70000\n", "bus.metrics_port must be a port from 0 to"),
        (f"{_AGENT}[bus]\nnats = 'nats://h:4222'\nmetrics_port = 9463\n", "bus.metrics_port is for the embedded"),
    ],
)
def test_bad_config_is_reported_plainly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_config(path)
    assert str(path) in str(caught.value).split(":")[0], "each error starts with the file's path"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "should be 'module:Class'"),
        ("no_such_module:X", "cannot load"),
        ("json:dumps", "not a kosmos_grpc.Agent"),
    ],
)
def test_bad_agent_object_is_reported_plainly(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_agent(spec)


def test_config_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text("[agents.a]\nobject = 'm:C'\naddress = '127.0.0.1:0'\n")
    monkeypatch.setenv("KOSMOS_CONFIG", str(path))
    assert load_config().addresses() == {"a": "127.0.0.1:0"}


def test_the_envelope_bounds_of_the_mesh_reach_every_server(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        "[mesh]\nmax_ttl_ms = 5000\nmax_payload_values = 50\n[agents.a]\nobject = 'm:C'\naddress = '127.0.0.1:0'\n"
    )
    server = load_config(path).server("a")
    assert (server.max_ttl_ms, server.max_payload_values) == (5000, 50)
    defaults = ServerSettings()
    assert (defaults.max_ttl_ms, defaults.max_payload_values) == (86_400_000, 10_000)


def test_the_bus_section_names_the_broker_nats_and_the_durable_subjects(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        "[agents.a]\nobject = 'm:C'\naddress = '127.0.0.1:0'\n"
        "[bus]\naddress = '127.0.0.1:0'\nnats = 'nats://127.0.0.1:4222'\n"
        "durable = ['kosmos.events.audit.log', 'kosmos.commands.>']\nmax_deliveries = 7\ndelegation_events = false\n"
    )
    config = load_config(path)
    assert config.bus.broker_address() == "127.0.0.1:0"
    assert config.bus.nats_url == "nats://127.0.0.1:4222"
    assert config.bus.durable == ("kosmos.events.audit.log", "kosmos.commands.>")
    assert config.bus.max_deliveries == 7
    assert config.bus.delegation_events is False


def test_metrics_ports_are_per_agent_and_for_the_broker_and_optional(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(f"{_AGENT}metrics_port = 0\n[agents.b]\nobject='m:C'\naddress='h:2'\n[bus]\naddress = 'h:3'\n")
    config = load_config(path)
    assert (config.agent("a").metrics_port, config.agent("b").metrics_port) == (0, None)
    assert config.bus.metrics_port is None
    path.write_text(f"{_AGENT}[bus]\naddress = 'h:3'\nmetrics_port = 9463\n")
    assert load_config(path).bus.metrics_port == 9463
    shipped = load_config(ROOT / "kosmos.toml")
    ports = [agent.metrics_port for agent in shipped.agents.values()] + [shipped.bus.metrics_port]
    assert None not in ports
    assert len(set(ports)) == len(ports), "every process of the shipped mesh has a port of its own"


def test_bus_short_form_is_refused_with_the_table_form_to_write(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(f"bus = 'nats://127.0.0.1:4222'\n{_AGENT}")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f'{path}: bus = "nats://127.0.0.1:4222" at the top level is not a config form; '
        'write the [bus] table: [bus] nats = "nats://127.0.0.1:4222"'
    )
    path.write_text(f"{_AGENT}[bus]\nnats = 'nats://127.0.0.1:4222'\n")
    assert load_config(path).bus.nats_url == "nats://127.0.0.1:4222"


def test_bus_short_form_pasted_over_a_bus_table_says_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(f"bus = 'nats://127.0.0.1:4222'\n{_AGENT}[bus]\naddress = '127.0.0.1:50050'\n")
    with pytest.raises(ConfigError) as caught:  # TOML itself refuses a key that is a value and a table
        load_config(path)
    assert str(caught.value).startswith(f"config file {path} cannot be read: ")
    assert str(caught.value).endswith(
        '; `bus = ...` and the [bus] table clash: write nats = "nats://..." inside [bus] instead'
    )


def test_addresses_may_be_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text("[agents.a]\nobject = 'm:C'\naddress = '[::1]:0'\n")
    assert load_config(path).addresses() == {"a": "[::1]:0"}
    path.write_text("[agents.a]\nobject = 'm:C'\naddress = 'unix:/tmp/a'\n")  # what the mesh cannot hand on
    with pytest.raises(ConfigError, match=re.escape("agents.a.address must be 'host:port'")):
        load_config(path)


def test_resilience_comes_from_the_config_with_per_agent_overrides(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        "[retry]\nattempts = 4\ninitial_seconds = 0.5\n"
        "[breaker]\nfailure_threshold = 7\nstatuses = ['unavailable']\n"
        "[agents.a]\nobject='m:C'\naddress='h:1'\nfallback='b'\n"
        "[agents.a.retry]\nattempts = 1\n"
        "[agents.a.breaker]\nrecovery_timeout_seconds = 2\n"
        "[agents.b]\nobject='m:C'\naddress='h:2'\nfallback='a'\nmax_concurrency = 3\nqueue_limit = 0\n"
    )
    config = load_config(path)
    policy = config.resilience
    assert (policy.retry_for("b").attempts, policy.retry_for("b").initial) == (4, 0.5)
    assert (policy.retry_for("a").attempts, policy.retry_for("a").initial) == (1, 0.5)
    assert policy.breaker_for("a").recovery_timeout == 2
    assert policy.breaker_for("a").failure_threshold == 7
    assert policy.breaker_for("b").counted == {grpc.StatusCode.UNAVAILABLE}
    assert policy.chain("a") == ["a", "b"]
    assert policy.chain("b") == ["b", "a"]
    assert (config.agent("b").max_concurrency, config.agent("b").queue_limit) == (3, 0)


#: A config that is right, but for one key, at each level of the file.
UNKNOWN_KEYS = [
    (f"[mseh]\n{_AGENT}", "unknown key 'mseh' in the top level; did you mean 'mesh'?"),
    (f"[mesh]\ngrace_second = 1\n{_AGENT}", "unknown key 'grace_second' in [mesh]; did you mean 'grace_seconds'?"),
    (f"[bus]\nnat = 'nats://h:4222'\n{_AGENT}", "unknown key 'nat' in [bus]; did you mean 'nats'?"),
    (
        f"[telemetry]\ngrpc_instrumentaton = true\n{_AGENT}",
        "unknown key 'grpc_instrumentaton' in [telemetry]; did you mean 'grpc_instrumentation'?",
    ),
    (f"[retry]\nattempt = 2\n{_AGENT}", "unknown key 'attempt' in [retry]; did you mean 'attempts'?"),
    (
        f"[breaker]\nfailure_treshold = 2\n{_AGENT}",
        "unknown key 'failure_treshold' in [breaker]; did you mean 'failure_threshold'?",
    ),
    (f"[interceptors]\ninbund = []\n{_AGENT}", "unknown key 'inbund' in [interceptors]; did you mean 'inbound'?"),
    (
        "[agents.athena]\nobject='m:C'\naddress='h:1'\nfallbak = 'dionysus'\n",
        "unknown key 'fallbak' in [agents.athena]; did you mean 'fallback'?",
    ),
    (f"{_AGENT}[agents.a.retry]\nmax_second = 1\n", "unknown key 'max_second' in [agents.a.retry]; did you mean"),
    (
        f"{_AGENT}[agents.a.breaker]\nstatus = []\n",
        "unknown key 'status' in [agents.a.breaker]; did you mean 'statuses'?",
    ),
    (f"{_AGENT}[agents.a.retri]\n", "unknown key 'retri' in [agents.a]; did you mean 'retry'?"),
    (f"[mesh]\nzzz = 1\n{_AGENT}", "unknown key 'zzz' in [mesh] (known: payload_limit_bytes, grace_seconds,"),
]

#: A table where a value belongs, a value where a table belongs.
WRONG_SHAPES = [
    (f"mesh = 5\n{_AGENT}", "mesh is an integer; it should be a table ([mesh])"),
    (f"{_AGENT}[agents.a.fallback]\nname = 'b'\n", "agents.a.fallback is a table; it should be a string"),
    (f"{_AGENT}[mesh.grace_seconds]\n", "mesh.grace_seconds is a table; it should be a number"),
    (
        "[agents]\nathena = 'tests.helpers.toys:Athena'\n",
        "agents.athena is a string; it should be a table ([agents.athena])",
    ),
    ("[[agents]]\nobject='m:C'\n", "agents is an array; it should be a table ([agents])"),
    (f"[[bus]]\nnats = 'nats://h:4222'\n{_AGENT}", "bus is an array; it should be a table ([bus])"),
    (f"{_AGENT}retry = 3\n", "agents.a.retry is an integer; it should be a table ([agents.a.retry])"),
    (
        f"{_AGENT}[interceptors]\ninbound = 'm:f'\n",
        "interceptors.inbound has the wrong type (a string); it should be an array",
    ),
]


@pytest.mark.parametrize(("text", "message"), UNKNOWN_KEYS + WRONG_SHAPES)
def test_unknown_keys_and_wrong_shapes_are_one_line_naming_key_table_and_nearest(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_an_inline_table_is_a_table(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(f"retry = {{attempts = 2}}\n{_AGENT}breaker = {{failure_threshold = 9}}\n")
    policy = load_config(path).resilience
    assert (policy.retry_for("a").attempts, policy.breaker_for("a").failure_threshold) == (2, 9)


def test_the_file_read_without_a_path_is_logged_with_where_its_name_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "kosmos.toml").write_text(_AGENT)
    (tmp_path / "other.toml").write_text(_AGENT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KOSMOS_CONFIG", raising=False)
    with caplog.at_level(logging.INFO, logger="kosmos_grpc.config"):
        assert load_config().path == tmp_path.resolve() / "kosmos.toml"
        monkeypatch.setenv("KOSMOS_CONFIG", "other.toml")
        assert load_config().path == tmp_path.resolve() / "other.toml"
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.INFO, f"config: {tmp_path.resolve() / 'kosmos.toml'} (the default ./kosmos.toml)"),
        (logging.INFO, f"config: {tmp_path.resolve() / 'other.toml'} (from $KOSMOS_CONFIG)"),
    ]


def test_a_missing_file_is_one_line_saying_where_it_looked_and_how_to_choose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KOSMOS_CONFIG", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(caught.value) == (
        f"config file {tmp_path / 'kosmos.toml'} not found (the default ./kosmos.toml); "
        "choose one with --config FILE or $KOSMOS_CONFIG"
    )
    monkeypatch.setenv("KOSMOS_CONFIG", "gone.toml")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'gone.toml'} not found (from $KOSMOS_CONFIG); ")):
        load_config()
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'given.toml'} not found (given); ")):
        load_config("given.toml")
