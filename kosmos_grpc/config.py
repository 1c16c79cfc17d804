"""The mesh config file (``kosmos.toml``): each agent's implementation and address, and mesh limits."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT
from kosmos_grpc.errors import KosmosError
from kosmos_grpc.resilience import BreakerPolicy, ResiliencePolicy, RetryPolicy
from kosmos_grpc.subjects import pattern_tokens
from kosmos_grpc.telemetry.logs import LOG_FORMATS

if TYPE_CHECKING:
    from kosmos_grpc.agent import Agent

__all__ = ["AgentConfig", "ConfigError", "MeshConfig", "load_agent", "load_config"]

DEFAULT_CONFIG = "kosmos.toml"


class ConfigError(KosmosError):
    """The mesh config is missing or wrong."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CONFIG_INVALID"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One agent of the mesh: ``object`` is ``module:Class``, ``address`` is ``host:port``."""

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


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The whole mesh: its agents and the limits every server applies."""

    agents: dict[str, AgentConfig]
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    grace_seconds: float = 10.0
    max_concurrent_rpcs: int | None = 1024
    #: Where the embedded event broker listens (``[bus] address``), when the mesh has one.
    bus_address: str | None = None
    #: Where the broker's process serves Prometheus ``/metrics`` (``[bus] metrics_port``), on its host.
    bus_metrics_port: int | None = None
    #: Whether each delegation is announced on ``kosmos.agents.<agent>.requests|responses``.
    delegation_events: bool = True
    #: A NATS server's URL (``[bus] nats``): events go through NATS, the broker bridges to it.
    nats_url: str | None = None
    #: Subjects kept by JetStream when on NATS (``[bus] durable``), and how often a durable
    #: subscription's handler may fail on one event before it is dead-lettered.
    durable: tuple[str, ...] = ("kosmos.events.audit.log",)
    max_deliveries: int = 5
    #: Retry and breaker policies for calls to each agent, and the fallbacks.
    resilience: ResiliencePolicy = field(default_factory=ResiliencePolicy)
    #: How long, for how many calls and how many reply bytes at most, a server remembers
    #: executed message_ids.
    idempotency_seconds: float = 300.0
    idempotency_entries: int = 10_000
    idempotency_bytes: int = 64 * 1024 * 1024
    #: How the ``kosmos`` processes log (``[mesh] log_format``): "text", or "json" for a JSON object a line.
    log_format: str = "text"
    path: Path | None = field(default=None, compare=False)

    @property
    def has_bus(self) -> bool:
        """Whether the mesh has an event bus at all."""
        return self.bus_address is not None or self.nats_url is not None

    def bus(self) -> str:
        """The broker's address, or ConfigError saying the config names none."""
        if self.bus_address is None:
            raise ConfigError("the config has no [bus] address for the event broker")
        return self.bus_address

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
        )
    if not agents:
        raise ConfigError(f"{path}: no [agents.<name>] tables")
    kwargs: dict[str, Any] = {"resilience": _resilience(data, agents, path)}
    for key, attr, kind, minimum in (
        ("payload_limit_bytes", "payload_limit", int, 1),
        ("grace_seconds", "grace_seconds", (int, float), 0),
        ("max_concurrent_rpcs", "max_concurrent_rpcs", int, 1),
        ("idempotency_seconds", "idempotency_seconds", (int, float), 0),
        ("idempotency_entries", "idempotency_entries", int, 1),
        ("idempotency_bytes", "idempotency_bytes", int, 1),
    ):
        if key in mesh:
            kwargs[attr] = _at_least(
                _typed(mesh, key, kind, "mesh"), minimum, key, "mesh", above=key == "idempotency_seconds"
            )
    if "log_format" in mesh:
        log_format = _typed(mesh, "log_format", str, "mesh")
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"{path}: mesh.log_format must be 'text' or 'json', not {log_format!r}")
        kwargs["log_format"] = log_format
    bus = data.get("bus", {})
    if isinstance(bus, str):  # the short form: bus = "nats://host:port"
        if not bus.startswith(("nats://", "tls://")):
            raise ConfigError(f"{path}: bus = {bus!r} should be a nats:// URL, or a [bus] table")
        bus = {"nats": bus}
    if "address" in bus:
        kwargs["bus_address"] = _typed(bus, "address", str, "bus")
    if "nats" in bus:
        kwargs["nats_url"] = _typed(bus, "nats", str, "bus")
    if "metrics_port" in bus:
        if "address" not in bus:
            raise ConfigError(f"{path}: bus.metrics_port is for the embedded broker, which needs a bus.address")
        kwargs["bus_metrics_port"] = _port(bus, "metrics_port", "bus")
    if "durable" in bus:
        durable = _typed(bus, "durable", list, "bus")
        for subject in durable:
            if not isinstance(subject, str):
                raise ConfigError(f"{path}: bus.durable holds subjects (strings), not {subject!r}")
            pattern_tokens(subject)
        kwargs["durable"] = tuple(durable)
    if "max_deliveries" in bus:
        kwargs["max_deliveries"] = _typed(bus, "max_deliveries", int, "bus")
    if "delegation_events" in bus:
        kwargs["delegation_events"] = _typed(bus, "delegation_events", bool, "bus")
    return MeshConfig(agents=agents, path=path.resolve(), **kwargs)


def load_agent(spec: str, search_path: Path | None = None) -> Agent:
    """Import ``module:Class`` and instantiate it; the config's folder and cwd are importable."""
    from kosmos_grpc.agent import Agent

    for folder in (search_path, Path.cwd()):
        if folder is not None and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"object {spec!r} should be 'module:Class'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent object {spec!r}: {exc}") from None
    agent = target() if isinstance(target, type) else target
    if not isinstance(agent, Agent):
        raise ConfigError(f"{spec!r} is not a kosmos_grpc.Agent")
    return agent
