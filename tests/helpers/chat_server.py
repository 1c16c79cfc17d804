"""A small OpenAI-compatible chat-completions endpoint (aiohttp, loopback) that streams a scripted answer.

It speaks what a real one does: ``POST /v1/chat/completions`` with ``"stream": true`` answered as
``text/event-stream``, each token a ``data: {"choices":[{"delta":{"content":...}}]}`` event, then
``data: [DONE]``. The script says how it ends (done, the connection cut, a garbled event, an HTTP
error) and which tokens wait on a gate the test opens, so a test can prove each token reached it
before the next was even made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = ["ChatServer", "Script"]

#: How long a gated token waits for its gate before the server gives up (a test that forgot it fails).
GATE_SECONDS = 5.0


@dataclass
class Script:
    """What the endpoint answers: ``tokens`` one event each, then ``end``.

    ``gates[i]``: token ``i`` is made only once that event is set. ``end``: ``done`` sends
    ``data: [DONE]``; ``cut`` closes the connection with the body unfinished; ``garbage`` sends an
    event whose data is not JSON; ``hang`` sends nothing more until the server stops (GATE_SECONDS at most).
    ``status`` other than 200 answers that status with ``body`` instead of streaming.
    """

    tokens: list[str] = field(default_factory=list)
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    end: Literal["done", "cut", "garbage", "hang"] = "done"
    status: int = 200
    body: str = ""


class ChatServer:
    """Serves ``script`` on a free loopback port; records each request's JSON body and headers."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: The tokens written so far, in order.
        self.produced: list[str] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.url = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1, port 0; the base URL (``http://127.0.0.1:<port>/v1``)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> ChatServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        script = self.script
        if script.status != 200:
            return web.Response(status=script.status, text=script.body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await self._event(response, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for index, token in enumerate(script.tokens):
            if index in script.gates:
                await asyncio.wait_for(script.gates[index].wait(), GATE_SECONDS)
            await self._event(response, {"choices": [{"index": 0, "delta": {"content": token}}]})
            self.produced.append(token)
        if script.end == "cut":
            assert request.transport is not None
            request.transport.close()  # mid-body: the chunked encoding is left unfinished
            return response
        if script.end == "garbage":
            await response.write(b'data: {"choices": [{"delta": {"content": "unfinished\n\n')
        elif script.end == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), GATE_SECONDS)
        else:
            await self._event(response, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())
