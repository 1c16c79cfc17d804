"""One benchmark server per process: bare grpc.aio echo/relay/stream, or a mesh agent.

Prints its address on stdout once listening, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import grpc

from kosmos_grpc import AgentServer, load_agent, runtime

ECHO = "/bench.Bare/Echo"
RELAY = "/bench.Bare/Relay"
STREAM = "/bench.Bare/Stream"


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
    """A bare server: unary echo of raw bytes, a relay to ``target``'s echo, and a stream."""
    channel = grpc.aio.insecure_channel(target) if target else None
    forward = channel.unary_unary(ECHO) if channel else None

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def relay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        assert forward is not None
        reply: bytes = await forward(request, timeout=context.time_remaining())
        return reply

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        count, _, chunk = request.partition(b":")
        for _ in range(int(count)):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Relay": grpc.unary_unary_rpc_method_handler(relay),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
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


async def agent(spec: str, registry: dict[str, str]) -> None:
    """A mesh agent on a free port, knowing ``registry``."""
    server = AgentServer(load_agent(spec), address="127.0.0.1:0", registry=registry)
    await server.start()
    print(server.address, flush=True)
    await _wait_for_stop()
    await server.stop(0)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "bare":  # bare grpc.aio, on asyncio's own loop as a plain grpcio service runs
        asyncio.run(bare(sys.argv[2] if len(sys.argv) > 2 else None))
    elif kind == "bare-uvloop":
        import uvloop

        uvloop.run(bare(sys.argv[2] if len(sys.argv) > 2 else None))
    else:  # a mesh agent, on the loop `kosmos serve` uses
        runtime.run(agent(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
