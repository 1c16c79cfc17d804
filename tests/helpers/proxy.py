"""A TCP forwarder on loopback that a test can make swallow replies and then cut: a broken connection, for real."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """Forwards every connection on a free loopback port to ``target``.

    :meth:`swallow_replies` drops what the server sends from then on (the request goes
    through, its answer never arrives); :meth:`cut` closes every connection open now.
    """

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.swallowing = False
        self.swallowed = 0  # bytes dropped
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def swallow_replies(self) -> None:
        self.swallowing = True

    async def cut(self) -> None:
        """Close every open connection, both ways; new ones are forwarded normally again."""
        self.swallowing = False
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(0)

    async def stop(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target_port)
        self._writers += [writer, upstream_writer]
        for task in (
            asyncio.create_task(self._pump(reader, upstream_writer, replies=False)),
            asyncio.create_task(self._pump(upstream_reader, writer, replies=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if replies and self.swallowing:
                    self.swallowed += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
