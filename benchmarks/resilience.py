"""What resilience costs a call that succeeds: retry + circuit breaker + idempotency, on against off, in one run.

On: a default Coordinator (a Resilience interceptor: tenacity retry policy and a circuit breaker
per target) calls an echo agent that remembers executed message_ids (``idempotency_seconds``
300, the default). Off: a ``Coordinator(resilience=False)`` calls the same echo agent served
with ``idempotency_seconds=None``. Nothing else differs: same agent, same payload, same loop,
no priority queue on either. Each agent runs in its own process on loopback (as under
``kosmos up``); this process is the client. On and off alternate within each of many short
rounds (which goes first alternates too), and each ratio is the median of the ratios taken
within one round, so drift on a shared machine hits both alike. Before the rounds, enough
calls are made for the agent's memory of message_ids to be full, as it is on a busy agent.

Where there are two CPUs or more, this process is pinned to one and the agents to another:
left to the scheduler, calls/s of one and the same agent swings by half from one second to the
next on a small machine (an A/A run, off against off, then misses 1.00x by several percent);
pinned, per-round A/A ratios stay within a few percent. ``--no-pin`` leaves it to the scheduler.

Run with ``python -m benchmarks.resilience`` (``--help`` for sizes); part of ``make bench``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from kosmos_grpc import Coordinator, runtime

from . import harness
from .core import PAYLOAD  # the same payload, so the figures compare with core's "mesh 1 hop"
from .harness import (
    Result,
    alternate,
    columns,
    concurrent,
    on_off_arguments,
    on_off_report,
    pin,
    pin_client,
    placement,
    processes,
    sequential,
    wait_for_stop,
)

# The agent's memory holds this many message_ids (AgentServer's default idempotency_entries).
MEMORY = 10_000


async def serve(idempotent: bool) -> None:
    """The benchmark's echo agent on a free loopback port, remembering message_ids or not.

    Prints its address once listening, then serves until stdin closes or SIGTERM.
    """
    from kosmos_grpc import AgentServer, Idempotency, ServerSettings

    from .agents import BenchEcho

    server = AgentServer(BenchEcho(), ServerSettings(idempotency=Idempotency() if idempotent else None))
    await server.start()
    print(server.address, flush=True)
    await wait_for_stop()
    await server.stop(0)


@contextmanager
def servers(cpu: int | None) -> Iterator[dict[str, str]]:
    """Start the two agents, each in its own process (on ``cpu`` if given); stop them both by PID."""
    with processes(cpu) as start:
        yield {kind: start("benchmarks.resilience", "--serve", kind) for kind in ("on", "off")}


async def main(args: argparse.Namespace) -> None:
    with servers(None if args.cpus is None else args.cpus[1]) as where:
        on_client = Coordinator({"echo": where["on"]}, source_agent="bench")
        off_client = Coordinator({"echo": where["off"]}, source_agent="bench", resilience=False)
        assert on_client.resilience is not None
        assert off_client.resilience is None

        async def on() -> object:
            return (await on_client.delegate("echo", "echo", PAYLOAD)).result

        async def off() -> object:
            return (await off_client.delegate("echo", "echo", PAYLOAD)).result

        sides = {"on": on, "off": off}
        for call in sides.values():  # warm both channels and code paths; fill the agent's memory
            await sequential(call, 200, Result())
            await concurrent(call, MEMORY + 2 * args.inflight, args.inflight, Result())
        results = await alternate(sides, args.rounds, args.calls, args.inflight)
        breaker = on_client.resilience.breaker("echo")
        await on_client.close()
        await off_client.close()

    print(
        f"\nKOSMOS resilience benchmark: {args.rounds} rounds x {args.calls} calls, {args.inflight} in flight; "
        f"agents on {runtime.event_loop_name()}; {placement(args.cpus, 'agents')}"
    )
    print(columns("/ off"))
    print("one hop: client -> echo agent")
    print("  on:  Coordinator() (tenacity retry policy + circuit breaker) -> agent with idempotency 300 s")
    print("  off: Coordinator(resilience=False)                          -> agent with idempotency_seconds=None")
    on_off_report(results, args.inflight, 1.10)
    print(f"  the on side's breaker at the end: {breaker.current().name}, {breaker.failures} failures in a row")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_off_arguments(parser, ["on", "off"])
    args = parser.parse_args()
    if args.serve:  # one of the two agents, in a process of its own, on the loop `kosmos serve` uses
        pin(args.cpu)  # before gRPC starts any thread: its threads inherit it
        runtime.run(serve(args.serve == "on"))
        return
    args.cpus = pin_client(args.pin)
    harness.run(main(args))


if __name__ == "__main__":
    harness.main(cli, "benchmarks.resilience")
