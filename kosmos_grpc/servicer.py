"""AgentService for one agent: each envelope checked and routed, then served through the inbound chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc._grpc import abort, set_status
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bounds import DEFAULT_MAX_PAYLOAD_VALUES, DEFAULT_MAX_TTL_MS
from kosmos_grpc.context import Context
from kosmos_grpc.deadlines import past_deadline, timer_for
from kosmos_grpc.envelope import DEFAULT_MAX_HOPS, DEFAULT_PAYLOAD_LIMIT, validate_and_fill
from kosmos_grpc.errors import (
    ActionNotFound,
    AgentNotFound,
    KosmosError,
    SlowConsumer,
    WrongCallKind,
)
from kosmos_grpc.interceptors.handlers import Handlers, action_failed, fill_result
from kosmos_grpc.interceptors.inbound import ServedCall
from kosmos_grpc.interceptors.payload_schema import payload_checks
from kosmos_grpc.interceptors.server_chain import server_chain
from kosmos_grpc.quoting import echo
from kosmos_grpc.resilience import CircuitState
from kosmos_grpc.stream_watch import StreamWatch
from kosmos_grpc.telemetry.bursts import BurstLog
from kosmos_grpc.telemetry.logs import current_call

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import grpc

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.admission import Admission
    from kosmos_grpc.agent import Agent
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.client import Coordinator
    from kosmos_grpc.idempotency import ExecutedCalls
    from kosmos_grpc.interceptors.server_chain import InboundFactory

__all__ = ["AgentServicer"]

log = logging.getLogger(__name__)

#: The longest a stream may run, whatever its TTL, and how long one write may wait for a client
#: that reads nothing before the stream is ended (``[mesh] max_stream_seconds``, ``stream_idle_seconds``).
DEFAULT_MAX_STREAM_SECONDS = 3600.0
DEFAULT_STREAM_IDLE_SECONDS = 30.0


class AgentServicer:
    """Serves Execute, Stream and Describe for ``agent``.

    A request whose envelope breaks a rule, names another agent or an action this one lacks is
    refused here, naming the field; the rest go through the chain of
    :func:`~kosmos_grpc.interceptors.server_chain.server_chain`.
    """

    def __init__(
        self,
        agent: Agent,
        coordinator: Coordinator,
        *,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        max_payload_values: int = DEFAULT_MAX_PAYLOAD_VALUES,
        max_ttl_ms: int = DEFAULT_MAX_TTL_MS,
        admission: Admission | None = None,
        executed: ExecutedCalls[agent_pb2.ExecuteResponse] | None = None,
        telemetry: bool = True,
        interceptors: Sequence[InboundFactory] = (),
        intercepted: bool = False,
        max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
        stream_idle_seconds: float | None = DEFAULT_STREAM_IDLE_SECONDS,
        max_hops: int = DEFAULT_MAX_HOPS,
    ) -> None:
        self.agent = agent
        #: Warnings said once per burst (streams ended because their clients were not reading).
        self.bursts = BurstLog(log)
        self.max_stream_seconds = max_stream_seconds
        self.stream_idle_seconds = stream_idle_seconds
        self.coordinator = coordinator
        self.payload_limit = payload_limit
        self.max_payload_values = max_payload_values
        self.max_ttl_ms = max_ttl_ms
        #: The event bus handlers reach through ``ctx.bus``, once the server has one.
        self.bus: EventBus | None = None
        self.handlers = Handlers(agent)
        self.admission = admission
        self.executed = executed
        self.chain = server_chain(
            self.handlers,
            agent=agent.name,
            telemetry=telemetry,
            interceptors=interceptors,
            executed=executed,
            admission=admission,
            running=lambda: self.handlers.running,
            intercepted=intercepted,
            max_hops=max_hops,
            payload_checks=payload_checks(agent.name, agent.actions),
        )
        self._card = _card(agent)
        #: When this process began serving the agent (seconds since the epoch), and how often
        #: ``kosmos up`` restarted the agent before it (the supervisor says so in its handshake).
        self.started = time.time()
        self.restarts = 0
        # Looked up on every call: kept here rather than read through self.agent each time.
        self._name = agent.name
        self._actions = agent.actions

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self.handlers.running

    def close(self) -> None:
        """Let go of what the chain holds (the gauges): the server has stopped."""
        self.chain.close()

    def _admit(self, message: envelope_pb2.AgentMessage, context: grpc.aio.ServicerContext[Any, Any]) -> ServedCall:
        """Validate the envelope and find its action: the call, ready for the chain."""
        # max_values=None: the deserializer counted the payload's values off the wire (_grpc.refusing).
        ttl_left = validate_and_fill(
            message, payload_limit=self.payload_limit, max_values=None, max_ttl_ms=self.max_ttl_ms
        )
        name = self._name
        target = message.target_agent
        if target and target != name:
            raise AgentNotFound(
                f"target_agent {echo(target)} is not served here (this is {name!r})", metadata={"field": "target_agent"}
            )
        spec = self._actions.get(message.action)
        if spec is None:
            known = ", ".join(sorted(self._actions)) or "none"
            raise ActionNotFound(
                f"agent {name!r} has no action {echo(message.action)} (actions: {known})", metadata={"field": "action"}
            )
        timer, left = timer_for(context.time_remaining(), ttl_left)
        ctx = Context(message, name, time.monotonic() + left, self.coordinator, self.bus)
        current_call.set(ctx)  # every line logged from here on names the call (each runs in a task of its own)
        return ServedCall(message, context, spec, ctx, timer)

    def _failure(self, exc: Exception, message: envelope_pb2.AgentMessage) -> KosmosError:
        """What the caller is told: a mesh error as it is (without its traceback), a fault of ours as ActionFailed."""
        if isinstance(exc, KosmosError):
            return _bare(exc)
        return action_failed(self._name, message.action, exc)

    async def Execute(
        self, request: agent_pb2.ExecuteRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        """Run a unary action."""
        if isinstance(request, KosmosError):  # bytes the deserializer would not take
            await abort(context, request)
        message = request.message
        try:
            call = self._admit(message, context)
            if call.spec.streaming:
                raise WrongCallKind(
                    f"action {message.action!r} streams: call Stream instead of Execute", metadata={"field": "action"}
                )
            return await self.chain.execute(call)
        except Exception as exc:
            error = self._failure(exc, message)
        await abort(context, error)

    async def Stream(
        self, request: agent_pb2.StreamRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.StreamResponse]:
        """Run an action and write its chunks as they are made, then the final marker.

        An async generator that yields nothing, for grpc.aio and for the ``grpc.aio`` server
        interceptors that expect a stream to be one (opentelemetry-instrumentation-grpc's): the
        chunks go out through ``context.write`` (see :meth:`_stream`).
        """
        await self._stream(request, context)
        return
        yield

    async def _stream(
        self, request: agent_pb2.StreamRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Stream's body: the action's chunks written as they are made, then the final marker.

        Written with ``context.write`` under a :class:`StreamWatch`, not yielded: the stream ends
        at its deadline, or when a client leaves a write waiting ``stream_idle_seconds``, even
        when that client reads nothing. Its status is set, never awaited (``abort`` would wait
        behind the chunks the client is not reading), so the handler and its slot are let go at
        once; at most one chunk stays queued in gRPC until the client reads or hangs up.
        """
        if isinstance(request, KosmosError):  # bytes the deserializer would not take
            set_status(context, request)
            return
        message = request.message
        call: ServedCall | None = None
        watch: StreamWatch | None = None
        try:
            call = self._admit(message, context)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_stream_seconds
            if call.ctx.deadline is not None:  # the same clock: asyncio's loop runs on time.monotonic
                deadline = min(deadline, call.ctx.deadline)
            watch = StreamWatch(deadline, self.stream_idle_seconds)
            items = await self.chain.open_stream(call)
            # Read once: every chunk repeats them, and message attribute reads are not free.
            agent, action = self._name, call.spec.name
            message_id, correlation_id = message.message_id, message.correlation_id
            write = context.write
            sequence = 0
            # Closed on the way out, cancellation included, so the action's own cleanup (and
            # the cancelling of any stream it relays) runs now rather than at garbage collection.
            async with contextlib.aclosing(items):
                async for item in items:
                    response = _chunk(agent, message_id, correlation_id, sequence)
                    fill_result(response.chunk.data, item, agent, action)
                    if sequence == 0 and call.on_first is not None:
                        for first in call.on_first:
                            first()
                    sequence += 1
                    watch.writing_since = loop.time()
                    try:
                        await write(response)
                    except (asyncio.CancelledError, KosmosError):
                        raise
                    except Exception:  # the call is over under us: the client hung up
                        raise _ClientGone from None
                    watch.writing_since = None
                    if watch.fired is not None:  # the handler swallowed the watch's cancellation
                        raise asyncio.CancelledError
            # Every chunk is made: the stream is done, whatever becomes of its final marker.
            call.ended("OK", None, True)  # its slot is free now
            # The final marker goes whenever the client reads it, unwatched: the stream's outcome
            # is settled, and what waits here is one small message, counted against the
            # connection until gRPC is done with the call.
            watch.close()
            final = _chunk(agent, message_id, correlation_id, sequence)
            final.chunk.final = True
            with contextlib.suppress(Exception):  # the client may hang up before it: nothing is lost
                await write(final)
            return None
        except _ClientGone:
            assert call is not None
            call.ended("CANCELLED", None, True)
            return None
        except asyncio.CancelledError:
            if watch is None or not watch.expired():
                if call is not None:
                    call.ended("CANCELLED", None, True)
                raise
            error: KosmosError = self._stalled(message, watch)
        except Exception as exc:
            error = self._failure(exc, message)
        finally:
            if watch is not None:
                watch.close()
        if call is not None:
            call.ended(error.code.name, error, True)
        set_status(context, error)

    def _stalled(self, message: envelope_pb2.AgentMessage, watch: StreamWatch) -> KosmosError:
        """The error of a stream its watch ended: past its deadline, or its client not reading."""
        action = f"{self._name}.{message.action}"
        if watch.writing_since is None or watch.fired == "deadline":
            if watch.writing_since is not None:
                self.bursts.warn(
                    f"late {action}",
                    "ended a stream of %s: its deadline passed while the client was not reading",
                    action,
                )
            return past_deadline(self._name, message.action)
        self.bursts.warn(
            f"idle {action}", "ended a stream of %s: the client read nothing for %g s", action, self.stream_idle_seconds
        )
        return SlowConsumer(
            f"{action} was ended: the client read nothing for {self.stream_idle_seconds:g} s (stream_idle_seconds)",
            metadata={"limit": "stream_idle_seconds"},
        )

    async def Describe(
        self, request: agent_pb2.DescribeRequest | KosmosError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.DescribeResponse:
        """The agent's card, and its circuits to the agents it has called."""
        if isinstance(request, KosmosError):
            await abort(context, request)
        response = agent_pb2.DescribeResponse(card=self._card)
        response.process.pid = os.getpid()
        response.process.started.FromNanoseconds(int(self.started * 1e9))
        response.process.restarts = self.restarts
        resilience = self.coordinator.resilience
        for target, breaker in sorted((resilience.breakers if resilience else {}).items()):
            response.circuits.add(
                target=target,
                state=_CIRCUIT_STATES[breaker.current()],
                failures=breaker.failures,
                retry_in_seconds=breaker.retry_in(),
            )
        return response


_CIRCUIT_STATES = {
    CircuitState.CLOSED: agent_pb2.CIRCUIT_STATE_CLOSED,
    CircuitState.HALF_OPEN: agent_pb2.CIRCUIT_STATE_HALF_OPEN,
    CircuitState.OPEN: agent_pb2.CIRCUIT_STATE_OPEN,
}


def _card(agent: Agent) -> agent_pb2.AgentCard:
    card = agent_pb2.AgentCard(name=agent.name, description=agent.description, version=agent.version)
    for spec in agent.actions.values():
        item = card.actions.add(name=spec.name, description=spec.description, streaming=spec.streaming)
        if spec.input_schema is not None:
            item.input_schema.update(spec.input_schema)
    return card


class _ClientGone(Exception):
    """A stream's write failed: its call ended under it (the client hung up)."""


def _chunk(agent: str, message_id: str, correlation_id: str, sequence: int) -> agent_pb2.StreamResponse:
    response = agent_pb2.StreamResponse()
    chunk = response.chunk
    chunk.agent = agent
    chunk.request_message_id = message_id
    chunk.correlation_id = correlation_id
    chunk.sequence = sequence
    return response


def _bare(error: KosmosError) -> KosmosError:
    """``error`` without its traceback and chained exceptions: it may be kept (for duplicates), they need not."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error
