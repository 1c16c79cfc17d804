"""The ``kosmos`` command: run the mesh, call and stream actions, check health, list agents.

A failure prints one readable line (``kosmos: <STATUS>: <what went wrong>``) and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from kosmos_grpc import runtime
from kosmos_grpc.bus import Event, Subscription, open_bus
from kosmos_grpc.client import Coordinator
from kosmos_grpc.config import MeshConfig, load_config
from kosmos_grpc.envelope import Priority
from kosmos_grpc.errors import DependencyUnavailable, KosmosError
from kosmos_grpc.launcher import run_mesh, serve_agent, serve_broker
from kosmos_grpc.tables import format_table
from kosmos_grpc.telemetry.logs import LOG_FORMATS, configure_logging
from kosmos_grpc.telemetry.tracing import configure_tracing, spans_exported

if TYPE_CHECKING:
    from kosmos_grpc.calls import CircuitInfo

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


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
    print(json.dumps(response.result, indent=2 if args.pretty else None))
    return 0


async def _stream(config: MeshConfig, args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    async with _client(config) as client:
        async for chunk in client.stream(
            args.agent, args.action, payload, timeout_ms=args.timeout_ms, priority=args.priority
        ):
            print(json.dumps(chunk.data), flush=True)
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
        print(
            "kosmos: no agent answers: is the mesh running? (start it with 'make run' or 'kosmos up')",
            file=sys.stderr,
        )
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
        print(json.dumps(line), flush=True)


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


def _milliseconds(text: str) -> float:
    """A --timeout-ms value: a finite number of milliseconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds above zero")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported on one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"kosmos: {message} (see `{self.prog} --help`)\n")


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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kosmos", description="KOSMOS, a gRPC mesh for multi-agent systems.")
    parser.add_argument("--config", help="mesh config file (default: $KOSMOS_CONFIG or ./kosmos.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json for a JSON object a line (default: $KOSMOS_LOG_FORMAT, else the config's, else text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    commands.add_parser("up", help="run every agent of the config, each in its own process")
    serve = commands.add_parser("serve", help="run one agent of the config in this process")
    serve.add_argument("agent")
    serve.add_argument("--handshake", action="store_true", help=argparse.SUPPRESS)

    def timed(sub: argparse.ArgumentParser, default: float) -> None:
        sub.add_argument(
            "--timeout-ms", type=_milliseconds, default=default, help=f"deadline in ms (default {default:.0f})"
        )

    for name, helptext in (
        ("call", "run a unary action and print its result"),
        ("stream", "print chunks as they arrive"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("agent")
        sub.add_argument("action")
        sub.add_argument("payload", nargs="?", help="the payload, a JSON object")
        sub.add_argument("--priority", type=Priority.parse, default=Priority.NORMAL, help="low|normal|high|critical")
        timed(sub, 30_000)
        if name == "call":
            sub.add_argument("--pretty", action="store_true", help="indent the JSON result")
    health = commands.add_parser("health", help="gRPC health of one agent or all")
    health.add_argument("agent", nargs="?")
    timed(health, 2_000)
    agents = commands.add_parser("agents", help="every agent: address, health, actions")
    timed(agents, 2_000)
    broker = commands.add_parser("broker", help="run the embedded event broker at the config's [bus] address")
    broker.add_argument("--handshake", action="store_true", help=argparse.SUPPRESS)
    publish = commands.add_parser("publish", help="publish an event and print its message_id")
    publish.add_argument("subject")
    publish.add_argument("payload", nargs="?", help="the payload, a JSON object")
    publish.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="an event header")
    timed(publish, 5_000)
    subscribe = commands.add_parser("subscribe", help="print events matching a pattern as they arrive, until Ctrl-C")
    subscribe.add_argument("pattern", help="dot-separated tokens; * matches one token, > the rest")
    subscribe.add_argument("--queue", help="share the events with the other members of this queue group")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kosmos`` command."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except KosmosError as exc:  # a bad --priority
        print(f"kosmos: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
        log_format = _log_format(args.log_format, config)
        configure_logging(log_format, level=logging.DEBUG if args.verbose else logging.INFO)
        if args.command == "up":  # the children log as their launcher does
            return asyncio.run(run_mesh(config, options=("--log-format", log_format)))
        if args.command == "serve":
            runtime.run(serve_agent(config, args.agent, handshake=args.handshake))
            return 0
        if args.command == "broker":
            runtime.run(serve_broker(config, handshake=args.handshake))
            return 0
        handler = {
            "call": _call,
            "stream": _stream,
            "health": _health,
            "agents": _agents,
            "publish": _publish,
            "subscribe": _subscribe,
        }[args.command]
        # A command sent where spans are exported starts the trace the agents continue.
        provider = configure_tracing("kosmos-cli") if spans_exported() else None
        try:
            return asyncio.run(handler(config, args))
        finally:
            if provider is not None:
                provider.shutdown()
    except KosmosError as exc:
        print(f"kosmos: {exc.code.name}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except UsageError as exc:
        print(f"kosmos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"kosmos: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
