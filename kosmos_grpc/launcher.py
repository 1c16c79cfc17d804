"""``kosmos up``: run every agent of a config in its own process, restart those that end, stop them together.

The mesh starts whole or not at all: every agent (and the event broker, when the config has one)
must bind, take the mesh's addresses and say SERVING within :data:`START_TIMEOUT`. From then on
an agent whose process ends is restarted by its ``restart`` policy (:mod:`kosmos_grpc.supervisor`
says how and when), at the address its first process got, and the others keep running. The mesh
stops on SIGINT or SIGTERM, or when every agent is down and none will be restarted.
What one child runs is :mod:`kosmos_grpc.serving`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from typing import TYPE_CHECKING, TextIO

from kosmos_grpc.child_output import Output
from kosmos_grpc.client import Coordinator
from kosmos_grpc.errors import ConfigError, DependencyUnavailable, KosmosError
from kosmos_grpc.preflight import PREFLIGHT_SECONDS, check_dependencies
from kosmos_grpc.runtime import until
from kosmos_grpc.serving import START_TIMEOUT, agent_server, serve_agent, serve_broker
from kosmos_grpc.supervisor import (
    BROKER_NAME,
    READY_MARK,
    STABLE_SECONDS,
    Child,
    HealthEvents,
    describe_exit,
    should_restart,
    stop_children,
)
from kosmos_grpc.tables import format_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kosmos_grpc.config import MeshConfig

__all__ = [
    "BROKER_NAME",
    "READY_MARK",
    "START_TIMEOUT",
    "agent_server",
    "already_running",
    "run_mesh",
    "serve_agent",
    "serve_broker",
]


class _Mesh:
    """The children of one ``kosmos up``, where they write, and the event that stops them all."""

    def __init__(self, config: MeshConfig, out: TextIO, err: TextIO, options: Sequence[str]) -> None:
        assert config.path is not None
        self.config = config
        # A closed stdout or stderr (`kosmos up | head -1`) stops the copying, never the mesh.
        self.out, self.err = Output(out), Output(err)
        self.options = options
        self.children: list[Child] = []
        self.stop = asyncio.Event()
        self.events = HealthEvents(config, self.err)
        #: Set when the mesh stops because every agent is down for good.
        self.all_gone = False

    def addresses(self) -> tuple[dict[str, str], str | None]:
        """Agent name -> address, and the event broker's address (None without one)."""
        agents = {c.name: c.address for c in self.children if c.name != BROKER_NAME}
        return agents, next((c.address for c in self.children if c.name == BROKER_NAME), None)

    def metrics(self) -> dict[str, str]:
        """Agent name -> its ``/metrics`` URL, for the agents that serve one."""
        return {c.name: c.metrics for c in self.children if c.name != BROKER_NAME and c.metrics}

    async def spawn(self, child: Child) -> None:
        assert self.config.path is not None
        await child.spawn(self.config.path, self.options, self.out, self.err)


def _who(name: str) -> str:
    return "the event broker" if name == BROKER_NAME else f"agent {name!r}"


def _in_use(address: str) -> bool:
    """Whether ``address`` is taken by a listening socket (its own bind would fail with EADDRINUSE)."""
    host, _, port = address.rpartition(":")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0]
    except (OSError, ValueError, IndexError):
        return False  # the child's own bind says what is wrong with it
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            sock.bind(where)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


async def already_running(config: MeshConfig) -> str | None:
    """Why the config's fixed (non-zero) addresses cannot be served, in a line; None when they are free.

    A KOSMOS server that answers health there means a mesh is already running on them.
    """
    fixed = [(name, spec.address) for name, spec in config.agents.items() if not spec.address.endswith(":0")]
    if config.bus.address is not None and not config.bus.address.endswith(":0"):
        fixed.insert(0, (BROKER_NAME, config.bus.address))
    if not fixed:
        return None
    async with Coordinator(dict(fixed), resilience=False, telemetry=False) as client:
        for name, address in fixed:
            with contextlib.suppress(KosmosError):
                await client.health(name, timeout_ms=1_000)
                who = "the event broker" if name == BROKER_NAME else name
                return f"a mesh is already running: {who} answers at {address} (stop it first, or use another config)"
            if _in_use(address):
                return (
                    f"{_who(name)} cannot listen on {address}: the port is in use by something else "
                    "(stop it, or give the agent another address in the config)"
                )
    return None


async def _serving(client: Coordinator, child: Child) -> bool:
    """Poll ``child``'s gRPC health until it says SERVING (the caller bounds the wait); False if it ended."""
    assert child.process is not None
    while child.process.returncode is None:
        with contextlib.suppress(KosmosError):
            child.health = await client.health(child.name, timeout_ms=1000)
        if child.health == "SERVING":
            return True
        await asyncio.sleep(0.05)
    return False


async def _start(mesh: _Mesh) -> None:
    """Start the broker and every agent, each in its own process, into ``mesh.children`` (so a
    failure leaves them to stop); hand out the addresses; wait until each says SERVING."""
    config = mesh.config
    if config.bus.address is not None:
        mesh.children.append(Child(BROKER_NAME, ("broker",)))
    mesh.children += [Child(name, ("serve", name), spec.restart) for name, spec in config.agents.items()]
    for child in mesh.children:
        await mesh.spawn(child)
    for child in mesh.children:
        if not await child.ready():
            code = await child.ended()
            raise ConfigError(f"{_who(child.name)} {describe_exit(code)} while starting (its error is above)")
    agents, bus = mesh.addresses()
    for child in mesh.children:
        await child.hand_over(agents, bus, mesh.metrics())
    async with Coordinator({c.name: c.address for c in mesh.children}) as client:
        for child in mesh.children:
            if not await _serving(client, child):
                raise ConfigError(f"{_who(child.name)} {describe_exit(await child.ended())} while starting")
            child.history.serving()


async def _bounded_start(mesh: _Mesh) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await _start(mesh)
    except TimeoutError:
        waiting = [c.name for c in mesh.children if c.health != "SERVING"]
        raise ConfigError(f"the mesh did not start within {START_TIMEOUT:.0f} s (waiting for {waiting})") from None


async def _restart(mesh: _Mesh, child: Child) -> bool:
    """Run ``child`` in a new process at its address, with the mesh's addresses; whether it says SERVING.

    A process that does not get there in time is killed: its exit is the next one to supervise.
    """
    await mesh.spawn(child)
    assert child.process is not None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            if not await child.ready():
                return False
            await child.hand_over(*mesh.addresses(), mesh.metrics())
            async with Coordinator({child.name: child.address}, resilience=False, telemetry=False) as client:
                if not await _serving(client, child):
                    return False
            child.history.serving()
            return True
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        return False


def _last_output(child: Child) -> str:
    lines = child.tail.lines()
    return "; its last output:\n" + "\n".join(f"    {line}" for line in lines) if lines else ""


async def _supervise(mesh: _Mesh, child: Child) -> None:
    """Restart ``child`` each time its process ends, as its policy says, until the mesh stops."""
    err = mesh.err
    while True:
        code = await child.ended()
        if mesh.stop.is_set():
            return
        name, output = child.name, _last_output(child)
        if not should_restart(child.policy, code):
            child.gone = True
            print(
                f"kosmos: {_who(name)} {describe_exit(code)}; it stays down (restart = {child.policy!r}){output}",
                file=err,
            )
            mesh.events.announce(name, "gone", exit_code=code, restarts=child.restarts, output=child.tail.lines())
            if all(c.gone for c in mesh.children if c.name != BROKER_NAME):
                print("kosmos: every agent is down and none will be restarted; stopping the mesh", file=err)
                mesh.all_gone = True
                mesh.stop.set()
            return
        plan = child.history.plan()
        what = describe_exit(code)
        if plan.crash_loop:
            what = (
                f"is in a crash loop ({plan.failures} exits in a row, none after {STABLE_SECONDS:.0f} s"
                f" of serving): it {what}"
            )
        print(
            f"kosmos: {_who(name)} {what}; restarting in {plan.delay:.1f} s (restart {child.restarts + 1}){output}",
            file=err,
        )
        err.flush()
        state = "crash_loop" if plan.crash_loop else "exited"
        mesh.events.announce(name, state, exit_code=code, restarts=child.restarts, output=child.tail.lines())
        if not await until(mesh.stop, asyncio.sleep(plan.delay)):
            return
        child.restarts += 1
        restarting = asyncio.ensure_future(_restart(mesh, child))
        try:
            if not await until(mesh.stop, restarting):
                return
        except Exception as exc:  # no new process (EMFILE, ENOMEM ...): said, then tried again, backing off
            print(f"kosmos: {_who(name)} could not be restarted ({exc or type(exc).__name__})", file=err)
            err.flush()
            continue  # the old process's exit is seen again at once, and counted as one more failure
        if restarting.result():
            print(
                f"kosmos: {_who(name)} is back at {child.address} (pid {child.pid}, restart {child.restarts})", file=err
            )
            err.flush()
            mesh.events.announce(name, "restarted", exit_code=None, restarts=child.restarts, pid=child.pid)


def _table(mesh: _Mesh) -> str:
    rows = [(c.name, c.address, c.health, str(c.pid), c.metrics or "-") for c in mesh.children]
    return format_table(("AGENT", "ADDRESS", "HEALTH", "PID", "METRICS"), rows)


async def run_mesh(
    config: MeshConfig, out: TextIO = sys.stdout, *, options: Sequence[str] = (), err: TextIO = sys.stderr
) -> int:
    """Run and supervise the whole mesh until SIGINT/SIGTERM (or every agent is down for good); the exit code.

    ``options`` are ``kosmos`` options every child gets, such as ``("--log-format", "json")``.
    """
    loop = asyncio.get_running_loop()
    mesh = _Mesh(config, out, err, options)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, mesh.stop.set)
    watchers: list[asyncio.Task[None]] = []
    try:
        check = asyncio.ensure_future(already_running(config))
        if not await until(mesh.stop, check):
            return 0
        if (busy := check.result()) is not None:
            print(f"kosmos: {busy}", file=mesh.err)
            return 1
        try:  # what the agents need (NATS), checked before any of them starts
            if not await until(mesh.stop, check_dependencies(config, timeout=PREFLIGHT_SECONDS)):
                return 0
        except DependencyUnavailable as exc:
            print(f"kosmos: {exc.message}", file=mesh.err)
            return 1
        if not await until(mesh.stop, _bounded_start(mesh)):
            return 0
        print(f"state: {config.state_dir.absolute()}/ (a folder for each agent's own data)", file=mesh.out)
        print(_table(mesh), file=mesh.out)
        agents = sum(child.name != BROKER_NAME for child in mesh.children)
        broker = " and the event broker" if agents < len(mesh.children) else ""
        counted = f"{agents} agent{'s' if agents != 1 else ''}{broker}"
        print(f"mesh up: {counted}, from {config.path}. Ctrl-C stops them.", file=mesh.out, flush=True)
        mesh.events.start(mesh.addresses()[1])
        watchers = [asyncio.create_task(_supervise(mesh, child)) for child in mesh.children]
        await mesh.stop.wait()
        return 1 if mesh.all_gone else 0
    finally:
        for watcher in watchers:
            watcher.cancel()
        # Awaited before the children are stopped: a restart's new process is then on its child.
        await asyncio.gather(*watchers, return_exceptions=True)
        await mesh.events.close()
        await stop_children(mesh.children, config.limits.grace_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if mesh.children:
            print("mesh stopped", file=mesh.out, flush=True)
