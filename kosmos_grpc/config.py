"""The mesh config file (``kosmos.toml``): each agent's implementation and address, and mesh limits."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT
from kosmos_grpc.errors import ConfigError
from kosmos_grpc.resilience import BreakerPolicy, ResiliencePolicy, RetryPolicy
from kosmos_grpc.subjects import pattern_tokens
from kosmos_grpc.telemetry.logs import LOG_FORMATS

__all__ = [
    "RESTART_POLICIES",
    "AgentConfig",
    "BusConfig",
    "Idempotency",
    "InterceptorsConfig",
    "MeshConfig",
    "MeshLimits",
    "ServerSettings",
    "TelemetryConfig",
    "load_config",
]

DEFAULT_CONFIG = "kosmos.toml"


@dataclass(frozen=True, slots=True)
class Idempotency:
    """How long, for how many calls and for how many reply bytes at most, a server remembers executed message_ids."""

    seconds: float = 300.0
    entries: int = 10_000
    bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How one agent is served: where, with which limits, and which of the mesh's concerns are on."""

    address: str = "127.0.0.1:0"
    #: The largest payload, in bytes, an envelope may carry.
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    #: How long a stop lets in-flight calls finish.
    grace_seconds: float = 10.0
    #: More RPCs at once are refused by gRPC itself (None: no limit).
    max_concurrent_rpcs: int | None = None
    #: Handlers run at once; more calls wait in a priority queue of ``queue_limit`` (None: no queue).
    max_concurrency: int | None = None
    queue_limit: int = 100
    #: The memory of executed message_ids, so a retry runs once (None: off).
    idempotency: Idempotency | None = field(default_factory=Idempotency)
    #: Whether the agent's delegations are announced on ``kosmos.agents.<agent>.requests|responses``.
    delegation_events: bool = True
    #: Whether its calls and delegations get spans and metrics.
    telemetry: bool = True


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One agent of the mesh (``[agents.<name>]``): ``object`` is ``module:Class``, ``address`` is ``host:port``."""

    name: str
    object: str
    address: str
    max_concurrent_rpcs: int | None = None
    #: Handlers run at once; more calls wait in a priority queue of ``queue_limit`` (None: no limit).
    max_concurrency: int | None = None
    queue_limit: int = 100
    #: The agent that answers in this one's place when it is unavailable or its circuit is open.
    fallback: str | None = None
    #: Where its process serves Prometheus ``/metrics``, on its address's host (0: a free port; None: nowhere).
    metrics_port: int | None = None
    #: When ``kosmos up`` restarts its process: "always", "on-failure" (a non-zero exit) or "never".
    restart: str = "on-failure"


#: The values of ``[agents.<name>] restart``.
RESTART_POLICIES = ("always", "on-failure", "never")


@dataclass(frozen=True, slots=True)
class MeshLimits:
    """``[mesh]``: the limits every server of the mesh applies."""

    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    grace_seconds: float = 10.0
    max_concurrent_rpcs: int | None = 1024
    idempotency: Idempotency = field(default_factory=Idempotency)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """``[bus]``: the embedded broker's address, or a NATS server, and what the bus carries."""

    #: Where the embedded event broker listens (``address``), when the mesh has one.
    address: str | None = None
    #: Where the broker's process serves Prometheus ``/metrics``, on its host.
    metrics_port: int | None = None
    #: A NATS server's URL (``nats``): events go through NATS, the broker bridges to it.
    nats_url: str | None = None
    #: Subjects kept by JetStream when on NATS, and how often a durable subscription's handler
    #: may fail on one event before it is dead-lettered.
    durable: tuple[str, ...] = ("kosmos.events.audit.log",)
    max_deliveries: int = 5
    #: Whether each delegation is announced on ``kosmos.agents.<agent>.requests|responses``.
    delegation_events: bool = True

    @property
    def configured(self) -> bool:
        """Whether the mesh has an event bus at all."""
        return self.address is not None or self.nats_url is not None

    def broker_address(self) -> str:
        """The embedded broker's address, or ConfigError saying the config names none."""
        if self.address is None:
            raise ConfigError("the config has no [bus] address for the event broker")
        return self.address


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """How the mesh's processes log (``[mesh] log_format``) and trace (``[telemetry]``)."""

    #: "text", or "json" for a JSON object a line.
    log_format: str = "text"
    #: Whether opentelemetry-instrumentation-grpc's interceptors go into every process too.
    grpc_instrumentation: bool = False


@dataclass(frozen=True, slots=True)
class InterceptorsConfig:
    """``[interceptors]``: import paths (``module:factory``) of the interceptors every agent adds to its chains."""

    inbound: tuple[str, ...] = ()
    outbound: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The whole mesh: its agents, the limits every server applies, the bus, telemetry and resilience."""

    agents: dict[str, AgentConfig]
    limits: MeshLimits = field(default_factory=MeshLimits)
    bus: BusConfig = field(default_factory=BusConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    #: Retry and breaker policies for calls to each agent, and the fallbacks.
    resilience: ResiliencePolicy = field(default_factory=ResiliencePolicy)
    interceptors: InterceptorsConfig = field(default_factory=InterceptorsConfig)
    path: Path | None = field(default=None, compare=False)

    def addresses(self) -> dict[str, str]:
        """Agent name -> address, the registry every process starts from."""
        return {name: agent.address for name, agent in self.agents.items()}

    def agent(self, name: str) -> AgentConfig:
        """One agent's config, or ConfigError naming the agents there are."""
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise ConfigError(f"no agent named {name!r} in the config (agents: {known})") from None

    def server(self, name: str) -> ServerSettings:
        """How agent ``name`` is served: its own settings over the mesh's limits."""
        agent, limits = self.agent(name), self.limits
        return ServerSettings(
            address=agent.address,
            payload_limit=limits.payload_limit,
            grace_seconds=limits.grace_seconds,
            max_concurrent_rpcs=agent.max_concurrent_rpcs or limits.max_concurrent_rpcs,
            max_concurrency=agent.max_concurrency,
            queue_limit=agent.queue_limit,
            idempotency=limits.idempotency,
            delegation_events=self.bus.delegation_events,
        )


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _optional(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    return _typed(table, key, kind, where) if key in table else None


def _at_least(value: Any, minimum: float, key: str, where: str, *, above: bool = False) -> Any:
    """``value`` when it is at least (or, with ``above``, above) ``minimum``, else ConfigError."""
    if value is not None and (not math.isfinite(value) or (value <= minimum if above else value < minimum)):
        bound = f"above {minimum}" if above else f"at least {minimum}"
        raise ConfigError(f"{where}.{key} must be {bound}, not {value}")
    return value


def _port(table: dict[str, Any], key: str, where: str) -> int | None:
    """``table[key]`` as a TCP port (0 picks a free one), None when absent, else ConfigError naming the key."""
    value: int | None = _optional(table, key, int, where)
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{where}.{key} must be a port from 0 to 65535, not {value}")
    return value


def _retry(table: dict[str, Any], where: str, base: RetryPolicy) -> RetryPolicy:
    values = {
        attr: _typed(table, key, kind, where)
        for key, attr, kind in (
            ("attempts", "attempts", int),
            ("initial_seconds", "initial", (int, float)),
            ("max_seconds", "maximum", (int, float)),
            ("jitter_seconds", "jitter", (int, float)),
        )
        if key in table
    }
    try:
        return dataclasses.replace(base, **values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _breaker(table: dict[str, Any], where: str, base: BreakerPolicy) -> BreakerPolicy:
    values: dict[str, Any] = {
        attr: _typed(table, key, kind, where)
        for key, attr, kind in (
            ("failure_threshold", "failure_threshold", int),
            ("recovery_timeout_seconds", "recovery_timeout", (int, float)),
            ("half_open_max_calls", "half_open_max_calls", int),
        )
        if key in table
    }
    if "statuses" in table:
        codes = []
        for name in _typed(table, "statuses", list, where):
            code = grpc.StatusCode.__members__.get(str(name).upper())
            if code is None:
                raise ConfigError(f"{where}.statuses: {name!r} is not a gRPC status name")
            codes.append(code)
        values["counted"] = frozenset(codes)
    try:
        return dataclasses.replace(base, **values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resilience(data: dict[str, Any], agents: dict[str, AgentConfig], path: Path) -> ResiliencePolicy:
    """``[retry]`` and ``[breaker]`` for every agent, ``[agents.<name>.retry|breaker]`` for one, and fallbacks."""
    tables = {key: _typed(data, key, dict, "config") if key in data else {} for key in ("retry", "breaker")}
    retry = _retry(tables["retry"], "retry", RetryPolicy())
    breaker = _breaker(tables["breaker"], "breaker", BreakerPolicy())
    retries, breakers, fallbacks = {}, {}, {}
    for name, table in data.get("agents", {}).items():
        where = f"agents.{name}"
        if "retry" in table:
            retries[name] = _retry(_typed(table, "retry", dict, where), f"{where}.retry", retry)
        if "breaker" in table:
            breakers[name] = _breaker(_typed(table, "breaker", dict, where), f"{where}.breaker", breaker)
        fallback = agents[name].fallback
        if fallback is not None:
            if fallback not in agents or fallback == name:
                raise ConfigError(f"{path}: agents.{name}.fallback {fallback!r} is not another agent of the mesh")
            fallbacks[name] = fallback
    return ResiliencePolicy(retry=retry, breaker=breaker, retries=retries, breakers=breakers, fallbacks=fallbacks)


def load_config(path: str | os.PathLike[str] | None = None) -> MeshConfig:
    """Read a mesh config: ``path``, else ``$KOSMOS_CONFIG``, else ``./kosmos.toml``."""
    path = Path(path or os.environ.get("KOSMOS_CONFIG") or DEFAULT_CONFIG)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    mesh = data.get("mesh", {})
    agents: dict[str, AgentConfig] = {}
    for name, table in data.get("agents", {}).items():
        where = f"agents.{name}"
        for key in ("object", "address"):
            if key not in table:
                raise ConfigError(f"{path}: {where} needs {key!r}")
        agents[name] = AgentConfig(
            name=name,
            object=_typed(table, "object", str, where),
            address=_typed(table, "address", str, where),
            max_concurrent_rpcs=_optional(table, "max_concurrent_rpcs", int, where),
            max_concurrency=_at_least(_optional(table, "max_concurrency", int, where), 1, "max_concurrency", where),
            queue_limit=_at_least(
                _typed(table, "queue_limit", int, where) if "queue_limit" in table else 100, 0, "queue_limit", where
            ),
            fallback=_optional(table, "fallback", str, where),
            metrics_port=_port(table, "metrics_port", where),
            restart=_restart(table, where),
        )
    if not agents:
        raise ConfigError(f"{path}: no [agents.<name>] tables")
    return MeshConfig(
        agents=agents,
        limits=_limits(mesh),
        bus=_bus(data.get("bus", {}), path),
        telemetry=_telemetry(mesh, _table(data, "telemetry"), path),
        resilience=_resilience(data, agents, path),
        interceptors=_interceptors(_table(data, "interceptors")),
        path=path.resolve(),
    )


def _restart(table: dict[str, Any], where: str) -> str:
    restart: str = _typed(table, "restart", str, where) if "restart" in table else "on-failure"
    if restart not in RESTART_POLICIES:
        raise ConfigError(f"{where}.restart must be 'always', 'on-failure' or 'never', not {restart!r}")
    return restart


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    table: dict[str, Any] = _typed(data, key, dict, "config") if key in data else {}
    return table


def _limits(mesh: dict[str, Any]) -> MeshLimits:
    values: dict[str, Any] = {}
    for key, kind, minimum in (
        ("payload_limit_bytes", int, 1),
        ("grace_seconds", (int, float), 0),
        ("max_concurrent_rpcs", int, 1),
        ("idempotency_seconds", (int, float), 0),
        ("idempotency_entries", int, 1),
        ("idempotency_bytes", int, 1),
    ):
        if key in mesh:
            values[key] = _at_least(
                _typed(mesh, key, kind, "mesh"), minimum, key, "mesh", above=key == "idempotency_seconds"
            )
    default = Idempotency()
    return MeshLimits(
        payload_limit=values.get("payload_limit_bytes", DEFAULT_PAYLOAD_LIMIT),
        grace_seconds=values.get("grace_seconds", 10.0),
        max_concurrent_rpcs=values.get("max_concurrent_rpcs", 1024),
        idempotency=Idempotency(
            seconds=values.get("idempotency_seconds", default.seconds),
            entries=values.get("idempotency_entries", default.entries),
            bytes=values.get("idempotency_bytes", default.bytes),
        ),
    )


def _bus(bus: dict[str, Any] | str, path: Path) -> BusConfig:
    if isinstance(bus, str):  # the short form: bus = "nats://host:port"
        if not bus.startswith(("nats://", "tls://")):
            raise ConfigError(f"{path}: bus = {bus!r} should be a nats:// URL, or a [bus] table")
        bus = {"nats": bus}
    values: dict[str, Any] = {}
    if "address" in bus:
        values["address"] = _typed(bus, "address", str, "bus")
    if "nats" in bus:
        values["nats_url"] = _typed(bus, "nats", str, "bus")
    if "metrics_port" in bus:
        if "address" not in bus:
            raise ConfigError(f"{path}: bus.metrics_port is for the embedded broker, which needs a bus.address")
        values["metrics_port"] = _port(bus, "metrics_port", "bus")
    if "durable" in bus:
        durable = _typed(bus, "durable", list, "bus")
        for subject in durable:
            if not isinstance(subject, str):
                raise ConfigError(f"{path}: bus.durable holds subjects (strings), not {subject!r}")
            pattern_tokens(subject)
        values["durable"] = tuple(durable)
    if "max_deliveries" in bus:
        values["max_deliveries"] = _typed(bus, "max_deliveries", int, "bus")
    if "delegation_events" in bus:
        values["delegation_events"] = _typed(bus, "delegation_events", bool, "bus")
    return BusConfig(**values)


def _telemetry(mesh: dict[str, Any], telemetry: dict[str, Any], path: Path) -> TelemetryConfig:
    values: dict[str, Any] = {}
    if "log_format" in mesh:
        log_format = _typed(mesh, "log_format", str, "mesh")
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"{path}: mesh.log_format must be 'text' or 'json', not {log_format!r}")
        values["log_format"] = log_format
    if "grpc_instrumentation" in telemetry:
        values["grpc_instrumentation"] = _typed(telemetry, "grpc_instrumentation", bool, "telemetry")
    return TelemetryConfig(**values)


def _interceptors(table: dict[str, Any]) -> InterceptorsConfig:
    values: dict[str, tuple[str, ...]] = {}
    for key in ("inbound", "outbound"):
        if key in table:
            paths = _typed(table, key, list, "interceptors")
            for spec in paths:
                if not isinstance(spec, str) or ":" not in spec:
                    raise ConfigError(f"interceptors.{key} holds import paths ('module:factory'), not {spec!r}")
            values[key] = tuple(paths)
    return InterceptorsConfig(**values)
