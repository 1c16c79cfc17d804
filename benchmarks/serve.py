"""One benchmark server per process: bare grpc.aio (echo, relay, stream), the event broker, or a mesh agent.

Prints its address on stdout once listening, then serves until stdin closes or SIGTERM.
Started by ``benchmarks.harness.processes``: ``python -m benchmarks.serve KIND [ARG ...] [--cpu N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, TypedDict

import grpc

from kosmos_grpc import AgentServer, load_agent, runtime
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bus import BrokerServer

from .harness import pin, wait_for_stop

ECHO = "/bench.Bare/Echo"
ECHO_BYTES = "/bench.Bare/EchoBytes"
RELAY = "/bench.Bare/Relay"
STREAM = "/bench.Bare/Stream"


class ServerCodec(TypedDict):
    request_deserializer: Callable[[bytes], agent_pb2.ExecuteRequest]
    response_serializer: Callable[[agent_pb2.ExecuteResponse], bytes]


class ClientCodec(TypedDict):
    request_serializer: Callable[[agent_pb2.ExecuteRequest], bytes]
    response_deserializer: Callable[[bytes], agent_pb2.ExecuteResponse]


# What a hand-written grpc.aio service with the same messages would register.
EXECUTE_CODEC: ServerCodec = {
    "request_deserializer": agent_pb2.ExecuteRequest.FromString,
    "response_serializer": agent_pb2.ExecuteResponse.SerializeToString,
}
CLIENT_CODEC: ClientCodec = {
    "request_serializer": agent_pb2.ExecuteRequest.SerializeToString,
    "response_deserializer": agent_pb2.ExecuteResponse.FromString,
}


async def bare(target: str | None) -> None:
    """Bare grpc.aio: a protobuf echo, a raw-bytes echo, a relay to ``target``'s echo, and a stream.

    The echo answers as a minimal hand-written service would: the payload copied into the
    response, with no validation, routing, deadlines or conversion to Python dicts.
    """
    channel = grpc.aio.insecure_channel(target) if target else None
    forward = channel.unary_unary(ECHO, **CLIENT_CODEC) if channel else None

    async def echo(request: agent_pb2.ExecuteRequest, context: Any) -> agent_pb2.ExecuteResponse:
        response = agent_pb2.ExecuteResponse()
        response.response.agent = "echo"
        response.response.request_message_id = request.message.message_id
        response.response.correlation_id = request.message.correlation_id
        response.response.result.CopyFrom(request.message.payload)
        return response

    async def echo_bytes(request: bytes, context: Any) -> bytes:
        return request

    async def relay(request: agent_pb2.ExecuteRequest, context: Any) -> agent_pb2.ExecuteResponse:
        assert forward is not None
        reply: agent_pb2.ExecuteResponse = await forward(request, timeout=context.time_remaining())
        return reply

    async def stream(request: agent_pb2.StreamRequest, context: Any) -> AsyncIterator[agent_pb2.StreamResponse]:
        chunk = agent_pb2.StreamResponse()
        chunk.chunk.agent = "echo"
        chunk.chunk.request_message_id = request.message.message_id
        chunk.chunk.correlation_id = request.message.correlation_id
        chunk.chunk.data.CopyFrom(request.message.payload.fields["chunk"].struct_value)
        for sequence in range(int(request.message.payload.fields["n"].number_value)):
            chunk.chunk.sequence = sequence
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, **EXECUTE_CODEC),
            "EchoBytes": grpc.unary_unary_rpc_method_handler(echo_bytes),
            "Relay": grpc.unary_unary_rpc_method_handler(relay, **EXECUTE_CODEC),
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=agent_pb2.StreamRequest.FromString,
                response_serializer=agent_pb2.StreamResponse.SerializeToString,
            ),
        },
    )
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await wait_for_stop()
    await server.stop(0)
    if channel:
        await channel.close()


async def broker(stall: float | None = None) -> None:
    """The embedded event broker on a free port (``stall``: its subscriber_stall_seconds)."""
    server = BrokerServer() if stall is None else BrokerServer(subscriber_stall_seconds=stall)
    await server.start()
    print(server.address, flush=True)
    await wait_for_stop()
    await server.stop(0)


async def agent(spec: str, registry: dict[str, str]) -> None:
    """A mesh agent on a free port, knowing ``registry``."""
    server = AgentServer(load_agent(spec), registry=registry)
    await server.start()
    print(server.address, flush=True)
    await wait_for_stop()
    await server.stop(0)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["bare", "bare-uvloop", "broker", "agent"])
    parser.add_argument(
        "args",
        nargs="*",
        help="bare: the echo to relay to; agent: its spec, then a JSON registry; broker: stall seconds",
    )
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind == "agent" and not args.args:
        parser.error("agent needs a spec, module:Class")
    pin(args.cpu)  # before gRPC starts any thread: its threads inherit it
    target = args.args[0] if args.args else None
    if args.kind == "broker":  # the embedded event broker, as `kosmos broker` runs it
        runtime.run(broker(float(target) if target else None))
    elif args.kind == "bare":  # bare grpc.aio, on asyncio's own loop as a plain grpcio service runs
        asyncio.run(bare(target))
    elif args.kind == "bare-uvloop":
        import uvloop

        uvloop.run(bare(target))
    else:  # a mesh agent, on the loop `kosmos serve` uses
        runtime.run(agent(args.args[0], json.loads(args.args[1]) if len(args.args) > 1 else {}))


if __name__ == "__main__":
    # A Ctrl-C at the terminal reaches this server too; until it serves (wait_for_stop then stops it
    # on SIGINT) it is ignored, else it could land in gRPC's own callbacks as a traceback. The
    # benchmark that started it terminates it either way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cli()
