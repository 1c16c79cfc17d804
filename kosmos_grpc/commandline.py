"""The ``kosmos`` command line's grammar: its commands, their options, help with examples.

Plain argparse, imported before anything heavy, so ``kosmos --help`` costs only this module. Two
things argparse does not do by itself are done here: the global options (``--config``, ``-v``,
``--log-format``) are also accepted after the command, and a command's options may come between or
after its positionals (``kosmos call zeus status --timeout-ms 5000 '{}'``).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kosmos_grpc.envelope import Priority

__all__ = ["COMMANDS", "EXIT_USAGE", "LOG_FORMATS", "parse", "parser"]

EXIT_USAGE = 2
#: As kosmos_grpc.telemetry.logs.LOG_FORMATS, which imports OpenTelemetry (tests pin the two equal).
LOG_FORMATS = ("text", "json")
#: An agent name argument: completed from the config by the shell scripts of ``kosmos completion``.
AGENT_COMPLETION = {"bash": "_kosmos_agents", "zsh": "_kosmos_agents"}


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported on one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"kosmos: {message} (see '{self.prog} --help')\n")


class _CommandParser(_Parser):
    """A command's parser: options anywhere among its positionals, and extra arguments refused here.

    argparse alone matches positionals chunk by chunk, so an option between ``action`` and an
    optional ``payload`` leaves the payload "unrecognized"; ``parse_known_intermixed_args`` reads
    the options first, then every positional together.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # parse_known_intermixed_args calls back here (Python < 3.13), and refuses a command of commands.
        if self._intermixing or any(action.nargs == argparse.PARSER for action in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:  # said here, so the hint names this command's --help
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _milliseconds(text: str) -> float:
    """A --timeout-ms value: a finite number of milliseconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds above zero")
    return value


def _priority(text: str) -> Priority:
    """A --priority value; the envelope module (and protobuf) is imported only when one is read."""
    from kosmos_grpc.envelope import Priority
    from kosmos_grpc.errors import KosmosError

    try:
        return Priority.parse(text)
    except KosmosError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """``--config``, ``-v`` and ``--log-format``: on the top parser, and again on each command's.

    On a command's parser their defaults are SUPPRESS, so that an option given before the command
    is not reset by the command's parser when it is not repeated there.
    """
    group = parser.add_argument_group("global options") if after_command else parser
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    group.add_argument(
        "--config", metavar="FILE", help="mesh config file (default: $KOSMOS_CONFIG, else ./kosmos.toml)", **unset
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level", **unset)
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json for a JSON object a line (default: $KOSMOS_LOG_FORMAT, else the config's, else text)",
        **unset,
    )


def _timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout-ms",
        type=_milliseconds,
        default=default,
        metavar="MS",
        help=f"deadline in ms (default {default:.0f})",
    )


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# Each command: its one-line help, and the examples its --help shows.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "run every agent of the config, each in its own process",
        _examples("kosmos up", "kosmos --config mesh.toml up"),
    ),
    "serve": (
        "run one agent of the config in this process",
        _examples("kosmos serve athena", "kosmos serve athena --log-format json"),
    ),
    "call": (
        "run a unary action and print its result (JSON, keys sorted)",
        _examples(
            'kosmos call zeus ask \'{"question": "How does a saga undo its steps?"}\'',
            'kosmos call athena search --timeout-ms 500 \'{"query": "deadline"}\' --pretty',
            'kosmos call demeter query_data \'{"sql": "SELECT count(*) FROM sqlite_schema"}\'',
        ),
    ),
    "stream": (
        "print chunks as they arrive, a JSON object a line",
        _examples('kosmos stream zeus generate_report \'{"topic": "circuit breakers"}\''),
    ),
    "health": (
        "gRPC health of one agent or all",
        _examples("kosmos health", "kosmos health athena --timeout-ms 500"),
    ),
    "agents": ("every agent: address, health, actions", _examples("kosmos agents", "kosmos agents --config mesh.toml")),
    "broker": ("run the embedded event broker at the config's [bus] address", _examples("kosmos broker")),
    "publish": (
        "publish an event and print its message_id",
        _examples(
            'kosmos publish kosmos.events.audit.log \'{"who": "zeus"}\'',
            "kosmos publish kosmos.events.audit.log '{}' --header trace=abc --timeout-ms 1000",
        ),
    ),
    "subscribe": (
        "print events matching a pattern as they arrive, until Ctrl-C",
        _examples("kosmos subscribe 'kosmos.events.>'", "kosmos subscribe 'kosmos.agents.*.requests' --queue audit"),
    ),
    "config": ("check the mesh config", _examples("kosmos config check", "kosmos config check mesh.toml")),
    "certs": (
        "make a development CA and a short-lived certificate for each agent and the CLI",
        _examples("kosmos certs", "kosmos certs --trust-domain example.org --hours 8 --out /tmp/kosmos-certs"),
    ),
    "completion": (
        "print a shell completion script",
        _examples(
            "kosmos completion bash > ~/.local/share/bash-completion/completions/kosmos",
            "source <(kosmos completion bash)          # in this bash only",
            "kosmos completion zsh > ~/.zfunc/_kosmos  # zsh, with ~/.zfunc in $fpath",
        ),
    ),
}


def _command(commands: Any, name: str) -> argparse.ArgumentParser:
    helptext, epilog = COMMANDS[name]
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=helptext,
        description=helptext[0].upper() + helptext[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(sub, after_command=True)
    return sub


def _agent(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    parser.add_argument("agent", **kwargs).complete = AGENT_COMPLETION  # type: ignore[attr-defined]


def parser() -> argparse.ArgumentParser:
    """The whole ``kosmos`` grammar."""
    top = _Parser(
        prog="kosmos",
        description="KOSMOS, a gRPC mesh for multi-agent systems.",
        epilog="Options go before or after the command; 'kosmos COMMAND --help' shows a command's, with examples.",
    )
    _global_options(top, after_command=False)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    insecure = "serve beyond loopback with no security (TLS is not configured)"
    _command(commands, "up").add_argument("--insecure", action="store_true", help=insecure)
    serve = _command(commands, "serve")
    _agent(serve)
    serve.add_argument("--handshake", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--insecure", action="store_true", help=insecure)
    for name in ("call", "stream"):
        sub = _command(commands, name)
        _agent(sub)
        sub.add_argument("action")
        sub.add_argument("payload", nargs="?", help="the payload, a JSON object")
        # A string default goes through type= too, so Priority is imported only when a command runs.
        sub.add_argument("--priority", type=_priority, default="normal", help="low|normal|high|critical")
        _timeout(sub, 30_000)
        if name == "call":
            sub.add_argument("--pretty", action="store_true", help="indent the JSON result")
    health = _command(commands, "health")
    _agent(health, nargs="?")
    _timeout(health, 2_000)
    _timeout(_command(commands, "agents"), 2_000)
    broker = _command(commands, "broker")
    broker.add_argument("--handshake", action="store_true", help=argparse.SUPPRESS)
    broker.add_argument("--insecure", action="store_true", help=insecure)
    publish = _command(commands, "publish")
    publish.add_argument("subject")
    publish.add_argument("payload", nargs="?", help="the payload, a JSON object")
    publish.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="an event header")
    _timeout(publish, 5_000)
    subscribe = _command(commands, "subscribe")
    subscribe.add_argument("pattern", help="dot-separated tokens; * matches one token, > the rest")
    subscribe.add_argument("--queue", help="share the events with the other members of this queue group")

    config = _command(commands, "config")
    checks = config.add_subparsers(dest="config_command", required=True, metavar="ACTION", parser_class=_CommandParser)
    check = checks.add_parser(
        "check",
        help="load the config and print a summary line, or its error",
        description="Load the config (FILE, else --config, else $KOSMOS_CONFIG, else ./kosmos.toml) and print a"
        " summary line; exit 1 with the config's error otherwise.",
        epilog=_examples("kosmos config check", "kosmos config check mesh.toml"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="the config file to check")
    _global_options(check, after_command=True)

    certs = _command(commands, "certs")
    certs.add_argument("--trust-domain", default="kosmos.local", help="the SPIFFE trust domain (default kosmos.local)")
    certs.add_argument("--hours", type=float, default=24.0, help="how long the certificates live (default 24)")
    certs.add_argument("--out", help="the folder to write them to (default: <state_dir>/certs)")

    completion = _command(commands, "completion")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return top


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line read into a namespace; a mistake exits with one line and status 2."""
    return parser().parse_args(argv)
