"""Prometheus, the metrics agent: each agent's delegations, latency quantiles and error rate, from its /metrics.

``get_metrics`` scrapes the page of one agent (``self.host.metrics``, filled from each agent's
``metrics_port``), or of every agent and sums them. It also answers ``get_status`` as Apollo
does, from one health check per agent, so that it can stand in for Apollo (the mesh's fallback
``apollo -> prometheus``); only the event rates, which need Apollo's subscription, are missing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from agents.health_watch import UNREACHABLE
from agents.mesh_status import (
    MAX_AGENTS,
    STATUS_SCHEMA,
    agent_entry,
    agents_asked,
    budget,
    circuits_towards,
    seconds_setting,
    status_reply,
)
from agents.scrape import MAX_PAGE_BYTES, Summary, fetch_page, parse_page, summarise
from kosmos_grpc import Agent, AgentUnavailable, ConfigError, Context, KosmosError, NotFound, action
from kosmos_grpc.errors import ORIGIN
from kosmos_grpc.quoting import clip, echo

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

__all__ = ["NO_EVENTS", "Prometheus"]

NO_EVENTS = "event rates are counted by Apollo; this is Prometheus's view, one health check an agent"

METRICS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "service": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "the agent whose /metrics to read (default: every agent's, summed)",
        }
    },
    "additionalProperties": False,
}


class Prometheus(Agent):
    """Metrics: each agent's delegations by target and code, latency p50/p95/p99 and error rate, or the mesh's."""

    name = "prometheus"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "scrape_timeout_seconds": seconds_setting(0.1, 60, 2.0, "how long one scrape of a /metrics page may take"),
            "scrape_max_bytes": {
                "type": "integer",
                "minimum": 1024,
                "maximum": 64 * 1024 * 1024,
                "default": MAX_PAGE_BYTES,
                "description": "the most bytes read of one /metrics page",
            },
            "health_timeout_seconds": seconds_setting(0.05, 30, 1.0, "how long each agent's health check may take"),
            "describe_timeout_seconds": seconds_setting(0.05, 30, 1.0, "how long each agent's Describe may take"),
        },
    }

    def __init__(self) -> None:
        self._http: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        # httpx logs every request at INFO: a line per scrape says nothing a failed scrape does not.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # trust_env=False: a proxy from the environment has no business between two loopback peers.
        self._http = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=32))

    async def on_stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @action(schema=METRICS_SCHEMA)
    async def get_metrics(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """One agent's delegations by target and code, latency quantiles and error rate (default: the mesh's)."""
        service = payload.get("service")
        names = self._scraped(service)
        metrics = self.host.metrics
        owners: dict[str, str] = {}
        for name in names:
            owners.setdefault(metrics[name], name)
        pages = await self._pages(owners, ctx)
        total = Summary()
        failed: list[AgentUnavailable] = []
        for name in names:
            page = pages[metrics[name]]
            if isinstance(page, AgentUnavailable):
                failed.append(page)
            else:
                total.add(summarise(page, name))
        if service is not None and failed:
            raise failed[0]
        if failed and len(failed) == len(names):
            why = clip(f"no /metrics page could be scraped: {failed[0].message}")
            raise AgentUnavailable(why, metadata=failed[0].metadata)
        result = total.result(service or "mesh")
        if service is None:
            result["services"] = [name for name in names if not isinstance(pages[metrics[name]], AgentUnavailable)]
            result["unavailable"] = [
                {"service": name, "error": page.message}
                for name in names
                if isinstance(page := pages[metrics[name]], AgentUnavailable)
            ]
        return result

    def _scraped(self, service: str | None) -> list[str]:
        """The agents whose pages a ``get_metrics`` for ``service`` reads (None: every agent with one).

        Raises:
            NotFound: no agent of that name serves metrics, nor is in the mesh.
            ConfigError: the agent serves no metrics, or none does.
        """
        metrics = self.host.metrics
        if service is None:
            if not metrics:
                raise ConfigError("no agent of the mesh has a metrics_port: there is no /metrics to scrape")
            return sorted(metrics)[:MAX_AGENTS]
        if service in metrics:
            return [service]
        if service in self.host.registry:
            raise ConfigError(
                f"payload.service: agent {echo(service)} has no metrics_port: it serves no /metrics",
                metadata={"field": "payload.service"},
            )
        known = clip(", ".join(sorted(metrics)) or "none", 300)
        raise NotFound(
            f"payload.service: no agent named {echo(service)} serves metrics (agents with metrics: {known})",
            metadata={"field": "payload.service"},
        )

    async def _pages(self, owners: dict[str, str], ctx: Context) -> dict[str, list[Sample] | AgentUnavailable]:
        """url -> the samples of its page worth keeping, or why it could not be had: each url
        scraped once, all at once (agents served in one process share a page)."""
        http = self._http
        if http is None:
            raise ConfigError("prometheus is not started: it has no HTTP client yet")
        settings = self.host.settings
        timeout = budget(ctx, settings["scrape_timeout_seconds"])

        async def one(url: str, owner: str) -> list[Sample] | AgentUnavailable:
            try:
                text = await fetch_page(http, url, owner, seconds=timeout, max_bytes=settings["scrape_max_bytes"])
                return await asyncio.to_thread(parse_page, text)
            except AgentUnavailable as exc:
                return exc
            except (ValueError, TypeError, IndexError, KeyError) as exc:  # the parser, on what is no metrics page
                why = clip(f"cannot scrape {url}: not a Prometheus text page ({exc})")
                return AgentUnavailable(why, metadata={ORIGIN: owner, "url": clip(url, 200)})

        urls = list(owners)
        found = await asyncio.gather(*(one(url, owners[url]) for url in urls))
        return dict(zip(urls, found, strict=True))

    @action(schema=STATUS_SCHEMA)
    async def get_status(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Apollo's get_status from one health check per agent (no history, no event rates): his stand-in."""
        registry = self.host.registry
        names = agents_asked(payload, registry)
        settings = self.host.settings
        client = self.host.client
        health_timeout = budget(ctx, settings["health_timeout_seconds"])

        async def health(name: str) -> str:
            try:
                return await client.health(name, timeout_ms=health_timeout * 1000)
            except KosmosError:
                return UNREACHABLE

        checks = asyncio.gather(*(health(name) for name in names))
        circuits = circuits_towards(
            client, sorted(registry)[:MAX_AGENTS], budget(ctx, settings["describe_timeout_seconds"])
        )
        statuses, towards = await asyncio.gather(checks, circuits)
        agents = {
            name: agent_entry(status, None, towards.get(name)) for name, status in zip(names, statuses, strict=True)
        }
        return status_reply(agents, {}, self.name, NO_EVENTS)
