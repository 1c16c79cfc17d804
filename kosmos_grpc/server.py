"""Serve an agent: a grpc.aio server with AgentService, standard health and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Self

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kosmos_grpc._proto.kosmos.v1 import agent_pb2, agent_pb2_grpc, envelope_pb2
from kosmos_grpc.admission import Admission
from kosmos_grpc.agent import ActionSpec, Agent, Context
from kosmos_grpc.client import Chunk, Coordinator, channel_options
from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT, dict_to_struct, validate
from kosmos_grpc.errors import (
    ActionFailed,
    ActionNotFound,
    AgentNotFound,
    AgentUnavailable,
    DeadlineExceeded,
    DuplicateMessage,
    InvalidEnvelope,
    KosmosError,
    WrongCallKind,
    is_final,
    to_status,
)
from kosmos_grpc.idempotency import ExecutedCall, ExecutedCalls
from kosmos_grpc.registry import Registry
from kosmos_grpc.resilience import CircuitState
from kosmos_grpc.runtime import until
from kosmos_grpc.telemetry.logs import current_call
from kosmos_grpc.telemetry.metrics import CALLS_IN_FLIGHT, QUEUE_DEPTH, watch
from kosmos_grpc.telemetry.tracing import finish_span, start_server_span, trace_id_hex

if TYPE_CHECKING:
    from types import TracebackType

    from google.protobuf import struct_pb2
    from opentelemetry.trace import Span

    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.resilience import ResiliencePolicy

__all__ = ["AGENT_SERVICE", "AgentServer", "AgentServicer", "serve_forever"]

log = logging.getLogger(__name__)

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# When the caller's gRPC deadline is no later than the TTL, gRPC's own deadline (which cancels
# the handler) is enough and no timer of ours is needed. gRPC sends a timeout rounded up to
# three significant digits (30 s arrives as up to 30.1 s), so "no later" allows for 1% more.
_DEADLINE_ROUNDING = 0.01
_DEADLINE_SLACK = 0.002
# A duplicate waits for the first call with its message_id; should that one not finish, the
# duplicate runs itself. Each try ends when a call ends, so a few are plenty.
_DUPLICATE_TRIES = 3
# What a started stream leaves for a duplicate of it: an error made once, never raised as such.
_STREAMED = DuplicateMessage("a stream already started under this message_id", metadata={"field": "message_id"})


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


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """AgentService for one agent: validates each envelope, routes by action, enforces the deadline."""

    def __init__(
        self,
        agent: Agent,
        coordinator: Coordinator,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        *,
        admission: Admission | None = None,
        executed: ExecutedCalls[agent_pb2.ExecuteResponse] | None = None,
        telemetry: bool = True,
    ) -> None:
        self.agent = agent
        #: Whether each call gets a SERVER span (its caller's trace continued) and is counted.
        self.telemetry = telemetry
        #: Handlers running now (the ``kosmos_calls_in_flight`` gauge reads it when scraped).
        self.in_flight = 0
        #: How many handlers run at once and how the rest wait (None: no limit of ours).
        self.admission = admission
        #: The message_ids executed lately, so a retried Execute does not run twice (None: off).
        self.executed = executed
        self.coordinator = coordinator
        #: The event bus handlers reach through ``ctx.bus``, once the server has one.
        self.bus: EventBus | None = None
        self.payload_limit = payload_limit
        self._card = self._make_card()
        # Looked up on every call: kept here rather than read through self.agent each time.
        self._name = agent.name
        self._actions = agent.actions
        # Bound now, by attribute name, so a subclass that overrides an action's method is the one run.
        self._handlers: dict[str, Callable[..., Any]] = {
            name: getattr(agent, spec.attr) for name, spec in agent.actions.items()
        }
        self._unwatch = (
            [
                watch(CALLS_IN_FLIGHT, self._name, lambda: self.in_flight),
                watch(QUEUE_DEPTH, self._name, lambda: admission.waiting if admission is not None else 0),
            ]
            if telemetry
            else []
        )

    def close(self) -> None:
        """Stop showing this servicer's calls in the gauges (its server has stopped)."""
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []

    def _make_card(self) -> agent_pb2.AgentCard:
        card = agent_pb2.AgentCard(name=self.agent.name, description=self.agent.description, version=self.agent.version)
        for spec in self.agent.actions.values():
            item = card.actions.add(name=spec.name, description=spec.description, streaming=spec.streaming)
            if spec.input_schema is not None:
                item.input_schema.update(spec.input_schema)
        return card

    def _admit(
        self, message: envelope_pb2.AgentMessage, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[ActionSpec, Context, float | None]:
        """Validate the envelope and find its action.

        The timer is the seconds our own deadline must enforce, None when gRPC's deadline suffices.
        """
        ttl_left = validate(message, payload_limit=self.payload_limit)
        name = self._name
        target = message.target_agent
        if target and target != name:
            raise AgentNotFound(
                f"target_agent {target!r} is not served here (this is {name!r})", metadata={"field": "target_agent"}
            )
        spec = self._actions.get(message.action)
        if spec is None:
            known = ", ".join(sorted(self._actions)) or "none"
            raise ActionNotFound(
                f"agent {name!r} has no action {message.action!r} (actions: {known})", metadata={"field": "action"}
            )
        grpc_left = context.time_remaining()
        if grpc_left is not None and grpc_left <= ttl_left * (1 + _DEADLINE_ROUNDING) + _DEADLINE_SLACK:
            timer, left = None, min(grpc_left, ttl_left)
        else:
            timer = left = ttl_left
        return spec, Context(message, name, time.monotonic() + left, self.coordinator, self.bus), timer

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], error: KosmosError) -> NoReturn:
        status = to_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    def _unexpected(self, exc: Exception, message: envelope_pb2.AgentMessage) -> KosmosError:
        log.exception("agent %s action %s failed", self._name, message.action)
        return ActionFailed(f"{self._name}.{message.action} failed: {type(exc).__name__}")

    async def Execute(
        self, request: agent_pb2.ExecuteRequest | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        """Run a unary action."""
        if request is None:
            await self._abort(context, _unreadable("ExecuteRequest"))
        message = request.message
        traced = self._trace("execute", message, context) if self.telemetry else None
        error: KosmosError
        executed = self.executed
        claimed: ExecutedCall[agent_pb2.ExecuteResponse] | None = None  # settled by this call
        try:
            spec, ctx, timer = self._admit(message, context)
            current_call.set(ctx)
            if spec.streaming:
                raise WrongCallKind(
                    f"action {message.action!r} streams: call Stream instead of Execute",
                    metadata={"field": "action"},
                )
            if executed is None:
                response = await self._execute(spec, ctx, timer)
            else:
                for _ in range(_DUPLICATE_TRIES):
                    first, entry = executed.claim(message.message_id)
                    if first:
                        claimed = entry
                        response = await self._execute(spec, ctx, timer)
                        claimed = None
                        executed.settle(message.message_id, entry, response, None, response.ByteSize())
                        break
                    # A retry of a call seen before: its outcome, once the first call has one.
                    waited = entry.wait()
                    reply, failure = await (waited if timer is None else _within(waited, timer, self._name, spec.name))
                    if reply is not None:
                        response = reply
                        break
                    if failure is not None:
                        raise failure
                else:
                    raise AgentUnavailable(
                        f"the earlier calls under message_id {message.message_id!r} kept ending unfinished; try again"
                    )
        except KosmosError as exc:
            error = _bare(exc)
        except Exception as exc:
            error = self._unexpected(exc, message)
        except BaseException:
            if claimed is not None and executed is not None:  # cancelled: forgotten, so that a retry runs
                executed.settle(message.message_id, claimed, None, None)
            finish_span(traced, "CANCELLED")
            raise
        else:
            finish_span(traced, "OK")
            return response
        if claimed is not None and executed is not None:
            # What the duplicates get: the failure if the call finished with it, else nothing (they run).
            executed.settle(message.message_id, claimed, None, error if is_final(error) else None)
        finish_span(traced, error.code.name, error)
        await self._abort(context, error)

    def _trace(
        self, rpc: str, message: envelope_pb2.AgentMessage, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Span, object] | None:
        """The call's SERVER span, continuing the caller's trace, current while the handler runs.

        The envelope's trace_id becomes the trace's id. None when there is no trace to follow.
        """

        def describe() -> tuple[str, dict[str, Any]]:
            action = message.action
            known = action in self._actions
            return f"{rpc}.{self._name}.{action}" if known else f"{rpc}.{self._name}", {
                "rpc.system": "grpc",
                "rpc.service": AGENT_SERVICE,
                "rpc.method": rpc.title(),
                "agent.name": self._name,
                "agent.action": action if known else "",
                "kosmos.message_id": message.message_id,
                "kosmos.correlation_id": message.correlation_id,
            }

        traced = start_server_span(
            describe,
            context.invocation_metadata(),
            trace_id=message.trace_id,
        )
        if traced is not None:
            trace_id = trace_id_hex(traced[0])
            if trace_id:
                message.trace_id = trace_id
        return traced

    async def _execute(self, spec: ActionSpec, ctx: Context, timer: float | None) -> agent_pb2.ExecuteResponse:
        """Run a unary action under admission control and its deadline; its reply."""
        admission = self.admission
        if admission is not None:
            timer = await self._wait_turn(admission, spec, ctx, timer)
        self.in_flight += 1
        try:
            handler = self._handlers[spec.name]
            if timer is None:
                result = await handler(ctx, ctx.payload)
            else:
                result = await _within(handler(ctx, ctx.payload), timer, self._name, spec.name)
        finally:
            self.in_flight -= 1
            if admission is not None:
                admission.release()
        message = ctx.message
        response = agent_pb2.ExecuteResponse()
        reply = response.response
        reply.agent = self._name
        reply.request_message_id = message.message_id
        reply.correlation_id = message.correlation_id
        _fill(reply.result, result, self._name, spec.name)
        return response

    async def Stream(
        self, request: agent_pb2.StreamRequest | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.StreamResponse]:
        """Run an action and send its chunks as they are made, then the final marker."""
        if request is None:
            await self._abort(context, _unreadable("StreamRequest"))
        message = request.message
        traced = self._trace("stream", message, context) if self.telemetry else None
        error: KosmosError | None = None
        admission = self.admission
        admitted = running = False
        executed = self.executed
        entry: ExecutedCall[agent_pb2.ExecuteResponse] | None = None
        try:
            spec, ctx, timer = self._admit(message, context)
            current_call.set(ctx)
            if executed is not None:
                # A stream is not replayed: a retry of one that started must not run it twice.
                first, entry = executed.claim(message.message_id)
                if not first:
                    entry = None
                    raise DuplicateMessage(
                        f"a call under message_id {message.message_id!r} already started on {self._name!r}: "
                        "a stream is neither replayed nor run twice; send it again under a new message_id",
                        metadata={"field": "message_id"},
                    )
            if admission is not None:
                timer = await self._wait_turn(admission, spec, ctx, timer)
                admitted = True
            self.in_flight += 1
            running = True
            handler = self._handlers[spec.name]
            items = handler(ctx, ctx.payload) if spec.streaming else _one(handler(ctx, ctx.payload))
            if timer is not None:
                items = _bounded(items, asyncio.get_running_loop().time() + timer, self._name, spec.name)
            # Read once: every chunk repeats them, and message attribute reads are not free.
            agent, action = self._name, spec.name
            message_id, correlation_id = message.message_id, message.correlation_id
            sequence = 0
            # Closed on the way out, cancellation included, so the action's own cleanup (and
            # the cancelling of any stream it relays) runs now rather than at garbage collection.
            async with contextlib.aclosing(items):
                async for item in items:
                    response = _chunk(agent, message_id, correlation_id, sequence)
                    _fill(response.chunk.data, item, agent, action)
                    sequence += 1
                    if entry is not None:  # the first chunk: from now on, a retry must not run it again
                        executed.settle(message_id, entry, None, _STREAMED)  # type: ignore[union-attr]
                        entry = None
                    yield response
            if entry is not None:
                executed.settle(message_id, entry, None, _STREAMED)  # type: ignore[union-attr]
                entry = None
            final = _chunk(agent, message_id, correlation_id, sequence)
            final.chunk.final = True
            yield final
            if traced is not None:
                finish_span(traced, "OK")
                traced = None
            return
        except KosmosError as exc:
            error = _bare(exc)
        except Exception as exc:
            error = self._unexpected(exc, message)
        except GeneratorExit:
            # The caller went away while this waited at a yield; gRPC closes the generator from
            # another task, whose context is not the one the span was made current in.
            if traced is not None:
                finish_span(traced, "CANCELLED", detach=False)
                traced = None
            raise
        finally:
            if running:
                self.in_flight -= 1
            if admitted:
                admission.release()  # type: ignore[union-attr]
            if entry is not None:  # ended before its first chunk
                if not running or (error is not None and not is_final(error)):
                    # Never started, or failed in a way a retry may mend (its own UNAVAILABLE,
                    # say): forgotten, so that the retry runs, as for Execute.
                    executed.settle(message.message_id, entry, None, None)  # type: ignore[union-attr]
                else:  # it ran (the caller went away, or it failed for good): never again
                    executed.settle(message.message_id, entry, None, error or _STREAMED)  # type: ignore[union-attr]
            if traced is not None:  # failed, or the caller went away (cancelled) mid-stream
                finish_span(traced, "CANCELLED" if error is None else error.code.name, error)
        assert error is not None
        await self._abort(context, error)

    async def _wait_turn(
        self, admission: Admission, spec: ActionSpec, ctx: Context, timer: float | None
    ) -> float | None:
        """Wait for a turn to run; the timer, less the wait (DeadlineExceeded when nothing is left)."""
        what = f"{self._name}.{spec.name}"
        await admission.acquire(ctx.message.priority, ctx.time_remaining(), what)
        if timer is not None and ctx.deadline is not None:
            timer = ctx.deadline - time.monotonic()
            if timer <= 0:
                admission.release()
                raise admission.expired(what)
        return timer

    async def Describe(
        self, request: agent_pb2.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.DescribeResponse:
        """The agent's card, and its circuits to the agents it has called."""
        response = agent_pb2.DescribeResponse(card=self._card)
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


def _past_deadline(agent: str, action: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"{agent}.{action} ran past its deadline (the envelope's TTL) and was cancelled")


async def _within(work: Awaitable[Any], seconds: float, agent: str, action: str) -> Any:
    """Await ``work`` for at most ``seconds``, cancelling it then (a handler's own TimeoutError stays its own)."""
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await work
    except TimeoutError:
        if scope.expired():
            raise _past_deadline(agent, action) from None
        raise


async def _one(result: Awaitable[Any]) -> AsyncGenerator[Any, None]:
    """A unary action's result as a stream of one chunk."""
    yield await result


async def _bounded(
    items: AsyncGenerator[Any, None], deadline: float, agent: str, action: str
) -> AsyncGenerator[Any, None]:
    """``items`` until the loop clock reaches ``deadline``; then the action is cancelled.

    The timer wraps each step of the action only, never a ``yield``: a timeout must not fire
    while gRPC holds this generator suspended between chunks.
    """
    async with contextlib.aclosing(items):
        while True:
            scope = asyncio.timeout_at(deadline)
            try:
                async with scope:
                    item = await anext(items)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if scope.expired():
                    raise _past_deadline(agent, action) from None
                raise
            yield item


def _unreadable(kind: str) -> InvalidEnvelope:
    return InvalidEnvelope("message", f"the request is not a valid kosmos.v1.{kind} (protobuf decoding failed)")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A deserializer that gives None for bytes that do not decode, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return None

    return deserialize


def _add_servicer(servicer: AgentServicer, server: grpc.aio.Server) -> None:
    """Register AgentService as a generic handler.

    The generated ``add_AgentServiceServicer_to_server`` registers "registered methods", which
    in grpcio 1.85's asyncio server cost about two dozen more Python calls per RPC.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute,
            request_deserializer=_lenient(agent_pb2.ExecuteRequest.FromString),
            response_serializer=agent_pb2.ExecuteResponse.SerializeToString,
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=_lenient(agent_pb2.StreamRequest.FromString),
            response_serializer=agent_pb2.StreamResponse.SerializeToString,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=agent_pb2.DescribeRequest.FromString,
            response_serializer=agent_pb2.DescribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(AGENT_SERVICE, handlers),))


class AgentServer:
    """One agent served over gRPC, with health and reflection; an async context manager.

    Health reports NOT_SERVING until :meth:`start` finishes (or :meth:`set_serving` when
    ``serving=False`` was asked for) and again from the moment :meth:`stop` begins.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        address: str = "127.0.0.1:0",
        registry: Registry | Mapping[str, str] | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        grace_seconds: float = 10.0,
        max_concurrent_rpcs: int | None = None,
        bus: EventBus | None = None,
        delegation_events: bool = True,
        max_concurrency: int | None = None,
        queue_limit: int = 100,
        idempotency_seconds: float | None = 300.0,
        idempotency_entries: int = 10_000,
        idempotency_bytes: int = 64 * 1024 * 1024,
        resilience: ResiliencePolicy | bool = True,
        telemetry: bool = True,
    ) -> None:
        """Serve ``agent``; see :class:`~kosmos_grpc.config.MeshConfig` for what each limit means.

        ``max_concurrency`` turns on the priority queue; ``idempotency_seconds=None`` turns off
        the memory of executed message_ids; ``resilience`` is the policy of this agent's own
        delegations (True: :class:`ResiliencePolicy`'s defaults; False: none); ``telemetry=False``
        turns off the spans and metrics of its calls and delegations.
        """
        self.agent = agent
        self.bus: EventBus | None = None
        self.delegation_events = delegation_events
        self.grace_seconds = grace_seconds
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.coordinator = Coordinator(
            self.registry,
            source_agent=agent.name,
            payload_limit=payload_limit,
            resilience=resilience,
            telemetry=telemetry,
        )
        self.health = health.aio.HealthServicer()
        self._requested = address
        self._server = grpc.aio.server(
            # Without SO_REUSEPORT a taken port is an error, not two agents sharing it silently.
            options=[*channel_options(payload_limit, server=True), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self._servicer = AgentServicer(
            agent,
            self.coordinator,
            payload_limit,
            admission=None if max_concurrency is None else Admission(max_concurrency, queue_limit),
            executed=None
            if idempotency_seconds is None
            else ExecutedCalls(idempotency_seconds, idempotency_entries, idempotency_bytes),
            telemetry=telemetry,
        )
        _add_servicer(self._servicer, self._server)
        if bus is not None:
            self.attach_bus(bus)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection([AGENT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server)
        self.port = 0
        #: Set once a stop is asked for (a signal, :meth:`request_stop` or :meth:`stop`).
        self.stop_requested = asyncio.Event()
        self._stopping: asyncio.Future[None] | None = None

    @property
    def address(self) -> str:
        """``host:port`` the server is bound to (the real port when 0 was asked for)."""
        host = self._requested.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self, *, serving: bool = True) -> None:
        """Bind, start, run the agent's ``on_start`` and, unless told otherwise, report SERVING.

        Raises:
            OSError: the address cannot be listened on (in use, or not this machine's).
        """
        try:
            self.port = self._server.add_insecure_port(self._requested)
        except RuntimeError:  # grpcio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            await self._server.stop(0)  # never started, but it holds resources until stopped
            raise OSError(f"cannot listen on {self._requested}: the address is in use or not available")
        self.registry.set(self.agent.name, self.address)
        for service in ("", AGENT_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        try:
            await self.agent.on_start()
        except BaseException:
            await self._server.stop(0)
            raise
        if serving:
            await self.set_serving()

    async def set_serving(self) -> None:
        """Report SERVING to health checks."""
        for service in ("", AGENT_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def attach_bus(self, bus: EventBus) -> None:
        """Give handlers ``ctx.bus`` and, unless turned off, announce delegations on it; closed with the server."""
        self.bus = self._servicer.bus = bus
        if self.delegation_events:
            self.coordinator.events = bus

    def request_stop(self) -> None:
        """Ask :func:`serve_forever` to drain and stop (safe from a signal handler)."""
        self.stop_requested.set()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls for ``grace`` seconds, then close.

        Every caller waits for the same, single drain, however many call it and however often.
        """
        self.stop_requested.set()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(self.grace_seconds if grace is None else grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._servicer.close()
        await self.coordinator.close()
        if self.bus is not None:
            await self.bus.close()
        await self.agent.on_stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_forever(
    server: AgentServer,
    *,
    ready: Callable[[AgentServer], Awaitable[None]] | None = None,
) -> None:
    """Run ``server`` until SIGTERM or SIGINT, then drain within its grace period.

    ``ready`` runs once the server is bound, before it reports SERVING (``kosmos up`` uses it
    to learn the port and hand over the mesh's addresses); a signal cuts it short.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start(serving=ready is None)
        if ready is not None:
            if not await until(server.stop_requested, ready(server)):
                return
            await server.set_serving()
        log.info("%s serving on %s", server.agent.name, server.address)
        await server.stop_requested.wait()
        log.info("%s draining (grace %.1f s)", server.agent.name, server.grace_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
