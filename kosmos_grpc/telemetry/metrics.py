"""The mesh's Prometheus metrics: delegations by source, target, action and status; what agents hold.

Series are labelled by agent and action names, bounded by :mod:`kosmos_grpc.telemetry.labels`
(a name from a request is a label only when known). Gauges that read
a number the process keeps anyway (calls in flight, queue depth) are read when scraped, so the
hot path pays nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kosmos_grpc.telemetry.labels import OTHER_LABEL, UNKNOWN_LABEL, DelegationLabels

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Container
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "CALLS_IN_FLIGHT",
    "DELEGATIONS",
    "DELEGATION_ERRORS",
    "DELEGATION_SECONDS",
    "DURATION_BUCKETS",
    "FALLBACKS",
    "OTHER_LABEL",
    "QUEUE_DEPTH",
    "UNKNOWN_LABEL",
    "DelegationMetrics",
    "MetricsEndpoint",
    "serve_metrics",
    "watch",
]

#: From 1 ms to 30 s: a loopback hop is about half a millisecond, a deadline at most tens of seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DELEGATIONS = Counter(
    "agent_delegation_total", "Delegations made, by how they ended.", ("source", "target", "action", "code")
)
DELEGATION_SECONDS = Histogram(
    "agent_delegation_duration_seconds",
    "How long delegations took, retries included (a fallback's call is a delegation of its own).",
    ("source", "target", "action"),
    buckets=DURATION_BUCKETS,
)
DELEGATION_ERRORS = Counter(
    "agent_delegation_errors_total", "Delegations that failed, by status.", ("source", "target", "action", "code")
)
FALLBACKS = Counter(
    "kosmos_fallbacks_total",
    "Calls that went to a fallback because their target was unavailable or its circuit open.",
    ("source", "target", "fallback"),
)
CALLS_IN_FLIGHT = Gauge("kosmos_calls_in_flight", "Calls an agent is handling now.", ("agent",))
QUEUE_DEPTH = Gauge("kosmos_queue_depth", "Calls waiting in an agent's priority queue.", ("agent",))


# gauge name -> agent -> what each live server of that agent reads: a scrape shows their sum.
_WATCHED: dict[Gauge, dict[str, list[Callable[[], float]]]] = {}


def watch(gauge: Gauge, agent: str, read: Callable[[], float]) -> Callable[[], None]:
    """Have ``gauge{agent}`` show ``read()`` (summed over every server of ``agent`` in this process)
    whenever it is scraped; call what this returns when the server stops."""
    reads = _WATCHED.setdefault(gauge, {}).setdefault(agent, [])
    reads.append(read)
    gauge.labels(agent).set_function(lambda: sum(each() for each in reads))

    def unwatch() -> None:
        if read in reads:
            reads.remove(read)

    return unwatch


class DelegationMetrics:
    """One caller's delegation metrics, labelled as :class:`DelegationLabels` bounds them, each label
    set's series looked up once."""

    __slots__ = ("_series", "labels", "source")

    def __init__(self, source: str, known: Container[str] | None = None) -> None:
        self.source = source
        #: Which target and action names may label series (``known``: the agents of the registry).
        self.labels = DelegationLabels(known)
        # Keyed by label values, which are bounded: so is this.
        self._series: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def record(self, target: str, action: str, code: str, seconds: float) -> tuple[str, str]:
        """Count one delegation to ``target.action`` that ended with ``code`` after ``seconds``;
        the labels it was counted under."""
        labels = self.labels
        target = labels.agent(target)
        action = labels.action(target, action, code)
        key = (target, action, code)
        series = self._series.get(key)
        if series is None:
            names = (self.source, target, action, code)
            series = self._series[key] = (
                DELEGATIONS.labels(*names),
                DELEGATION_SECONDS.labels(self.source, target, action),
                None if code == "OK" else DELEGATION_ERRORS.labels(*names),
            )
        total, duration, errors = series
        total.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()
        return target, action


class MetricsEndpoint:
    """A running ``/metrics`` endpoint: where to scrape it, and :meth:`close` to stop it."""

    __slots__ = ("_server", "_thread", "url")

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread: threading.Thread | None = thread
        shown = f"[{host}]" if ":" in host else host
        #: ``http://host:port/metrics``, with the port the OS gave when 0 was asked for.
        self.url = f"http://{shown}:{server.server_port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port; waits at most ``timeout`` seconds for the thread."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        self._server.shutdown()  # returns once serve_forever has seen it, within its 0.5 s poll
        self._server.server_close()
        thread.join(timeout)


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Serve the default registry's metrics at ``http://host:port/metrics`` on a daemon thread.

    Port 0 takes a free port (the endpoint's ``url`` has the real one).

    Raises:
        OSError: ``host:port`` cannot be listened on (in use, or not this machine's).
    """
    host = host.strip("[]")
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        error = OSError(f"cannot serve metrics on {where}: the address is in use or not available")
        error.errno = exc.errno  # kept, but not in the message, which the CLI prints as it is
        raise error from None
    return MetricsEndpoint(server, thread, host)
