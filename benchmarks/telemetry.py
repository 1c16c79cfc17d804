"""What observability costs a call: tracing and metrics on against off, in one run.

On: a default ``Coordinator`` (a ``delegate.echo.echo`` span whose W3C context travels in the
call's metadata and whose trace id becomes the envelope's, and the delegation metrics) in a
process whose tracer provider is set up as ``kosmos`` sets it up, calling an echo agent whose
calls get SERVER spans and in-flight counts. Off: ``Coordinator(telemetry=False)`` calling an
agent served with ``telemetry=False``. Resilience is on for both.

With ``--grpc-instrumentation``, what the switch ``[telemetry] grpc_instrumentation = true``
costs: on, opentelemetry-instrumentation-grpc's aio interceptors on the client's channel and on
the agent's server (a CLIENT and a SERVER span more per call); off, none. The mesh's own
tracing and metrics are on for both sides.

By default nothing is exported, as when no ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: trace ids
and context still flow, nothing is recorded. With ``--export`` every span is recorded and sent
over OTLP/gRPC to a collector process (a sink that counts them) on the agents' CPU.

Pinned like the other benchmarks. Run with ``python -m benchmarks.telemetry [--export]
[--grpc-instrumentation]``; the first two are part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kosmos_grpc import Coordinator, runtime

from . import harness
from .core import PAYLOAD
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


async def serve(kind: str) -> None:
    """One server process: the echo agent with telemetry ``on`` or ``off`` or ``on`` with the library's
    interceptors (``instrumented``), or the OTLP ``sink``."""
    import grpc

    if kind == "sink":
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        class Sink(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request: Any, context: Any) -> Any:
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"127.0.0.1:{port}", flush=True)
        await wait_for_stop()
        await server.stop(0)
        return
    from kosmos_grpc import AgentServer, ServerSettings
    from kosmos_grpc.telemetry import configure_tracing
    from kosmos_grpc.telemetry.instrumentation import grpc_server_interceptors

    from .agents import BenchEcho

    traced = kind != "off"
    provider = configure_tracing("echo") if traced else None
    interceptors = grpc_server_interceptors() if kind == "instrumented" else []
    agent = AgentServer(BenchEcho(), ServerSettings(telemetry=traced), grpc_interceptors=interceptors)
    await agent.start()
    print(agent.address, flush=True)
    await wait_for_stop()
    await agent.stop(0)
    if provider is not None:
        provider.shutdown()


@contextmanager
def servers(cpu: int | None, export: bool, kinds: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """The OTLP sink (with ``export``) and an agent of each kind, each in its own process; stopped by PID."""
    with processes(cpu) as start:
        if export:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{start('benchmarks.telemetry', '--serve', 'sink')}"
        else:
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        yield {kind: start("benchmarks.telemetry", "--serve", kind) for kind in kinds}


async def main(args: argparse.Namespace) -> None:
    from kosmos_grpc.telemetry import configure_tracing
    from kosmos_grpc.telemetry.instrumentation import grpc_client_interceptors

    library = args.grpc_instrumentation
    kinds = ("instrumented", "on") if library else ("on", "off")
    with servers(None if args.cpus is None else args.cpus[1], args.export, kinds) as where:
        provider = configure_tracing("bench")
        if library:  # the switch on against off, the mesh's telemetry on for both
            on_client = Coordinator(
                {"echo": where["instrumented"]}, source_agent="bench", grpc_interceptors=grpc_client_interceptors()
            )
            off_client = Coordinator({"echo": where["on"]}, source_agent="bench")
        else:
            on_client = Coordinator({"echo": where["on"]}, source_agent="bench")
            off_client = Coordinator({"echo": where["off"]}, source_agent="bench", telemetry=False)

        async def on() -> object:
            return (await on_client.delegate("echo", "echo", PAYLOAD)).result

        async def off() -> object:
            return (await off_client.delegate("echo", "echo", PAYLOAD)).result

        sides = {"on": on, "off": off}
        for call in sides.values():  # warm both channels and code paths
            await sequential(call, 200, Result())
            await concurrent(call, 4 * args.inflight, args.inflight, Result())
        results = await alternate(sides, args.rounds, args.calls, args.inflight)
        await on_client.close()
        await off_client.close()
        if provider is not None:
            provider.shutdown()

    exported = "every span recorded and exported over OTLP/gRPC" if args.export else "nothing exported (the default)"
    print(
        f"\nKOSMOS telemetry benchmark: {args.rounds} rounds x {args.calls} calls, {args.inflight} in flight; "
        f"agents on {runtime.event_loop_name()}; {placement(args.cpus, 'agents')}"
    )
    print(columns("/ off"))
    if library:
        compared = (
            "opentelemetry-instrumentation-grpc's interceptors on client and agent against none, "
            "the mesh's tracing and metrics on for both"
        )
    else:
        compared = "tracing and metrics on against off"
    print(f"one hop: client -> echo agent; {compared}; {exported}")
    on_off_report(results, args.inflight, 1.15)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_off_arguments(parser, ["on", "off", "instrumented", "sink"])
    parser.add_argument("--export", action="store_true", help="record every span and export it over OTLP")
    parser.add_argument(
        "--grpc-instrumentation",
        action="store_true",
        help="opentelemetry-instrumentation-grpc's interceptors on client and agent against none (tracing on for both)",
    )
    args = parser.parse_args()
    if args.serve:
        pin(args.cpu)  # before gRPC starts any thread: its threads inherit it
        runtime.run(serve(args.serve))
        return
    args.cpus = pin_client(args.pin)
    harness.run(main(args))


if __name__ == "__main__":
    harness.main(cli, "benchmarks.telemetry")
