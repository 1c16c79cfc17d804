"""Prometheus metrics: every process serves /metrics where the config says, counting what it did."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from kosmos_grpc.resilience import Resilience, ResiliencePolicy, RetryPolicy
from kosmos_grpc.telemetry.metrics import serve_metrics
from tests.helpers.agents import Echo

from .conftest import Mesh, Processes, free_port, tool
from .test_cli import Lines, kosmos, write_config

if TYPE_CHECKING:
    from pathlib import Path

MESH = """
[mesh]
grace_seconds = 5

[bus]
address = "127.0.0.1:0"
metrics_port = {broker}

[agents.zeus]
object = "agents.zeus:Zeus"
address = "127.0.0.1:0"
metrics_port = {zeus}

[agents.athena]
object = "tests.helpers.toys:Athena"
address = "127.0.0.1:0"
metrics_port = {athena}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample at ``url``, parsed by prometheus-client: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_at_rest(url: str, agent: str, timeout: float = 5) -> Samples:
    """A scrape once ``agent`` holds no calls: the last reply may reach its caller just before the gauge drops."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        held = [value(samples, name, agent=agent) for name in ("kosmos_calls_in_flight", "kosmos_queue_depth")]
        if held == [0, 0] or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_up_serves_metrics_that_count_each_delegation(processes: Processes, tmp_path: Path) -> None:
    ports = {"zeus": free_port(), "athena": free_port(), "(broker)": free_port()}
    config = tmp_path / "kosmos.toml"
    config.write_text(MESH.format(zeus=ports["zeus"], athena=ports["athena"], broker=ports["(broker)"]))
    up = processes.start(tool("kosmos"), "--config", str(config), "up")
    lines = Lines(up).until("mesh up")
    header = next(i for i, line in enumerate(lines) if line.startswith("AGENT"))
    assert lines[header].split() == ["AGENT", "ADDRESS", "HEALTH", "PID", "METRICS"]
    rows = {row[0]: row for row in (line.split() for line in lines[header + 1 : -1])}
    for row in rows.values():
        processes.adopt(int(row[3]))
    urls = {name: row[4] for name, row in rows.items()}
    assert urls == {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}

    live = write_config(tmp_path / "live.toml", rows["zeus"][1], rows["athena"][1])
    for _ in range(3):
        ok = kosmos(live, "call", "zeus", "delegate", '{"agent":"athena","action":"answer","payload":{"topic":"grpc"}}')
        assert ok.returncode == 0, ok.stderr
    failed = kosmos(live, "call", "zeus", "delegate", '{"agent":"athena","action":"sing"}')
    assert failed.returncode == 1
    assert "kosmos: UNIMPLEMENTED" in failed.stderr

    zeus = scrape_at_rest(urls["zeus"], "zeus")
    answer = {"source": "zeus", "target": "athena", "action": "answer"}
    # An action that does not exist is counted under one label: a name in a payload cannot make series.
    unknown = {"source": "zeus", "target": "athena", "action": "_unknown", "code": "UNIMPLEMENTED"}
    assert value(zeus, "agent_delegation_total", **answer, code="OK") == 3
    assert value(zeus, "agent_delegation_total", **unknown) == 1
    assert value(zeus, "agent_delegation_errors_total", **unknown) == 1
    assert value(zeus, "agent_delegation_total", **{**unknown, "action": "sing"}) is None
    assert value(zeus, "agent_delegation_errors_total", **answer, code="OK") is None, "a success is no error"
    assert value(zeus, "agent_delegation_duration_seconds_count", **answer) == 3
    assert value(zeus, "agent_delegation_duration_seconds_bucket", **answer, le="+Inf") == 3
    assert value(zeus, "kosmos_calls_in_flight", agent="zeus") == 0
    assert value(zeus, "kosmos_queue_depth", agent="zeus") == 0
    # Zeus announced each of its four delegations on the bus: a request and an outcome.
    assert value(zeus, "nats_messages_published_total", backend="embedded", subject="kosmos.agents.athena") == 8

    athena = scrape_at_rest(urls["athena"], "athena")
    assert value(athena, "kosmos_calls_in_flight", agent="athena") == 0
    assert value(athena, "kosmos_queue_depth", agent="athena") == 0
    assert not [key for key in athena if key[0] == "agent_delegation_total"], "athena delegated nothing"
    assert "python_info" in {name for name, _ in scrape(urls["(broker)"])}, "the broker's process serves its own"


def test_serve_logs_where_its_metrics_are(processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "kosmos.toml")
    config.write_text(config.read_text() + f"metrics_port = {port}\n")  # the last table: athena's
    serve = processes.start(tool("kosmos"), "--config", str(config), "serve", "athena")
    assert serve.stderr is not None
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while f"athena metrics on {url}" not in serve.stderr.readline():
        assert serve.poll() is None, "kosmos serve exited"
        assert time.monotonic() < deadline, "no metrics line"
    assert ("kosmos_calls_in_flight", frozenset({("agent", "athena")})) in scrape(url)


def test_a_metrics_port_in_use_is_an_oserror_naming_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}: the address is in use"):
            serve_metrics("127.0.0.1", port)


def test_serve_on_a_taken_metrics_port_is_one_readable_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path / "kosmos.toml")
        config.write_text(config.read_text() + f"metrics_port = {port}\n")
        result = kosmos(config, "serve", "athena")
    assert result.returncode == 1
    needle = f"kosmos: cannot serve metrics on 127.0.0.1:{port}: the address is in use or not available"
    assert result.stderr.strip().splitlines()[-1] == needle
    assert "Traceback" not in result.stderr


def test_a_metrics_endpoint_on_port_zero_takes_a_free_port_and_closes() -> None:
    endpoint = serve_metrics("127.0.0.1", 0)
    try:
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert not endpoint.url.endswith(":0/metrics")
        assert "python_info" in {name for name, _ in scrape(endpoint.url)}
    finally:
        endpoint.close()
        endpoint.close()  # twice is harmless
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(endpoint.url, timeout=2)


async def test_a_fallback_is_counted_as_such_and_not_as_an_ok_of_the_agent_that_was_down(mesh: Mesh) -> None:
    mesh.registry.set("athena", f"127.0.0.1:{free_port()}")  # nothing listens there
    await mesh.serve(type("EchoAsDionysus", (Echo,), {"name": "dionysus"})())
    source = "fallback-counting"
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=2, initial=0.01, jitter=0), fallbacks={"athena": "dionysus"})
    async with mesh.client(source_agent=source, resilience=Resilience(policy, source=source)) as client:
        for _ in range(2):
            assert (await client.delegate("athena", "echo", {"q": 1})).agent == "dionysus"

    def counted(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"source": source, **labels})

    assert counted("kosmos_fallbacks_total", target="athena", fallback="dionysus") == 2
    athena, dionysus = {"target": "athena", "action": "echo"}, {"target": "dionysus", "action": "echo"}
    # Athena's calls failed, whoever answered in her place; Dionysus's answers are his own delegations.
    assert counted("agent_delegation_total", **athena, code="UNAVAILABLE") == 2
    assert counted("agent_delegation_errors_total", **athena, code="UNAVAILABLE") == 2
    assert counted("agent_delegation_total", **athena, code="OK") is None
    assert counted("agent_delegation_total", **dionysus, code="OK") == 2
    assert counted("agent_delegation_duration_seconds_count", **dionysus) == 2
