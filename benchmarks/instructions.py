"""CPU instructions per call, counted by valgrind's callgrind: repeatable where timings are not.

Client and server run in one process here, so a figure is the whole round trip's work. Each
workload runs twice, with few and with many calls, and the difference is divided out, so
start-up costs cancel. Run with ``make bench-instructions`` (needs valgrind; a few minutes).

``--grpc-instrumentation``: the mesh's calls and chunks in a process traced as ``kosmos`` sets
it up (nothing exported), with opentelemetry-instrumentation-grpc's interceptors on the channel
and the server against without them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

from kosmos_grpc import AgentServer, Coordinator, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2

from .agents import BenchEcho
from .core import PAYLOAD
from .serve import EXECUTE_CODEC

SERVICE = "bench.Bare"


async def workload(kind: str, count: int) -> None:
    """``count`` calls (or chunks) of one kind, after a warm-up."""
    import grpc

    request = agent_pb2.ExecuteRequest(message=new_message("echo", PAYLOAD, target_agent="echo"))
    if kind.startswith("bare"):

        async def echo(req: agent_pb2.ExecuteRequest, context: object) -> agent_pb2.ExecuteResponse:
            response = agent_pb2.ExecuteResponse()
            response.response.result.CopyFrom(req.message.payload)
            return response

        async def chunks(req: agent_pb2.ExecuteRequest, context: object) -> AsyncIterator[agent_pb2.StreamResponse]:
            reply = agent_pb2.StreamResponse()
            reply.chunk.data.CopyFrom(req.message.payload)
            for sequence in range(count + 50):
                reply.chunk.sequence = sequence
                yield reply

        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, **EXECUTE_CODEC),
            "Chunks": grpc.unary_stream_rpc_method_handler(
                chunks,
                request_deserializer=agent_pb2.ExecuteRequest.FromString,
                response_serializer=agent_pb2.StreamResponse.SerializeToString,
            ),
        }
        server = grpc.aio.server(handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        if kind == "bare-unary":
            call = channel.unary_unary(
                f"/{SERVICE}/Echo",
                request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
                response_deserializer=agent_pb2.ExecuteResponse.FromString,
            )
            for _ in range(count + 50):
                await call(request, timeout=30)
        else:
            stream = channel.unary_stream(
                f"/{SERVICE}/Chunks",
                request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
                response_deserializer=agent_pb2.StreamResponse.FromString,
            )
            async for _ in stream(request, timeout=600):
                pass
        await channel.close()
        await server.stop(0)
        return
    servers: list[grpc.aio.ServerInterceptor] = []
    clients: list[grpc.aio.ClientInterceptor] = []
    if kind.startswith(("traced", "instrumented")):
        from kosmos_grpc.telemetry import configure_tracing

        configure_tracing("bench")
        if kind.startswith("instrumented"):
            from kosmos_grpc.telemetry.instrumentation import grpc_client_interceptors, grpc_server_interceptors

            servers, clients = grpc_server_interceptors(), grpc_client_interceptors()
    agent = AgentServer(BenchEcho(), grpc_interceptors=servers)
    await agent.start()
    async with Coordinator({"echo": agent.address}, grpc_interceptors=clients) as client:
        if kind.endswith("-unary"):
            for _ in range(count + 50):
                (await client.delegate("echo", "echo", PAYLOAD)).result  # noqa: B018 - the result is read
        else:
            async for chunk in client.stream("echo", "chunks", {"n": count + 50, "chunk": PAYLOAD}, timeout_ms=600_000):
                chunk.data  # noqa: B018 - the data is read
    await agent.stop(0)


def instructions(kind: str, count: int) -> int:
    """Instructions callgrind counts for the whole process running ``count`` of ``kind``."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            __spec__.name,
            "--run",
            kind,
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {result.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--grpc-instrumentation",
        action="store_true",
        help="traced calls with opentelemetry-instrumentation-grpc's interceptors against without",
    )
    args = parser.parse_args()
    if args.run:
        asyncio.run(workload(args.run[0], int(args.run[1])))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    few, many = 200, 1200
    if args.grpc_instrumentation:
        library()
        return
    print("\nCPU instructions per call (client and server in one process, callgrind)")
    per = {}
    for kind in ("bare-unary", "mesh-unary", "bare-stream", "mesh-stream"):
        per[kind] = (instructions(kind, many) - instructions(kind, few)) / (many - few)
    print(
        f"  unary call:   bare {per['bare-unary']:9.0f}   mesh {per['mesh-unary']:9.0f}   "
        f"{per['mesh-unary'] / per['bare-unary']:.2f}x"
    )
    print(
        f"  stream chunk: bare {per['bare-stream']:9.0f}   mesh {per['mesh-stream']:9.0f}   "
        f"{per['mesh-stream'] / per['bare-stream']:.2f}x"
    )


def library(few: int = 200, many: int = 1200) -> None:
    """Per call and per chunk: traced, with the library's interceptors against without."""
    print("\nCPU instructions per call, traced as kosmos sets it up, nothing exported (callgrind)")
    per = {}
    for kind in ("traced-unary", "instrumented-unary", "traced-stream", "instrumented-stream"):
        per[kind] = (instructions(kind, many) - instructions(kind, few)) / (many - few)
    for shape, what in (("unary", "unary call:  "), ("stream", "stream chunk:")):
        off, on = per[f"traced-{shape}"], per[f"instrumented-{shape}"]
        print(f"  {what} without {off:9.0f}   with the library's interceptors {on:9.0f}   {on / off:.2f}x")


if __name__ == "__main__":
    main()
