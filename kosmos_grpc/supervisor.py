"""How ``kosmos up`` keeps its agents running: restart policy, backoff, crash loops, each child's process.

An agent whose process ends is restarted by its ``restart`` policy after an exponential backoff
with jitter (tenacity's ``wait_exponential_jitter``, the strategy delegations retry with). Its
failures are counted since its last process that stayed SERVING for :data:`STABLE_SECONDS`: past
:data:`CRASH_LOOP_RESTARTS` of them it is in a crash loop, which is reported, and its next restarts
wait longer, up to :data:`CRASH_LOOP_MAX_SECONDS`, until a process of it runs stably again. A
restarted process binds the address the first one got and is told its restart count. Changes of
state are announced on ``kosmos.events.system.health`` when the mesh has a bus; a bus that cannot
be reached is reported once and never stops the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_exponential_jitter

from kosmos_grpc.bus import open_bus
from kosmos_grpc.child_output import CHUNK_BYTES, Output, OutputLines, OutputTail
from kosmos_grpc.subjects import SYSTEM_HEALTH

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from _typeshed import SupportsWrite
    from tenacity.wait import wait_base

    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.config import MeshConfig

__all__ = [
    "BIND_ENV",
    "BROKER_NAME",
    "CRASH_LOOP_MAX_SECONDS",
    "CRASH_LOOP_RESTARTS",
    "READY_MARK",
    "STABLE_SECONDS",
    "Child",
    "HealthEvents",
    "RestartPlan",
    "Restarts",
    "describe_exit",
    "exit_code",
    "should_restart",
    "stop_children",
]

READY_MARK = "KOSMOS-READY "
#: How ``kosmos up`` lists the embedded event broker among the agents.
BROKER_NAME = "(broker)"
#: The environment variable that tells a restarted child where to bind: ``{"address", "metrics_port"}``.
BIND_ENV = "KOSMOS_UP_BIND"

#: The first restarts wait 0.2 s, 0.4 s, 0.8 s, 1.6 s, 3.2 s, each plus up to 0.2 s at random ...
BACKOFF = wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.2)
#: ... as many as this; the next failure in a row is a crash loop ...
CRASH_LOOP_RESTARTS = 5
#: ... unless a process served this long in between: then the count starts again.
STABLE_SECONDS = 60.0
#: A crash loop's restarts wait 5 s, 10 s, 20 s ... up to this, plus up to 1 s at random.
CRASH_LOOP_MAX_SECONDS = 60.0
CRASH_LOOP_BACKOFF = wait_exponential_jitter(multiplier=5, max=CRASH_LOOP_MAX_SECONDS, jitter=1)

#: Health events waiting for the bus at most; more are dropped (the log lines still say it all).
EVENTS_QUEUED = 100

log = logging.getLogger(__name__)


def should_restart(policy: str, code: int) -> bool:
    """Whether an agent whose process ended with ``code`` (negative: killed by a signal) is restarted."""
    return policy == "always" or (policy == "on-failure" and code != 0)


def describe_exit(code: int) -> str:
    """``exited with code 3``, or ``exited with code -9 (SIGKILL)``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with code {code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


def _wait(strategy: wait_base, attempt: int) -> float:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(strategy(state))


class RestartPlan(NamedTuple):
    """When to restart an agent that just ended: after ``delay`` seconds; ``failures`` in a row so far."""

    delay: float
    failures: int
    crash_loop: bool


class Restarts:
    """The failures of one agent since its last stable run, and the backoff they call for.

    A failure is a process that ended before serving :data:`STABLE_SECONDS` (or never served), so
    a lasting crash loop keeps backing off up to the cap, however slowly it crashes.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        stable: float = STABLE_SECONDS,
        crash_loop_after: int = CRASH_LOOP_RESTARTS,
    ) -> None:
        self._clock = clock
        self._stable = stable
        self._crash_loop_after = crash_loop_after
        self._failures = 0
        self._serving_since: float | None = None

    def serving(self) -> None:
        """Its current process says SERVING: from now on its run time counts."""
        self._serving_since = self._clock()

    def plan(self) -> RestartPlan:
        """Count its process's end now; how long to wait before the restart."""
        since, self._serving_since = self._serving_since, None
        if since is not None and self._clock() - since >= self._stable:
            self._failures = 0  # it ran stably: this end is a first failure again
        self._failures += 1
        failures = self._failures
        if failures > self._crash_loop_after:
            return RestartPlan(_wait(CRASH_LOOP_BACKOFF, failures - self._crash_loop_after), failures, True)
        return RestartPlan(_wait(BACKOFF, failures), failures, False)


@dataclass(slots=True)
class Child:
    """One agent (or the event broker) under ``kosmos up``, across the processes it is run in."""

    name: str
    #: The ``kosmos`` subcommand that runs it, such as ``("serve", "athena")``.
    command: tuple[str, ...]
    policy: str = "on-failure"
    process: asyncio.subprocess.Process | None = None
    #: Where it listens: what its first process bound, which every restart binds again.
    address: str = ""
    metrics: str | None = None
    health: str = "UNKNOWN"
    restarts: int = 0
    #: Whether it ended and will not be restarted.
    gone: bool = False
    tail: OutputTail = field(default_factory=OutputTail)
    history: Restarts = field(default_factory=Restarts)
    _ready: asyncio.Future[dict[str, Any] | None] | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Its current process's PID (0 before the first)."""
        return self.process.pid if self.process is not None else 0

    async def spawn(self, config: Path, options: Sequence[str], out: Output, err: Output) -> None:
        """Start a process for it, in a session of its own (a Ctrl-C at the terminal reaches only
        ``kosmos up``), its output passed through to ``out``/``err`` and kept in :attr:`tail`."""
        env = None
        if self.address:
            port = None if self.metrics is None else int(self.metrics.rsplit(":", 1)[1].split("/", 1)[0])
            env = {**os.environ, BIND_ENV: json.dumps({"address": self.address, "metrics_port": port})}
        self._cancel_readers()  # a grandchild may still hold the last process's pipes
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kosmos_grpc.cli",
            "--config",
            str(config),
            *options,
            *self.command,
            "--handshake",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        self.health = "UNKNOWN"
        self.tail = OutputTail()
        self._ready = asyncio.get_running_loop().create_future()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout, out, self._ready)),
            asyncio.create_task(self._read(self.process.stderr, err, None)),
        ]

    async def _read(
        self, stream: asyncio.StreamReader, out: Output, ready: asyncio.Future[dict[str, Any] | None] | None
    ) -> None:
        """Drain a pipe to its end, in bounded chunks whatever the output, so it never fills: each
        line is passed to ``out`` and kept (cut if long) in :attr:`tail`; the READY line on stdout
        is caught instead."""
        lines = OutputLines(self.tail, out, None if ready is None else _catch_ready(ready))
        while chunk := await stream.read(CHUNK_BYTES):
            lines.feed(chunk)
        lines.end()
        if ready is not None and not ready.done():
            ready.set_result(None)  # it ended without saying where it listens

    async def ready(self) -> bool:
        """Wait for its process to say where it listens; False when the process ended first."""
        assert self._ready is not None
        ready = await self._ready
        if ready is None:
            return False
        if not self.address:
            self.address, self.metrics = ready["address"], ready.get("metrics")
        return True

    async def hand_over(self, agents: dict[str, str], bus: str | None, metrics: dict[str, str] | None = None) -> None:
        """Send the mesh's addresses (calls, bus, ``/metrics``), and its restart count, to its process
        (which then says SERVING)."""
        assert self.process is not None
        assert self.process.stdin is not None
        mesh = {"agents": agents, "bus": bus, "metrics": metrics or {}, "restarts": self.restarts}
        line = json.dumps(mesh) + "\n"
        self.process.stdin.write(line.encode())
        with contextlib.suppress(ConnectionError):  # it ended meanwhile: its exit says the rest
            await self.process.stdin.drain()

    async def ended(self) -> int:
        """Wait for its process to end and its output to be read; the exit code."""
        assert self.process is not None
        code = await exit_code(self.process)
        # The pipes are closed, or held by a grandchild: the last output is there or nowhere.
        if self._readers:
            await asyncio.wait(self._readers, timeout=1)
        self._cancel_readers()
        return code

    def _cancel_readers(self) -> None:
        for reader in self._readers:
            reader.cancel()


async def exit_code(process: asyncio.subprocess.Process) -> int:
    """Wait for ``process`` to end; its exit code.

    ``Process.wait()`` (Python 3.11) also waits for its pipes to close, which a grandchild that
    inherited them may never do: its exit code, set as soon as it ends, is looked at too.
    """
    waiting = asyncio.ensure_future(process.wait())
    try:
        while process.returncode is None:
            await asyncio.wait({waiting}, timeout=0.5)
            if waiting.done():  # wait() sets returncode; should it not, its own answer (or error) stands
                return waiting.result()
    finally:
        waiting.cancel()
    return process.returncode


def _catch_ready(ready: asyncio.Future[dict[str, Any] | None]) -> Callable[[str], bool]:
    def catch(line: str) -> bool:
        if ready.done() or not line.startswith(READY_MARK):
            return False
        ready.set_result(json.loads(line.removeprefix(READY_MARK)))
        return True

    return catch


async def stop_children(children: Sequence[Child], grace: float) -> None:
    """Close every child's stdin, SIGTERM it, wait for the drain, SIGKILL what is left.

    A process a child got meanwhile (a restart whose spawn just finished) is stopped the same way.
    """
    stopped: set[int] = set()
    while processes := [c.process for c in children if c.process is not None and id(c.process) not in stopped]:
        stopped.update(id(p) for p in processes)
        await _stop_processes(processes, grace)
    readers = [task for child in children for task in child._readers]
    if readers:
        await asyncio.wait(readers, timeout=1)
    for child in children:
        child._cancel_readers()


async def _stop_processes(processes: Sequence[asyncio.subprocess.Process], grace: float) -> None:
    for process in processes:
        if process.stdin is not None:
            process.stdin.close()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(exit_code(p)) for p in processes]
    _, pending = await asyncio.wait(waits, timeout=grace + 5)
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    if pending:
        await asyncio.wait(pending, timeout=5)


class HealthEvents:
    """Announces agents' changes of state on ``kosmos.events.system.health``, in the background.

    ``kosmos up`` never waits for the bus: events queue (boundedly) and one task publishes them,
    each bounded in time; the first failure is reported on one line, later ones only at DEBUG.
    """

    def __init__(self, config: MeshConfig, err: SupportsWrite[str] = sys.stderr) -> None:
        self._config = config
        self._err = err
        self._broker: str | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENTS_QUEUED)
        self._task: asyncio.Task[None] | None = None
        self._bus: EventBus | None = None
        self._warned = False

    def start(self, broker: str | None) -> None:
        """Publish from now on, through the embedded ``broker`` at this address if the mesh has one."""
        if self._config.bus.configured and self._task is None:
            self._broker = broker
            self._task = asyncio.create_task(self._publish_all())

    def announce(self, agent: str, state: str, *, exit_code: int | None, restarts: int, **more: Any) -> None:
        """Queue ``{agent, state, exit_code, restarts, ...}`` for the bus (dropped when the queue is full)."""
        if self._task is None:
            return
        payload = {"agent": agent, "state": state, "exit_code": exit_code, "restarts": restarts, **more}
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(payload)

    async def _publish_all(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                if self._bus is None:
                    self._bus = await asyncio.wait_for(open_bus(self._config, "kosmos-up", broker=self._broker), 5)
                await self._bus.publish(SYSTEM_HEALTH, payload, acknowledge=True, timeout_ms=2_000)
            except Exception as exc:  # a bus that cannot be reached must not stop the supervisor
                await self._failed(exc)
            finally:
                self._queue.task_done()

    async def _failed(self, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if not self._warned:
            self._warned = True
            print(f"kosmos: cannot announce agent health on the bus ({reason}); the mesh goes on", file=self._err)
        else:
            log.debug("health event not published: %s", reason)
        bus, self._bus = self._bus, None
        if bus is not None:
            await _close_quietly(bus)

    async def close(self, flush: float = 2.0) -> None:
        """Publish what is queued (for up to ``flush`` seconds), then stop and close the bus."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush)
        self._task.cancel()
        # Whatever ended the publisher (a closed stderr, say) must not keep the mesh from stopping.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        if self._bus is not None:
            await _close_quietly(self._bus)


async def _close_quietly(bus: EventBus) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.close(), 2)
