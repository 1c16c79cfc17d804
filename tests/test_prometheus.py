"""Prometheus on real /metrics pages: delegations by target and code, quantiles, error rate, the mesh's sum.

The agents run in this process, so they share one prometheus-client registry: every endpoint
serves the same page, and each agent whose metrics are read has a name no other test uses, so
that its series start at zero. That the summary takes only the asked agent's series is what makes the mesh's sum right.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agents.histogram import histogram_quantile
from agents.prometheus import NO_EVENTS, Prometheus
from agents.scrape import Summary
from kosmos_grpc import (
    AgentUnavailable,
    ConfigError,
    InvalidEnvelope,
    KosmosError,
    NotFound,
    ResiliencePolicy,
)
from kosmos_grpc.resilience import BreakerPolicy, RetryPolicy
from kosmos_grpc.telemetry.metrics import MetricsEndpoint, serve_metrics
from tests.helpers.agents import Echo, Forward, Probe
from tests.helpers.bus_mesh import BusMesh

from .conftest import free_port

INF = math.inf


def test_quantiles_interpolate_within_the_bucket_holding_the_rank() -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, INF: 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)  # rank 20: half-way through (0.1, 0.5]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.9)  # rank 38: 8 of the 10 in (0.5, 1]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.98)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # the first bucket starts at 0
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.02)  # rank 2: a fifth of (0, 0.1]
    assert histogram_quantile(0.0, buckets) == 0.0


def test_a_rank_past_every_finite_bucket_is_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.95, {0.1: 5.0, 0.25: 5.0, INF: 10.0}) == 0.25


def test_quantiles_of_nothing_are_none() -> None:
    assert histogram_quantile(0.5, {0.1: 0.0, INF: 0.0}) is None, "no observations"
    assert histogram_quantile(0.5, {0.1: 3.0, 1.0: 4.0}) is None, "no +Inf bucket"
    assert histogram_quantile(0.5, {INF: 4.0}) is None, "a single bucket"
    assert histogram_quantile(0.5, {}) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, {0.1: 1.0, INF: 1.0})


def test_counts_that_dip_are_made_cumulative_and_series_are_summed_before_the_quantile() -> None:
    assert histogram_quantile(0.5, {0.1: 10.0, 0.5: 8.0, INF: 10.0}) == pytest.approx(0.05)
    fast, slow = Summary(), Summary()
    fast.buckets = {0.01: 9.0, 0.1: 10.0, 1.0: 10.0, INF: 10.0}
    slow.buckets = {0.01: 0.0, 0.1: 0.0, 1.0: 10.0, INF: 10.0}
    fast.add(slow)
    assert fast.buckets == {0.01: 9.0, 0.1: 10.0, 1.0: 20.0, INF: 20.0}
    # rank 19 of 20: 9 of the 10 slow ones in (0.1, 1]
    assert fast.result("mesh")["latency_seconds"]["p95"] == pytest.approx(0.1 + 0.9 * 0.9)


def test_settings_have_defaults_and_bounds() -> None:
    assert Prometheus.checked_settings({}) == {
        "scrape_timeout_seconds": 2.0,
        "scrape_max_bytes": 4 * 1024 * 1024,
        "health_timeout_seconds": 1.0,
        "describe_timeout_seconds": 1.0,
    }
    with pytest.raises(ConfigError, match=r"agents\.prometheus\.settings\.scrape_max_bytes"):
        Prometheus.checked_settings({"scrape_max_bytes": 10})


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[str, str]]:
    """Two real /metrics endpoints of this process (the same registry behind both)."""
    endpoints: list[MetricsEndpoint] = [serve_metrics("127.0.0.1", 0) for _ in range(2)]
    try:
        yield endpoints[0].url, endpoints[1].url
    finally:
        for endpoint in endpoints:
            endpoint.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[BusMesh]:
    mesh = BusMesh(tmp_path)
    await mesh.start()
    try:
        await mesh.serve(Echo())
        yield mesh
    finally:
        await mesh.close()


def caller(name: str) -> Forward:
    """A Forward agent under a name of its own (its delegation series are new)."""
    return type(name.title(), (Forward,), {"name": name})()  # type: ignore[no-any-return]


async def metrics(mesh: BusMesh, **payload: Any) -> dict[str, Any]:
    response = await mesh.client().delegate("prometheus", "get_metrics", payload, timeout_ms=10_000)
    result: dict[str, Any] = response.result
    return result


async def forward(mesh: BusMesh, via: str, action: str, payload: dict[str, Any] | None = None) -> None:
    await mesh.client(resilience=False).delegate(
        via, "forward", {"agent": "echo", "action": action, "payload": payload or {}}, timeout_ms=10_000
    )


async def test_one_service_its_delegations_by_target_and_code_quantiles_and_error_rate(
    mesh: BusMesh, pages: tuple[str, str]
) -> None:
    await mesh.serve(caller("scout"))
    await mesh.serve(caller("idle"))
    url = pages[0]
    await mesh.serve(Prometheus(), metrics={"scout": url, "idle": url})
    for _ in range(6):
        await forward(mesh, "scout", "echo")
    await asyncio.gather(*(forward(mesh, "scout", "sleep", {"ms": 150}) for _ in range(4)))
    for _ in range(2):
        with pytest.raises(KosmosError, match=r"echo\.boom failed"):
            await forward(mesh, "scout", "boom")

    result = await metrics(mesh, service="scout")
    assert result["service"] == "scout"
    assert result["delegations"] == [
        {"target": "echo", "action": "echo", "code": "OK", "count": 6},
        {"target": "echo", "action": "sleep", "code": "OK", "count": 4},
        {"target": "echo", "action": "boom", "code": "INTERNAL", "count": 2},
    ]
    assert (result["calls"], result["errors"]) == (12, 2)
    assert result["error_rate"] == pytest.approx(2 / 12)
    latency = result["latency_seconds"]
    # 8 quick calls, then 4 of at least 150 ms: the median is quick, the 99th percentile is not.
    assert latency["p50"] < 0.1 <= latency["p95"] <= latency["p99"] <= 30
    assert result["calls_in_flight"] == 0

    idle = await metrics(mesh, service="idle")  # the same page, its own series: it delegated nothing
    assert (idle["calls"], idle["delegations"], idle["error_rate"]) == (0, [], 0.0)
    assert idle["latency_seconds"] == {"p50": None, "p95": None, "p99": None}


async def test_calls_in_flight_are_the_agents_own(mesh: BusMesh, pages: tuple[str, str]) -> None:
    probe = Probe()
    await mesh.serve(probe)
    await mesh.serve(Prometheus(), metrics={"probe": pages[0]})
    held = asyncio.create_task(mesh.client().delegate("probe", "hang", {}, timeout_ms=10_000))
    try:
        await asyncio.wait_for(probe.started.wait(), 5)
        assert (await metrics(mesh, service="probe"))["calls_in_flight"] == 1
    finally:
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)


async def test_without_a_service_the_mesh_is_summed_each_delegation_once(mesh: BusMesh, pages: tuple[str, str]) -> None:
    for name in ("quick", "slow", "still"):
        await mesh.serve(caller(name))
    first, second = pages
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    await mesh.serve(Prometheus(), metrics={"quick": first, "slow": second, "still": first, "ghost": dead})
    await asyncio.gather(
        *(forward(mesh, "quick", "echo") for _ in range(5)),
        *(forward(mesh, "slow", "sleep", {"ms": 150}) for _ in range(5)),
    )
    mesh_wide = await metrics(mesh)
    assert mesh_wide["service"] == "mesh"
    assert mesh_wide["services"] == ["quick", "slow", "still"]
    assert [entry["service"] for entry in mesh_wide["unavailable"]] == ["ghost"]
    assert dead in mesh_wide["unavailable"][0]["error"]
    assert mesh_wide["delegations"] == [
        {"target": "echo", "action": "echo", "code": "OK", "count": 5},
        {"target": "echo", "action": "sleep", "code": "OK", "count": 5},
    ]
    assert (mesh_wide["calls"], mesh_wide["errors"], mesh_wide["error_rate"]) == (10, 0, 0.0)
    # The buckets are summed before the quantile: half the mesh's calls took 150 ms or more.
    assert mesh_wide["latency_seconds"]["p95"] >= 0.1 > (await metrics(mesh, service="quick"))["latency_seconds"]["p95"]


async def test_what_cannot_be_scraped_is_named(mesh: BusMesh, pages: tuple[str, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    await mesh.serve(Prometheus(), metrics={"ghost": dead, "echo": pages[0]})
    with pytest.raises(NotFound, match=r"payload\.service: no agent named 'hades'"):
        await metrics(mesh, service="hades")
    with pytest.raises(ConfigError, match=r"payload\.service: agent 'prometheus' has no metrics_port"):
        await metrics(mesh, service="prometheus")
    with pytest.raises(InvalidEnvelope, match=r"payload\.service"):
        await metrics(mesh, service="")
    # The endpoint's failure is not Prometheus's: a caller's breaker to Prometheus stays closed.
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(failure_threshold=2))
    client = mesh.client(resilience=policy)
    for _ in range(3):
        with pytest.raises(AgentUnavailable, match=f"cannot scrape {dead}"):
            await client.delegate("prometheus", "get_metrics", {"service": "ghost"}, timeout_ms=5_000)
    response = await client.delegate("prometheus", "get_metrics", {"service": "echo"}, timeout_ms=5_000)
    assert response.result["service"] == "echo"


@pytest.fixture
async def bad_pages() -> AsyncIterator[str]:
    """A real HTTP server whose pages are too large, not metrics, or too slow."""

    async def large(request: web.Request) -> web.Response:
        return web.Response(text="# a comment line of a metrics page\n" * 300)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>not metrics</html>\n")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="")

    app = web.Application()
    app.add_routes([web.get("/large", large), web.get("/garbage", garbage), web.get("/slow", slow)])
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_page_too_large_not_metrics_or_too_slow_is_unavailable(mesh: BusMesh, bad_pages: str) -> None:
    urls = {kind: f"{bad_pages}/{kind}" for kind in ("large", "garbage", "slow")}
    settings = {"scrape_max_bytes": 4096, "scrape_timeout_seconds": 0.3}
    await mesh.serve(Prometheus(), settings=settings, metrics=urls)
    with pytest.raises(AgentUnavailable, match=r"/large: the page is larger than 4,096 bytes"):
        await metrics(mesh, service="large")
    with pytest.raises(AgentUnavailable, match=r"/garbage: not a Prometheus text page"):
        await metrics(mesh, service="garbage")
    with pytest.raises(AgentUnavailable, match=r"/slow: no page within 0.3 s"):
        await metrics(mesh, service="slow")
    with pytest.raises(AgentUnavailable, match="no /metrics page could be scraped"):
        await metrics(mesh)


async def test_get_status_from_one_health_check_each_its_circuits_and_no_event_rates(mesh: BusMesh) -> None:
    mesh.registry.set("ghost", f"127.0.0.1:{free_port()}")  # nothing listens there
    policy = ResiliencePolicy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(failure_threshold=1))
    await mesh.serve(Forward(), resilience=policy)
    await mesh.serve(Prometheus())
    with pytest.raises(AgentUnavailable):
        await mesh.client(resilience=False).delegate("forward", "forward", {"agent": "ghost", "action": "x"})
    response = await mesh.client().delegate("prometheus", "get_status", {}, timeout_ms=5_000)
    reply = response.result
    assert reply["source"] == "prometheus"
    assert (reply["events"], reply["note"]) == ({}, NO_EVENTS)
    assert {name: entry["health"] for name, entry in reply["agents"].items()} == {
        "echo": "SERVING",
        "forward": "SERVING",
        "ghost": "UNREACHABLE",
        "prometheus": "SERVING",
    }
    assert all(entry["since"] is None for entry in reply["agents"].values())
    assert reply["agents"]["ghost"]["circuits"] == [{"caller": "forward", "state": "open", "failures": 1}]
    with pytest.raises(NotFound, match=r"payload\.agent"):
        await mesh.client().delegate("prometheus", "get_status", {"agent": "hades"})


async def test_prometheus_answers_get_status_in_apollos_place(mesh: BusMesh) -> None:
    mesh.registry.set("apollo", f"127.0.0.1:{free_port()}")  # Apollo is down
    await mesh.serve(Prometheus())
    client = mesh.client(resilience=ResiliencePolicy(fallbacks={"apollo": "prometheus"}))
    response = await client.delegate("apollo", "get_status", {"agent": "echo"}, timeout_ms=5_000)
    assert (response.agent, response.fallback_for) == ("prometheus", "apollo")
    assert response.result["agents"] == {"echo": {"health": "SERVING", "since": None, "circuits": []}}
    assert response.result["source"] == "prometheus"
