"""AgentService for one agent: each envelope checked and routed, then served through the inbound chain."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kosmos_grpc._grpc import abort
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.bounds import DEFAULT_MAX_PAYLOAD_VALUES, DEFAULT_MAX_TTL_MS
from kosmos_grpc.calls import Chunk
from kosmos_grpc.context import Context
from kosmos_grpc.deadlines import timer_for
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, dict_to_struct, validate_and_fill
from kosmos_grpc.errors import ActionFailed, ActionNotFound, AgentNotFound, KosmosError, WrongCallKind, echo
from kosmos_grpc.interceptors.inbound import InboundInterceptor, ServedCall
from kosmos_grpc.interceptors.server_chain import server_chain
from kosmos_grpc.resilience import CircuitState
from kosmos_grpc.telemetry.logs import current_call

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

    import grpc
    from google.protobuf import struct_pb2

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.admission import Admission
    from kosmos_grpc.agent import Agent
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.client import Coordinator
    from kosmos_grpc.idempotency import ExecutedCalls
    from kosmos_grpc.interceptors.server_chain import InboundFactory

__all__ = ["AgentServicer", "Handlers"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.agent = agent
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
        return _action_failed(self._name, message.action, exc)

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
        """Run an action and send its chunks as they are made, then the final marker."""
        if isinstance(request, KosmosError):
            await abort(context, request)
        message = request.message
        call: ServedCall | None = None
        try:
            call = self._admit(message, context)
            items = await self.chain.open_stream(call)
            # Read once: every chunk repeats them, and message attribute reads are not free.
            agent, action = self._name, call.spec.name
            message_id, correlation_id = message.message_id, message.correlation_id
            sequence = 0
            # Closed on the way out, cancellation included, so the action's own cleanup (and
            # the cancelling of any stream it relays) runs now rather than at garbage collection.
            async with contextlib.aclosing(items):
                async for item in items:
                    response = _chunk(agent, message_id, correlation_id, sequence)
                    _fill(response.chunk.data, item, agent, action)
                    if sequence == 0 and call.on_first is not None:
                        for first in call.on_first:
                            first()
                    sequence += 1
                    yield response
            # Every chunk is made: the stream is done, whatever becomes of its final marker.
            call.ended("OK", None, True)
            final = _chunk(agent, message_id, correlation_id, sequence)
            final.chunk.final = True
            yield final
            return
        except GeneratorExit:  # the caller went away: gRPC closes this from another task
            if call is not None:
                call.ended("CANCELLED", None, False)
            raise
        except Exception as exc:
            error = self._failure(exc, message)
        except BaseException:  # cancelled
            if call is not None:
                call.ended("CANCELLED", None, True)
            raise
        if call is not None:
            call.ended(error.code.name, error, True)
        await abort(context, error)

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


class Handlers(InboundInterceptor):
    """The last link of the server's chain: runs the action's handler and puts its result in the reply.

    A handler that raises anything but a :class:`KosmosError` fails with ActionFailed (INTERNAL),
    logged with its traceback, which never reaches the caller. A stream's items are put into
    replies by the servicer, as they come.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent.name
        #: Handlers running now (the ``kosmos_calls_in_flight`` gauge reads it when scraped).
        self.running = 0
        # Bound now, by attribute name, so a subclass that overrides an action's method is the one run.
        self._handlers: dict[str, Callable[..., Any]] = {
            name: getattr(agent, spec.attr) for name, spec in agent.actions.items()
        }

    def close(self) -> None:
        """Nothing to let go of."""

    async def execute(self, call: ServedCall) -> agent_pb2.ExecuteResponse:
        ctx, action = call.ctx, call.spec.name
        self.running += 1
        try:
            result = await self._handlers[action](ctx, ctx.payload)
        except KosmosError:
            raise
        except Exception as exc:
            raise _action_failed(self.agent, action, exc) from None
        finally:
            self.running -= 1
        message = call.message
        response = agent_pb2.ExecuteResponse()
        reply = response.response
        reply.agent = self.agent
        reply.request_message_id = message.message_id
        reply.correlation_id = message.correlation_id
        _fill(reply.result, result, self.agent, action)
        return response

    async def open_stream(self, call: ServedCall) -> AsyncGenerator[Any, None]:
        ctx, spec = call.ctx, call.spec
        handler = self._handlers[spec.name]
        call.started = True
        self.running += 1
        call.at_end(self._ended)
        # Nothing of the handler runs until its first item is asked for (the servicer's loop).
        items: AsyncGenerator[Any, None] = (
            handler(ctx, ctx.payload) if spec.streaming else _one(handler(ctx, ctx.payload))
        )
        return items

    def _ended(self, code: str, error: KosmosError | None, in_task: bool) -> None:
        self.running -= 1


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


def _fill(struct: struct_pb2.Struct, result: Any, agent: str, action: str) -> None:
    """Put an action's result into ``struct``, or say plainly why it cannot go there."""
    if type(result) is Chunk:  # relayed as received: copied in C, never converted
        wire = result.wire
        if wire is not None:
            struct.CopyFrom(wire)
            return
        result = result.data
    if type(result) is not dict and not isinstance(result, Mapping):
        raise ActionFailed(f"{agent}.{action} returned {type(result).__name__}, not a JSON object")
    try:
        dict_to_struct(result, struct)
    except (TypeError, ValueError) as exc:
        raise ActionFailed(f"{agent}.{action} returned something JSON cannot hold: {exc}") from None


def _chunk(agent: str, message_id: str, correlation_id: str, sequence: int) -> agent_pb2.StreamResponse:
    response = agent_pb2.StreamResponse()
    chunk = response.chunk
    chunk.agent = agent
    chunk.request_message_id = message_id
    chunk.correlation_id = correlation_id
    chunk.sequence = sequence
    return response


def _action_failed(agent: str, action: str, exc: Exception) -> ActionFailed:
    """An unexpected exception, logged here with its traceback, as the caller sees it: without one."""
    log.error("agent %s action %s failed", agent, action, exc_info=exc)
    return ActionFailed(f"{agent}.{action} failed: {type(exc).__name__}")


def _bare(error: KosmosError) -> KosmosError:
    """``error`` without its traceback and chained exceptions: it may be kept (for duplicates), they need not."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error


async def _one(result: Awaitable[Any]) -> AsyncGenerator[Any, None]:
    """A unary action's result as a stream of one chunk."""
    yield await result
