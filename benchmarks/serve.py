"""One benchmark server per process: bare grpc.aio (echo, relay, stream), or a mesh agent.

Prints its address on stdout once listening, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from kosmos_grpc import AgentServer, load_agent, runtime
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bus import BrokerServer

ECHO = "/bench.Bare/Echo"
ECHO_BYTES = "/bench.Bare/EchoBytes"
RELAY = "/bench.Bare/Relay"
STREAM = "/bench.Bare/Stream"

# What a hand-written grpc.aio service with the same messages would register.
EXECUTE_CODEC = {
    "request_deserializer": agent_pb2.ExecuteRequest.FromString,
    "response_serializer": agent_pb2.ExecuteResponse.SerializeToString,
}
CLIENT_CODEC = {
    "request_serializer": agent_pb2.ExecuteRequest.SerializeToString,
    "response_deserializer": agent_pb2.ExecuteResponse.FromString,
}


async def _wait_for_stop() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def eof() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(eof())
    await stop.wait()
    watcher.cancel()


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
    await _wait_for_stop()
    await server.stop(0)
    if channel:
        await channel.close()


async def broker() -> None:
    """The embedded event broker on a free port."""
    server = BrokerServer()
    await server.start()
    print(server.address, flush=True)
    await _wait_for_stop()
    await server.stop(0)


async def agent(spec: str, registry: dict[str, str]) -> None:
    """A mesh agent on a free port, knowing ``registry``."""
    server = AgentServer(load_agent(spec), address="127.0.0.1:0", registry=registry)
    await server.start()
    print(server.address, flush=True)
    await _wait_for_stop()
    await server.stop(0)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "broker":  # the embedded event broker, as `kosmos broker` runs it
        runtime.run(broker())
    elif kind == "bare":  # bare grpc.aio, on asyncio's own loop as a plain grpcio service runs
        asyncio.run(bare(sys.argv[2] if len(sys.argv) > 2 else None))
    elif kind == "bare-uvloop":
        import uvloop

        uvloop.run(bare(sys.argv[2] if len(sys.argv) > 2 else None))
    else:  # a mesh agent, on the loop `kosmos serve` uses
        runtime.run(agent(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
