"""What each ``kosmos`` command does, once its command line is read (kosmos_grpc.commandline).

A failure prints one readable line (``kosmos: <STATUS>: <what went wrong>``, or ``kosmos: <what is
wrong>`` for the config) and exits non-zero. The launcher, the bus and tracing are imported only by
the commands that use them, so ``kosmos call`` loads grpc and the client, and not the server side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from kosmos_grpc import runtime
from kosmos_grpc.client import Coordinator
from kosmos_grpc.commandline import EXIT_USAGE, LOG_FORMATS
from kosmos_grpc.config import MeshConfig, load_config
from kosmos_grpc.errors import MESH_HINT, ConfigError, DependencyUnavailable, KosmosError
from kosmos_grpc.tables import format_table

if TYPE_CHECKING:
    import argparse

    from kosmos_grpc.bus import Event, EventBus, Subscription
    from kosmos_grpc.calls import CircuitInfo

__all__ = ["run"]

EXIT_FAILURE = 1
#: How long a command's exit waits for its spans to reach a collector (unless OTEL_* says).
CLI_EXPORT_SECONDS = 0.5


class UsageError(Exception):
    """A mistake in the command line itself."""


def _payload(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"payload must be a JSON object, not {type(value).__name__}")
    return value


def _client(config: MeshConfig) -> Coordinator:
    return Coordinator(
        config.addresses(), source_agent="cli", payload_limit=config.limits.payload_limit, resilience=config.resilience
    )


async def _call(config: MeshConfig, args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    async with _client(config) as client:
        response = await client.delegate(
            args.agent, args.action, payload, timeout_ms=args.timeout_ms, priority=args.priority
        )
    print(json.dumps(response.result, indent=2 if args.pretty else None, sort_keys=True, ensure_ascii=False))
    return 0


async def _stream(config: MeshConfig, args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    async with _client(config) as client:
        async for chunk in client.stream(
            args.agent, args.action, payload, timeout_ms=args.timeout_ms, priority=args.priority
        ):
            print(json.dumps(chunk.data, sort_keys=True, ensure_ascii=False), flush=True)
    return 0


async def _health(config: MeshConfig, args: argparse.Namespace) -> int:
    names = [args.agent] if args.agent else list(config.agents)
    rows: list[tuple[str, ...]] = []
    answered = 0
    async with _client(config) as client:
        for name in names:
            address = client.registry.address(name)
            try:
                status = await client.health(name, timeout_ms=args.timeout_ms)
                answered += 1
            except KosmosError as exc:
                if args.agent is not None:
                    raise
                status = exc.code.name
            rows.append((name, address, status))
    print(format_table(("AGENT", "ADDRESS", "HEALTH"), rows))
    return _health_exit(rows, answered)


async def _agents(config: MeshConfig, args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = []
    answered = 0
    async with _client(config) as client:
        for name in config.agents:
            address = client.registry.address(name)
            try:
                status = await client.health(name, timeout_ms=args.timeout_ms)
                answered += 1
                card = await client.describe(name, timeout_ms=args.timeout_ms)
                actions = ", ".join(a.name + (" (stream)" if a.streaming else "") for a in card.actions)
                circuits = ", ".join(_circuit(c) for c in card.circuits) or "-"
                restarts, uptime = str(card.restarts), _uptime(card.uptime)
            except KosmosError as exc:
                status, actions, circuits, restarts, uptime = exc.code.name, "-", "-", "-", "-"
            rows.append((name, address, status, restarts, uptime, actions, circuits))
    print(format_table(("AGENT", "ADDRESS", "HEALTH", "RESTARTS", "UPTIME", "ACTIONS", "CIRCUITS"), rows))
    return _health_exit(rows, answered)


def _health_exit(rows: list[tuple[str, ...]], answered: int) -> int:
    """0 when every agent is SERVING; else 1, with a line to stderr when none answered at all."""
    if rows and not answered:
        print(f"kosmos: no agent answers: {MESH_HINT}", file=sys.stderr)
    return 0 if all(row[2] == "SERVING" for row in rows) else EXIT_FAILURE


def _uptime(seconds: float | None) -> str:
    """``42s``, ``12m05s``, ``3h07m`` or ``2d04h``: how long an agent's process has been serving."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, hours, minutes = whole // 86400, whole // 3600 % 24, whole // 60 % 60
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{whole % 60:02d}s"
    return f"{whole}s"


def _circuit(circuit: CircuitInfo) -> str:
    """``athena closed``, or ``athena open (5 failures, retry in 12.0 s)``."""
    if circuit.state == "closed":
        return f"{circuit.target} closed"
    if circuit.state == "open":
        return f"{circuit.target} open ({circuit.failures} failures, retry in {circuit.retry_in:.1f} s)"
    return f"{circuit.target} {circuit.state.replace('_', '-')}"


async def _publish(config: MeshConfig, args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    headers = dict(_header(h) for h in args.header)
    try:  # a bus that is not there is one line naming it, within the command's timeout
        bus = await open_bus(config, "cli", connect_timeout=args.timeout_ms / 1000)
        try:
            message_id = await bus.publish(
                args.subject, payload, headers=headers, acknowledge=True, timeout_ms=args.timeout_ms
            )
        finally:
            await bus.close()
    except DependencyUnavailable as exc:
        print(f"kosmos: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    print(message_id)
    return 0


async def _subscribe(config: MeshConfig, args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    # A bus that is not there is one line naming it, within the connect's timeout (5 s unless given).
    connect_ms: float = getattr(args, "timeout_ms", None) or 5_000
    try:
        bus = await open_bus(config, "cli", connect_timeout=connect_ms / 1000)
    except DependencyUnavailable as exc:
        print(f"kosmos: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        try:
            subscription = await bus.subscribe(args.pattern, queue=args.queue)
        except DependencyUnavailable as exc:
            print(f"kosmos: {exc.message}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"subscribed to {args.pattern}; Ctrl-C stops", file=sys.stderr, flush=True)
        reading = asyncio.ensure_future(_print_events(subscription))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        ended = subscription.error
        await subscription.unsubscribe()
        await reading
    finally:
        await bus.close()
    if ended is not None:
        print(f"kosmos: {ended}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


async def _print_events(subscription: Subscription[Event]) -> None:
    async for event in subscription:
        line = {"subject": event.subject, "message_id": event.message_id, "payload": event.payload}
        if event.headers:
            line["headers"] = event.headers
        print(json.dumps(line, sort_keys=True, ensure_ascii=False), flush=True)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for commands that run until stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"header {text!r} should be NAME=VALUE")
    return name, value


async def open_bus(config: MeshConfig, source_agent: str, *, connect_timeout: float) -> EventBus:
    """The config's bus, connected; the bus package (and NATS's client) is imported only here."""
    from kosmos_grpc.bus import open_bus as connect

    return await connect(config, source_agent, connect_timeout=connect_timeout)


def _log_format(flag: str | None, config: MeshConfig) -> str:
    """``--log-format``, else ``$KOSMOS_LOG_FORMAT``, else the config's ``[mesh] log_format``."""
    if flag is not None:
        return flag
    env = os.environ.get("KOSMOS_LOG_FORMAT", "").strip()
    if not env:
        return config.telemetry.log_format
    if env not in LOG_FORMATS:
        raise UsageError(f"KOSMOS_LOG_FORMAT={env!r} should be 'text' or 'json'")
    return env


def _config_check(args: argparse.Namespace) -> int:
    """``kosmos config check [FILE]``: one summary line, or the config's error (raised, printed by run)."""
    config = load_config(args.file or args.config)
    agents = ", ".join(config.agents)
    bus = config.bus.nats_url or config.bus.address or "none"
    count = f"{len(config.agents)} agent{'' if len(config.agents) == 1 else 's'}"
    print(f"{config.path}: ok; {count} ({agents}); bus: {bus}")
    return 0


def _refuse_open(config: MeshConfig, args: argparse.Namespace) -> None:
    """ConfigError, one line, when what is to be served would listen beyond loopback in the clear."""
    from kosmos_grpc.config import BROKER

    if args.command == "serve":
        config.agent(args.agent)  # an unknown name is said as such
        names = [args.agent]
    else:
        names = [*config.agents, BROKER] if args.command == "up" else [BROKER]
    for who, address in config.open_addresses(names).items():
        kind = "the event broker" if who == BROKER else f"agent {who!r}"
        raise ConfigError(
            f"{kind} would listen on {address}, beyond this machine, with no TLS or authentication "
            f"(the mesh has none yet): anyone who reaches it could call it; pass --insecure to serve it so anyway"
        )


def _certs(args: argparse.Namespace) -> int:
    """``kosmos certs``: a development CA and a certificate for each agent and the CLI, a line each."""
    from pathlib import Path

    from kosmos_grpc.certs import issue_development_certificates

    config = load_config(args.config)
    folder = Path(args.out) if args.out else config.state_dir.absolute() / "certs"
    issued = issue_development_certificates(folder, config.agents, trust_domain=args.trust_domain, hours=args.hours)
    for each in issued:
        who = each.spiffe_id or "the CA"
        print(f"{each.certificate}  {who}  expires {each.expires:%Y-%m-%d %H:%M} UTC")
    return 0


def _completion(args: argparse.Namespace) -> int:
    from kosmos_grpc.completion import script

    print(script(args.shell), end="")
    return 0


HANDLERS = {
    "call": _call,
    "stream": _stream,
    "health": _health,
    "agents": _agents,
    "publish": _publish,
    "subscribe": _subscribe,
}


def _dispatch(args: argparse.Namespace) -> int:
    from kosmos_grpc.telemetry.logs import configure_logging

    if args.command == "completion":
        return _completion(args)
    if args.command == "config":
        return _config_check(args)
    if args.command == "certs":
        return _certs(args)
    config = load_config(args.config)
    log_format = _log_format(args.log_format, config)
    configure_logging(log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    if args.command in ("up", "serve", "broker"):
        from kosmos_grpc.launcher import run_mesh, serve_agent, serve_broker

        if not (args.insecure or getattr(args, "handshake", False)):  # a child of `kosmos up`: it checked
            _refuse_open(config, args)

        if args.command == "up":  # the children log as their launcher does
            return asyncio.run(run_mesh(config, options=("--log-format", log_format)))
        if args.command == "serve":
            runtime.run(serve_agent(config, args.agent, handshake=args.handshake))
            return 0
        runtime.run(serve_broker(config, handshake=args.handshake))
        return 0
    from kosmos_grpc.telemetry.tracing import configure_tracing, spans_exported

    handler = HANDLERS[args.command]
    # A command sent where spans are exported starts the trace the agents continue; its way out
    # waits for its spans at most CLI_EXPORT_SECONDS, whatever the collector does.
    provider = configure_tracing("kosmos-cli", export_timeout=CLI_EXPORT_SECONDS) if spans_exported() else None
    try:
        return asyncio.run(handler(config, args))
    finally:
        if provider is not None:
            provider.shutdown()


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; a failure is one line on stderr and a non-zero status."""
    try:
        return _dispatch(args)
    except (ConfigError, DependencyUnavailable) as exc:  # the user's file, or NATS: not a call, no status
        print(f"kosmos: {exc.message}", file=sys.stderr)
    except KosmosError as exc:
        print(f"kosmos: {exc.code.name}: {exc.message}", file=sys.stderr)
    except UsageError as exc:
        print(f"kosmos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # stdout's reader went away: kosmos_grpc.cli ends quietly
    except OSError as exc:
        print(f"kosmos: {exc}", file=sys.stderr)
    return EXIT_FAILURE
