"""The mesh config file (``kosmos.toml``), read into dataclasses; what it may hold is described in config_schema."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kosmos_grpc.bounds import DEFAULT_MAX_PAYLOAD_VALUES, DEFAULT_MAX_TTL_MS
from kosmos_grpc.config_check import check
from kosmos_grpc.config_schema import AGENT, CONFIG, RESTART_POLICIES, Table
from kosmos_grpc.envelope import DEFAULT_MAX_HOPS, DEFAULT_PAYLOAD_LIMIT
from kosmos_grpc.errors import ConfigError, InvalidEnvelope
from kosmos_grpc.resilience import BreakerPolicy, ResiliencePolicy, RetryPolicy
from kosmos_grpc.subjects import pattern_tokens

__all__ = [
    "DEFAULT_STATE_DIR",
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

if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_CONFIG = "kosmos.toml"
DEFAULT_STATE_DIR = ".kosmos"
#: How :meth:`MeshConfig.open_addresses` names the embedded broker.
BROKER = "(broker)"
_log = logging.getLogger(__name__)


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
    #: The largest payload, in bytes, an envelope may carry, and the most values it may hold.
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    max_payload_values: int = DEFAULT_MAX_PAYLOAD_VALUES
    #: The longest ttl_ms an envelope may ask for.
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    #: How long a stop lets in-flight calls finish.
    grace_seconds: float = 10.0
    #: More calls at once are answered RESOURCE_EXHAUSTED with a RetryInfo, CRITICAL ones with a
    #: reserve of their own (None: no limit).
    max_concurrent_rpcs: int | None = None
    #: Handlers run at once; more calls wait in a priority queue of ``queue_limit`` (None: no queue).
    max_concurrency: int | None = None
    queue_limit: int = 100
    #: The longest a stream may run, and how long one of its writes may wait for a client that reads nothing.
    max_stream_seconds: float = 3600.0
    stream_idle_seconds: float = 30.0
    #: Streams one client connection may hold at once (None: half the agent's slots).
    max_streams_per_connection: int | None = None
    max_streams_per_peer: int | None = None
    #: Bytes of requests the open streams may hold in all (gRPC keeps each until done with it).
    max_open_stream_bytes: int = 64 * 1024 * 1024
    #: The memory of executed message_ids, so a retry runs once (None: off).
    idempotency: Idempotency | None = field(default_factory=Idempotency)
    #: Whether the agent's delegations are announced on ``kosmos.agents.<agent>.requests|responses``.
    delegation_events: bool = True
    #: Whether its calls and delegations get spans and metrics.
    telemetry: bool = True
    #: Delegations in a row a call may have passed through; a deeper one is refused (FAILED_PRECONDITION).
    max_hops: int = DEFAULT_MAX_HOPS


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
    #: ``[agents.<name>.settings]``: the agent's own, checked by its class's ``settings_schema``.
    settings: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class MeshLimits:
    """``[mesh]``: the limits every server of the mesh applies."""

    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    max_payload_values: int = DEFAULT_MAX_PAYLOAD_VALUES
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    grace_seconds: float = 10.0
    max_concurrent_rpcs: int | None = 1024
    max_stream_seconds: float = 3600.0
    stream_idle_seconds: float = 30.0
    max_streams_per_connection: int | None = None
    max_streams_per_peer: int | None = None
    max_open_stream_bytes: int = 64 * 1024 * 1024
    idempotency: Idempotency = field(default_factory=Idempotency)
    max_hops: int = DEFAULT_MAX_HOPS


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
    #: What the broker buffers for one subscriber (bytes), and how long one write to a subscriber
    #: that does not read may wait before the broker cuts it off (RESOURCE_EXHAUSTED).
    subscriber_buffer_bytes: int = 1024 * 1024
    subscriber_stall_seconds: float = 10.0

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
    #: ``[mesh] state_dir``: what agents keep, a sub-folder each (relative: to the working folder).
    state_dir: Path = Path(DEFAULT_STATE_DIR)
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

    def open_addresses(self, names: Iterable[str]) -> dict[str, str]:
        """Of agents ``names`` (and the broker, as ``(broker)``), those that would listen beyond this
        machine: who -> address (a host name other than localhost counts as beyond)."""
        wanted = {name: self.bus.address if name == BROKER else self.agent(name).address for name in names}
        return {who: address for who, address in wanted.items() if address and not _loopback(address)}

    def agent_state_dir(self, name: str) -> Path:
        """The folder agent ``name`` keeps its state in: its own under ``state_dir``, made absolute."""
        return (self.state_dir / name).absolute()

    def server(self, name: str) -> ServerSettings:
        """How agent ``name`` is served: its own settings over the mesh's limits."""
        agent, limits = self.agent(name), self.limits
        return ServerSettings(
            address=agent.address,
            payload_limit=limits.payload_limit,
            max_payload_values=limits.max_payload_values,
            max_ttl_ms=limits.max_ttl_ms,
            grace_seconds=limits.grace_seconds,
            max_concurrent_rpcs=agent.max_concurrent_rpcs or limits.max_concurrent_rpcs,
            max_concurrency=agent.max_concurrency,
            queue_limit=agent.queue_limit,
            idempotency=limits.idempotency,
            max_stream_seconds=limits.max_stream_seconds,
            stream_idle_seconds=limits.stream_idle_seconds,
            max_streams_per_connection=limits.max_streams_per_connection,
            max_streams_per_peer=limits.max_streams_per_peer,
            max_open_stream_bytes=limits.max_open_stream_bytes,
            delegation_events=self.bus.delegation_events,
            max_hops=limits.max_hops,
        )


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _values(data: dict[str, Any], table: Table) -> dict[str, Any]:
    """The values ``data`` sets (checked already), by the dataclass field each goes to; arrays as tuples."""
    return {
        key.attr or name: tuple(data[name]) if isinstance(data[name], list) else data[name]
        for name, key in table.keys.items()
        if name in data
    }


def _fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Those of ``values`` that are fields of dataclass ``cls``."""
    names = {item.name for item in dataclasses.fields(cls)}
    return {name: value for name, value in values.items() if name in names}


def _policy(base: Any, values: dict[str, Any], where: str) -> Any:
    """``base`` with ``values`` over it, or ConfigError with the policy's own reason (say, max below initial)."""
    if "counted" in values:
        values["counted"] = frozenset(grpc.StatusCode[name.upper()] for name in values["counted"])
    try:
        return dataclasses.replace(base, **values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resilience(data: dict[str, Any], agents: dict[str, AgentConfig]) -> ResiliencePolicy:
    """``[retry]`` and ``[breaker]`` for every agent, ``[agents.<name>.retry|breaker]`` for one, and fallbacks."""
    tables = CONFIG.tables
    retry: RetryPolicy = _policy(RetryPolicy(), _values(data.get("retry", {}), tables["retry"]), "retry")
    breaker: BreakerPolicy = _policy(BreakerPolicy(), _values(data.get("breaker", {}), tables["breaker"]), "breaker")
    retries, breakers, fallbacks = {}, {}, {}
    for name, table in data["agents"].items():
        where = f"agents.{name}"
        if "retry" in table:
            retries[name] = _policy(retry, _values(table["retry"], AGENT.tables["retry"]), f"{where}.retry")
        if "breaker" in table:
            breakers[name] = _policy(breaker, _values(table["breaker"], AGENT.tables["breaker"]), f"{where}.breaker")
        fallback = agents[name].fallback
        if fallback is not None:
            if fallback not in agents or fallback == name:
                raise ConfigError(f"{where}.fallback {fallback!r} is not another agent of the mesh")
            fallbacks[name] = fallback
    return ResiliencePolicy(retry=retry, breaker=breaker, retries=retries, breakers=breakers, fallbacks=fallbacks)


def _chosen(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The file to read, and where its name came from."""
    if path:
        return Path(path), "given"
    if os.environ.get("KOSMOS_CONFIG"):
        return Path(os.environ["KOSMOS_CONFIG"]), "from $KOSMOS_CONFIG"
    return Path(DEFAULT_CONFIG), f"the default ./{DEFAULT_CONFIG}"


def load_config(path: str | os.PathLike[str] | None = None) -> MeshConfig:
    """Read a mesh config: ``path``, else ``$KOSMOS_CONFIG``, else ``./kosmos.toml``.

    Without ``path``, which file was read is logged at INFO. Anything wrong, an unknown key included,
    is a ConfigError of one line that starts with the file's path.
    """
    chosen, source = _chosen(path)
    try:
        text = chosen.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {chosen.absolute()} not found ({source}); choose one with --config FILE or $KOSMOS_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {chosen} cannot be read: {exc}") from None
    _log.log(logging.DEBUG if path else logging.INFO, "config: %s (%s)", chosen.resolve(), source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        clash = ""  # the short form pasted over a file that has a [bus] table
        if re.search(r"^\s*bus\s*=", text, re.MULTILINE) and re.search(r"^\s*\[bus\]", text, re.MULTILINE):
            clash = '; `bus = ...` and the [bus] table clash: write nats = "nats://..." inside [bus] instead'
        raise ConfigError(f"config file {chosen} cannot be read: {exc}{clash}") from None
    try:
        return _mesh(data, chosen.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None


def _mesh(data: dict[str, Any], path: Path) -> MeshConfig:
    if isinstance(data.get("bus"), str):  # the old short form, refused: pasted beside a [bus] table, it clashes
        url = json.dumps(data["bus"])
        raise ConfigError(
            f"bus = {url} at the top level is not a config form; write the [bus] table: [bus] nats = {url}"
        )
    check(data)
    if not data.get("agents"):
        raise ConfigError("no [agents.<name>] tables")
    agents = {
        name: AgentConfig(name=name, **_values(table, AGENT), settings=dict(table.get("settings", {})))
        for name, table in data["agents"].items()
    }
    mesh = _values(data.get("mesh", {}), CONFIG.tables["mesh"])
    telemetry = {**mesh, **_values(data.get("telemetry", {}), CONFIG.tables["telemetry"])}
    return MeshConfig(
        agents=agents,
        limits=_limits(mesh),
        bus=_bus(_values(data.get("bus", {}), CONFIG.tables["bus"])),
        telemetry=TelemetryConfig(**_fields(TelemetryConfig, telemetry)),
        resilience=_resilience(data, agents),
        interceptors=InterceptorsConfig(**_values(data.get("interceptors", {}), CONFIG.tables["interceptors"])),
        state_dir=Path(mesh.get("state_dir", DEFAULT_STATE_DIR)),
        path=path,
    )


def _limits(mesh: dict[str, Any]) -> MeshLimits:
    idempotency = {name.removeprefix("idempotency_"): value for name, value in mesh.items() if "idempotency_" in name}
    return MeshLimits(**_fields(MeshLimits, mesh), idempotency=Idempotency(**idempotency))


def _bus(values: dict[str, Any]) -> BusConfig:
    if "metrics_port" in values and "address" not in values:
        raise ConfigError("bus.metrics_port is for the embedded broker, which needs a bus.address")
    for subject in values.get("durable", ()):
        try:
            pattern_tokens(subject)
        except InvalidEnvelope as exc:
            raise ConfigError(f"bus.durable: {exc.message}") from None
    return BusConfig(**values)
