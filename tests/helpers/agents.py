"""Agents that exist only for the tests: echo, slow, gated and failing behaviours."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from kosmos_grpc import (
    Agent,
    AgentUnavailable,
    Chunk,
    Context,
    InvalidEnvelope,
    ResourceExhausted,
    action,
)


class Echo(Agent):
    """Echoes what it is sent."""

    name = "echo"

    @action
    async def echo(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Return the payload unchanged."""
        return payload

    @action
    async def count(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream n chunks numbered from 0."""
        for i in range(int(payload.get("n", 3))):
            yield {"i": i}

    @action
    async def whoami(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """What the handler sees of the call."""
        return {
            "correlation_id": ctx.correlation_id,
            "message_id": ctx.envelope.message_id,
            "priority": ctx.priority.name,
            "time_remaining": ctx.time_remaining(),
            "trace_id": ctx.envelope.trace_id,
        }

    @action
    async def sleep(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Sleep for payload.ms milliseconds, logging that it has started (at INFO, on ``tests.echo``)."""
        logging.getLogger("tests.echo").info("sleeping %d ms", payload.get("ms", 100))
        await asyncio.sleep(payload.get("ms", 100) / 1000)
        return {"slept_ms": payload.get("ms", 100)}

    @action
    async def boom(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Raise an unexpected exception."""
        raise RuntimeError("secret internal detail")

    @action
    async def own_timeout(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Raise a TimeoutError of the handler's own, long before any deadline."""
        raise TimeoutError("the handler's own timeout")

    @action
    async def not_json(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Return something a Struct cannot hold."""
        return {"value": object()}


class Probe(Agent):
    """Records what happens to its calls, and waits on gates the test opens."""

    name = "probe"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.gates = [asyncio.Event() for _ in range(5)]
        self.produced: list[int] = []
        self.seen_remaining: list[float | None] = []

    @action
    async def hang(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Wait far longer than any deadline, noting whether it was cancelled."""
        self.seen_remaining.append(ctx.time_remaining())
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {}

    @action
    async def hang_stream(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield one chunk, then wait far longer than any deadline."""
        self.started.set()
        yield {"i": 0}
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @action
    async def gated(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield chunk i only once gate i is open (gate 0 is opened here)."""
        for i in range(int(payload.get("n", 3))):
            if i:
                await self.gates[i].wait()
            self.produced.append(i)
            yield {"i": i}
        self.finished.set()

    @action
    async def work(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Wait for gate 0, then finish normally."""
        self.started.set()
        await self.gates[0].wait()
        self.finished.set()
        return {"done": True}


class Relay(Agent):
    """A relay for tests that changes what it passes on."""

    name = "relay"

    @action
    async def mark(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Relay a stream, adding ``marked: true`` to every other chunk and passing the rest as received."""
        async for chunk in ctx.client.stream(payload["agent"], payload["action"], payload.get("payload", {})):
            if chunk.sequence % 2:
                chunk.data["marked"] = True
            yield chunk


class LoudEcho(Echo):
    """Echo whose echo method is overridden without re-decorating it."""

    async def echo(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        return {"loud": True, **payload}


class Chatty(Agent):
    """Prints on start and prints a lot per call: its output must neither block it nor be lost."""

    name = "chatty"

    async def on_start(self) -> None:
        print("chatty: hello from on_start", flush=True)

    @action
    async def talk(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Print about 300 KiB, more than a pipe holds."""
        for i in range(3000):
            print(f"chatty line {i:05d} " + "x" * 90)
        return {"printed": 3000}


class Announcer(Agent):
    """Publishes what it is told to through ctx.bus."""

    name = "announcer"

    @action
    async def announce(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Publish payload.data on payload.subject, acknowledged."""
        message_id = await ctx.bus.publish(payload["subject"], payload["data"], acknowledge=True)
        return {"message_id": message_id}


class Flaky(Agent):
    """Fails the way it is told to a set number of times, then succeeds; records every call it runs."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls: list[str] = []  # the message_id of every call that ran
        self.effects = 0
        self.ran = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    @action
    async def fail_then_succeed(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Raise payload.error (unavailable, exhausted, internal, invalid) for the first payload.times calls.

        With payload.only, only the agent of that name fails.
        """
        self.calls.append(ctx.envelope.message_id)
        if payload.get("only", self.name) == self.name and len(self.calls) <= int(payload.get("times", 0)):
            kind = payload.get("error", "unavailable")
            if kind == "unavailable":
                raise AgentUnavailable("flaky is having a bad moment")
            if kind == "exhausted":
                raise ResourceExhausted("flaky is busy", retry_after=payload.get("retry_after_s"))
            if kind == "invalid":
                raise InvalidEnvelope("payload.times", "flaky does not like this payload")
            raise RuntimeError("flaky broke")
        return {"attempt": len(self.calls)}

    @action
    async def effect(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Perform a side effect (count it), then wait for the gate and answer."""
        self.calls.append(ctx.envelope.message_id)
        self.effects += 1
        self.ran.set()
        await self.gate.wait()
        return {"effects": self.effects}

    @action
    async def effect_stream(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Perform a side effect (count it), stream payload.chunks chunks, then fail if payload.fail."""
        self.calls.append(ctx.envelope.message_id)
        self.effects += 1
        self.ran.set()
        for i in range(int(payload.get("chunks", 2))):
            yield {"effects": self.effects, "i": i}
            await self.gate.wait()
        if payload.get("fail"):
            raise AgentUnavailable("flaky lost its way mid-stream")

    @action
    async def stream_after_failures(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Fail UNAVAILABLE for the first payload.times calls, before any chunk; then stream two."""
        self.calls.append(ctx.envelope.message_id)
        if len(self.calls) <= int(payload.get("times", 0)):
            raise AgentUnavailable("flaky is not ready to stream")
        for i in range(2):
            yield {"attempt": len(self.calls), "i": i}


class Queued(Agent):
    """Records the order its calls start in; each waits for the gate."""

    name = "queued"

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = asyncio.Event()
        self.running = asyncio.Event()

    @action
    async def job(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Note payload.tag, then wait for the gate."""
        self.order.append(str(payload.get("tag")))
        self.running.set()
        await self.gate.wait()
        return {"tag": payload.get("tag")}


class Forward(Agent):
    """A middle agent: passes a call on to another agent and returns its result."""

    name = "forward"

    @action
    async def forward(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Delegate payload.action to payload.agent with payload.payload."""
        response = await ctx.client.delegate(payload["agent"], payload["action"], payload.get("payload", {}))
        return response.result


def _seen_trace(ctx: Context) -> dict[str, str]:
    """The trace a handler is in: the current span's ids, else the envelope's trace_id."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}
    return {"trace_id": ctx.envelope.trace_id}


class Narrator(Agent):
    """Logs from inside its calls, on the ``tests.narrator`` logger, and says which trace it was in."""

    name = "narrator"
    log = logging.getLogger("tests.narrator")
    #: Its own provider, not the global one, so its spans are real whatever the test process set up.
    tracer = TracerProvider().get_tracer("tests.narrator")

    @action
    async def note(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Log payload.text at INFO."""
        self.log.info("noted %s", payload.get("text", ""))
        return _seen_trace(ctx)

    @action
    async def note_in_span(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Log payload.text at INFO inside a span of its own."""
        with self.tracer.start_as_current_span("narrating"):
            self.log.info("noted %s", payload.get("text", ""))
            return _seen_trace(ctx)

    @action
    async def recount(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream payload.n chunks, logging each."""
        for i in range(int(payload.get("n", 2))):
            self.log.info("chunk %d", i)
            yield {"i": i}
