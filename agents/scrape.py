"""Scrapes an agent's ``/metrics`` page (bounded in time and bytes) and sums up what it says of its delegations.

A page is parsed by prometheus-client's own parser. Only the series of the agent asked about
are taken (``source`` of the delegation series, ``agent`` of the gauge): agents served in one
process share a page, and summing the mesh must count each delegation once.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agents.histogram import histogram_quantile
from kosmos_grpc import AgentUnavailable
from kosmos_grpc.errors import ORIGIN
from kosmos_grpc.quoting import clip
from kosmos_grpc.telemetry.metrics import OTHER_LABEL

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client.samples import Sample

__all__ = ["MAX_PAGE_BYTES", "MAX_ROWS", "Summary", "fetch_page", "parse_page", "summarise"]

#: The most bytes of a page read from a peer.
MAX_PAGE_BYTES = 4 * 1024 * 1024
#: The most (target, action, code) rows and histogram bounds kept from a page; past them rows are
#: counted under "other" (the mesh's labels are bounded already: this holds for any page).
MAX_ROWS = 1024
_MAX_BOUNDS = 64

DELEGATIONS = "agent_delegation_total"
BUCKETS = "agent_delegation_duration_seconds_bucket"
IN_FLIGHT = "kosmos_calls_in_flight"
_WANTED = frozenset((DELEGATIONS, BUCKETS, IN_FLIGHT))


@dataclass(slots=True)
class Summary:
    """What one or several pages say of their agents' delegations."""

    #: (target, action, code) -> delegations.
    delegations: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: Upper bound -> cumulative count of the duration histogram, summed over its series.
    buckets: dict[float, float] = field(default_factory=dict)
    calls_in_flight: float = 0.0

    def add(self, other: Summary) -> None:
        """Add ``other``'s counts to these (histogram buckets summed bound by bound)."""
        for key, count in other.delegations.items():
            self._count(key, count)
        for bound, cumulative in other.buckets.items():
            self._bucket(bound, cumulative)
        self.calls_in_flight += other.calls_in_flight

    def _count(self, key: tuple[str, str, str], count: float) -> None:
        if key not in self.delegations and len(self.delegations) >= MAX_ROWS:
            key = (OTHER_LABEL, OTHER_LABEL, key[2])
        self.delegations[key] += int(count)

    def _bucket(self, bound: float, count: float) -> None:
        if bound in self.buckets or len(self.buckets) < _MAX_BOUNDS:
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count

    def result(self, service: str) -> dict[str, Any]:
        """The reply of ``get_metrics`` for ``service`` (an agent's name, or "mesh")."""
        calls = sum(self.delegations.values())
        errors = sum(count for (_, _, code), count in self.delegations.items() if code != "OK")
        rows = sorted(self.delegations.items(), key=lambda item: (-item[1], item[0]))
        return {
            "service": service,
            "delegations": [
                {"target": target, "action": name, "code": code, "count": count} for (target, name, code), count in rows
            ],
            "latency_seconds": {
                label: histogram_quantile(q, self.buckets) for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
            "calls": calls,
            "errors": errors,
            "error_rate": errors / calls if calls else 0.0,
            "calls_in_flight": self.calls_in_flight,
        }


def parse_page(text: str) -> list[Sample]:
    """The samples of the page ``text`` that :func:`summarise` reads (blocking: run it in a thread).

    Raises:
        ValueError: ``text`` is not Prometheus's text format.
    """
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in _WANTED and math.isfinite(sample.value)
    ]


def summarise(samples: Iterable[Sample], agent: str) -> Summary:
    """What ``samples`` (of :func:`parse_page`) say of ``agent``'s delegations and calls in flight."""
    summary = Summary()
    for sample in samples:
        name, labels, value = sample.name, sample.labels, sample.value
        if name == IN_FLIGHT:
            if labels.get("agent") == agent:
                summary.calls_in_flight += value
        elif labels.get("source") != agent:
            continue
        elif name == DELEGATIONS:
            summary._count((labels.get("target", ""), labels.get("action", ""), labels.get("code", "")), value)
        else:
            bound = _bound(labels.get("le", ""))
            if bound is not None:
                summary._bucket(bound, value)
    return summary


def _bound(le: str) -> float | None:
    """A bucket's upper bound (``+Inf`` included); None for what is no number."""
    try:
        bound = float(le)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound


async def fetch_page(
    http: httpx.AsyncClient, url: str, owner: str, *, seconds: float, max_bytes: int = MAX_PAGE_BYTES
) -> str:
    """The page at ``url``, read within ``seconds`` seconds and ``max_bytes`` bytes (once decompressed).

    Raises:
        AgentUnavailable: naming ``url``: it cannot be reached, answers other than 200, is too
            slow or too large. Its origin is ``owner``, whose page it is: the caller's retries
            and breaker for this agent are not made to pay for another's endpoint.
    """

    def unavailable(why: str) -> AgentUnavailable:
        return AgentUnavailable(clip(f"cannot scrape {url}: {why}"), metadata={ORIGIN: owner, "url": clip(url, 200)})

    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):  # httpx's timeouts are per read: this bounds the whole scrape
            async with http.stream("GET", url, timeout=seconds) as response:
                if response.status_code != 200:
                    raise unavailable(f"HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise unavailable(f"the page is larger than {max_bytes:,} bytes")
                    chunks.append(chunk)
    except TimeoutError:
        raise unavailable(f"no page within {seconds:g} s") from None
    except httpx.HTTPError as exc:
        raise unavailable(f"{type(exc).__name__} {exc}".strip()) from None
    return b"".join(chunks).decode("utf-8", "replace")
