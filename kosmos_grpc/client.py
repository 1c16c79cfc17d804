"""The coordinator client: delegate and stream to agents by name, under deadlines, over reused channels."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.envelope import (
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_TTL_MS,
    Priority,
    new_message,
    new_message_id,
    struct_to_dict,
)
from kosmos_grpc.errors import (
    ORIGIN,
    ActionFailed,
    DeadlineExceeded,
    InvalidEnvelope,
    KosmosError,
    PayloadTooLarge,
    StreamBroken,
    from_rpc_error,
)
from kosmos_grpc.registry import Registry
from kosmos_grpc.resilience import Resilience, ResiliencePolicy
from kosmos_grpc.subjects import agent_requests, agent_responses
from kosmos_grpc.telemetry.metrics import UNKNOWN_LABEL, DelegationMetrics
from kosmos_grpc.telemetry.tracing import end_span, start_client_span, trace_id_hex

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from types import TracebackType

    from google.protobuf import struct_pb2
    from opentelemetry.trace import Span

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.bus.protocol import EventBus

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "ActionInfo",
    "AgentCard",
    "CallScope",
    "Chunk",
    "CircuitInfo",
    "Coordinator",
    "Response",
    "ScopedClient",
    "channel_options",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
# Headroom over the payload limit for the rest of the envelope, so the limit is ours to report.
_ENVELOPE_HEADROOM = 64 * 1024


def channel_options(payload_limit: int = DEFAULT_PAYLOAD_LIMIT, *, server: bool = False) -> list[tuple[str, Any]]:
    """gRPC options that let a payload at the limit through, envelope included.

    A server takes in up to twice the limit, so that an oversized payload from any client
    (grpcurl, another language) reaches the envelope check and is refused naming the field;
    past that, gRPC refuses it itself, still with RESOURCE_EXHAUSTED.
    """
    size = payload_limit + _ENVELOPE_HEADROOM
    receive = 2 * payload_limit + _ENVELOPE_HEADROOM if server else size
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", receive),
    ]
    if not server:
        # gRPC's reconnect backoff grows to 120 s by default: an agent that restarts would stay
        # unreachable long after it is back. Agents of a mesh come back within seconds.
        options += [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2_000)]
    return options


# Response and Chunk are made once per call or chunk: plain slotted dataclasses, as a frozen
# one's __init__ costs several times more.
@dataclass(slots=True)
class Response:
    """An agent's answer: which agent answered, to which message, and the result.

    ``fallback_for`` names the agent asked for when another answered in its place.
    """

    agent: str
    request_message_id: str
    correlation_id: str
    result: dict[str, Any]
    fallback_for: str | None = None


class Chunk:
    """One chunk of a streamed answer.

    ``data`` is converted from the wire on first use; a streaming action that yields a Chunk it
    received passes it on without converting it at all (how Zeus relays).
    """

    __slots__ = ("_data", "_wire", "agent", "sequence")

    def __init__(
        self, agent: str, sequence: int, data: dict[str, Any] | None = None, *, wire: struct_pb2.Struct | None = None
    ) -> None:
        self.agent = agent
        self.sequence = sequence
        self._data = data
        self._wire = wire

    @property
    def data(self) -> dict[str, Any]:
        """The chunk's content."""
        if self._data is None:
            self._data = {} if self._wire is None else struct_to_dict(self._wire)
        return self._data

    @property
    def wire(self) -> struct_pb2.Struct | None:
        """The Struct as received, while ``data`` has not been touched (so it cannot differ)."""
        return self._wire if self._data is None else None

    def __repr__(self) -> str:
        return f"Chunk(agent={self.agent!r}, sequence={self.sequence}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chunk):
            return NotImplemented
        return (self.agent, self.sequence, self.data) == (other.agent, other.sequence, other.data)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """One action on an agent's card."""

    name: str
    description: str
    streaming: bool
    input_schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """An agent's circuit breaker to one target: ``state`` is closed, half_open or open."""

    target: str
    state: str
    failures: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class AgentCard:
    """What an agent says of itself through Describe, with its circuits to the agents it calls."""

    name: str
    description: str
    version: str
    actions: list[ActionInfo] = field(default_factory=list)
    circuits: list[CircuitInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CallScope:
    """The call a delegation is made from: its deadline (``time.monotonic``) and its correlation_id."""

    deadline: float | None
    correlation_id: str
    source_agent: str
    trace_id: str = ""


class Coordinator:
    """Delegates actions to agents by name; one channel per agent address, reused by every call.

    The effective deadline of a call is the smaller of ``timeout_ms``, the TTL and, inside a
    handler, the remaining deadline of the call being served. Failures raise :class:`KosmosError`
    subclasses.
    """

    def __init__(
        self,
        registry: Registry | Mapping[str, str],
        *,
        source_agent: str = "client",
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        events: EventBus | None = None,
        resilience: Resilience | ResiliencePolicy | bool = True,
        telemetry: bool = True,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.source_agent = source_agent
        #: Each delegation's span (``delegate.<agent>.<action>``, its context passed on in the
        #: call's metadata) and metrics; None when ``telemetry=False``.
        self.metrics = DelegationMetrics(source_agent) if telemetry else None
        #: Retries, a circuit breaker per target and fallbacks, applied to every delegate and stream;
        #: None when ``resilience=False`` asked for calls exactly as made.
        self.resilience: Resilience | None
        if isinstance(resilience, Resilience):
            self.resilience = resilience
        elif isinstance(resilience, ResiliencePolicy):
            self.resilience = Resilience(resilience, source=source_agent)
        else:
            self.resilience = Resilience(source=source_agent) if resilience else None
        #: Where each delegation announces itself on ``kosmos.agents.<target>.requests`` and its
        #: outcome on ``.responses``; None turns that off.
        self.events = events
        self._options = channel_options(payload_limit)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, _AgentStub] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close()

    def channel(self, agent: str) -> grpc.aio.Channel:
        """The channel to ``agent``'s current address, made on first use."""
        address = self.registry.address(agent)
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    def _stub(self, agent: str) -> _AgentStub:
        address = self.registry.address(agent)
        stub = self._stubs.get(address)
        if stub is None:
            stub = _AgentStub(self.channel(agent))
            self._stubs[address] = stub
        return stub

    def _prepare(
        self,
        agent: str,
        action: str,
        payload: Mapping[str, Any] | None,
        timeout_ms: float | None,
        priority: Priority | int | str,
        correlation_id: str | None,
        ttl_ms: int | None,
        message_id: str | None,
        scope: CallScope | None,
        into: envelope_pb2.AgentMessage,
    ) -> float:
        """Fill the request's envelope in place; the call's timeout in seconds."""
        self.registry.address(agent)  # AgentNotFound now, before a word of it is announced or counted
        if timeout_ms is None:
            timeout = math.inf
        elif timeout_ms > 0 and timeout_ms != math.inf:  # also false for NaN
            timeout = timeout_ms / 1000
        else:
            raise InvalidEnvelope("timeout_ms", f"timeout_ms must be a number above zero, or None; got {timeout_ms}")
        if scope is not None and scope.deadline is not None:
            left = scope.deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"no time left to call {agent}.{action}: the caller's deadline has passed")
            timeout = min(timeout, left)
        if ttl_ms is None:
            ttl_ms = DEFAULT_TTL_MS if math.isinf(timeout) else max(1, math.ceil(timeout * 1000))
        new_message(
            action,
            payload,
            source_agent=scope.source_agent if scope else self.source_agent,
            target_agent=agent,
            correlation_id=correlation_id or (scope.correlation_id if scope else None),
            trace_id=scope.trace_id if scope else "",
            priority=priority,
            ttl_ms=ttl_ms,
            message_id=message_id,
            into=into,
        )
        return min(timeout, (ttl_ms or DEFAULT_TTL_MS) / 1000)

    async def delegate(
        self,
        agent: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout_ms: float | None = DEFAULT_TIMEOUT_MS,
        priority: Priority | int | str = Priority.NORMAL,
        correlation_id: str | None = None,
        ttl_ms: int | None = None,
        message_id: str | None = None,
        scope: CallScope | None = None,
    ) -> Response:
        """Run ``action`` on ``agent`` and return its response.

        Args:
            agent: The agent's name in the registry.
            action: One of the agent's actions.
            payload: The action's input, a JSON-like mapping.
            timeout_ms: The deadline; None leaves the TTL (default 60 s) as the only one.
            priority: low, normal, high or critical.
            correlation_id: The workflow this call belongs to (default: the scope's, else a new one).
            ttl_ms: The envelope's TTL (default: the timeout, else 60000).
            message_id: A uuid4 to send under (default: a new one); a retry reuses it.
            scope: The call being served that this one is made from; its deadline bounds this one.

        Returns:
            Which agent answered, to which message, and the result.

        Raises:
            KosmosError: the subclass for the gRPC status the call ended with, for instance
                AgentNotFound, ActionNotFound, InvalidEnvelope or DeadlineExceeded.
        """
        request = agent_pb2.ExecuteRequest()
        message = request.message
        timeout = self._prepare(
            agent, action, payload, timeout_ms, priority, correlation_id, ttl_ms, message_id, scope, message
        )
        started = time.monotonic()
        deadline = started + timeout
        events = self.events
        if events is not None:
            await _announce(events, agent, action, message)
        span, metadata = self._traced(agent, action, message)

        async def attempt(target: str) -> agent_pb2.ExecuteResponse:
            message.target_agent = target
            try:
                reply: agent_pb2.ExecuteResponse = await self._stub(target).Execute(
                    request, timeout=_left(deadline, target, action), metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                raise _explain(exc, target, action, timeout) from None
            return reply

        code = "CANCELLED"  # unless the call ends one way or the other
        failure: BaseException | None = None
        try:
            resilience = self.resilience
            reply = await (attempt(agent) if resilience is None else resilience.call(agent, attempt, deadline))
            code = "OK"
        except KosmosError as error:
            code, failure = error.code.name, error
            if events is not None:
                await _outcome(events, agent, action, message, code, "")
            raise
        except Exception as error:  # a fault on this side (cancellation is not an Exception)
            code, failure = "UNKNOWN", error
            raise
        finally:
            if self.metrics is not None:
                self._done(span, agent, action, code, failure, started)
        response = reply.response
        if events is not None:
            await _outcome(events, agent, action, message, "OK", response.agent)
        return Response(
            agent=response.agent,
            request_message_id=response.request_message_id,
            correlation_id=response.correlation_id,
            result=struct_to_dict(response.result),
            fallback_for=agent if response.agent != agent else None,
        )

    async def stream(
        self,
        agent: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout_ms: float | None = DEFAULT_TIMEOUT_MS,
        priority: Priority | int | str = Priority.NORMAL,
        correlation_id: str | None = None,
        ttl_ms: int | None = None,
        message_id: str | None = None,
        scope: CallScope | None = None,
    ) -> AsyncIterator[Chunk]:
        """Yield the chunks of ``action`` on ``agent`` as they arrive.

        Leaving the loop early, or being cancelled, cancels the call on the agent. The
        arguments are :meth:`delegate`'s.

        Raises:
            KosmosError: as :meth:`delegate` does, at the point the stream fails;
                StreamBroken when it ends without its final marker.
        """
        request = agent_pb2.StreamRequest()
        message = request.message
        timeout = self._prepare(
            agent, action, payload, timeout_ms, priority, correlation_id, ttl_ms, message_id, scope, message
        )
        started = time.monotonic()
        deadline = started + timeout
        events = self.events
        if events is not None:
            await _announce(events, agent, action, message)
        span, metadata = self._traced(agent, action, message)
        outcome, answered = "CANCELLED", ""  # unless the stream ends one way or the other
        failure: BaseException | None = None
        target = agent

        async def start(to: str) -> tuple[_StreamCall, object]:
            # Resilience covers a stream until its first reply: after that, chunks have been seen.
            nonlocal target
            message.target_agent = target = to
            call = self._stub(to).Stream(request, timeout=_left(deadline, to, action), metadata=metadata)
            try:
                return call, await call.read()
            except grpc.aio.AioRpcError as exc:
                raise _explain(exc, to, action, timeout) from None
            except asyncio.CancelledError:
                call.cancel()
                raise

        call: _StreamCall | None = None
        try:
            resilience = self.resilience
            call, reply = opened = await (
                start(agent) if resilience is None else resilience.call(agent, start, deadline)
            )
            while reply is not grpc.aio.EOF:
                chunk = reply.chunk  # type: ignore[attr-defined]
                if chunk.final:
                    outcome, answered = "OK", chunk.agent
                    return
                yield Chunk(chunk.agent, chunk.sequence, wire=chunk.data)
                try:
                    reply = await opened[0].read()
                except grpc.aio.AioRpcError as exc:
                    raise _explain(exc, target, action, timeout) from None
            raise StreamBroken(f"the stream from {target}.{action} ended without its final marker")
        except KosmosError as error:
            outcome, failure = error.code.name, error
            raise
        except Exception as error:  # a fault on this side (cancellation is not an Exception)
            outcome, failure = "UNKNOWN", error
            raise
        finally:
            if call is not None:
                call.cancel()
            if self.metrics is not None:
                self._done(span, agent, action, outcome, failure, started)
            if events is not None:
                await _outcome(events, agent, action, message, outcome, answered)

    def _traced(
        self, agent: str, action: str, message: envelope_pb2.AgentMessage
    ) -> tuple[Span | None, tuple[tuple[str, str], ...] | None]:
        """A delegation's span, child of the current one, and the metadata that passes it on.

        The envelope's trace_id becomes the span's trace id. None without telemetry or tracing.
        """
        if self.metrics is None:
            return None, None
        span, metadata = start_client_span(
            lambda: (
                f"delegate.{agent}.{action}",
                {"agent.name": agent, "agent.action": action, "kosmos.correlation_id": message.correlation_id},
            )
        )
        trace_id = trace_id_hex(span)
        if trace_id:
            message.trace_id = trace_id
        return span, metadata

    def _done(
        self, span: Span | None, agent: str, action: str, code: str, error: BaseException | None, started: float
    ) -> None:
        """Record how a delegation ended, on its span and in the metrics."""
        # An agent or action that does not exist is counted under one label, so that bad requests
        # (a name in a payload, say) cannot make series without end.
        if code == "NOT_FOUND":
            agent = action = UNKNOWN_LABEL
        elif code == "UNIMPLEMENTED":
            action = UNKNOWN_LABEL
        self.metrics.record(agent, action, code, time.monotonic() - started)  # type: ignore[union-attr]
        if span is not None:
            end_span(span, code, error)

    def scope(self, *, correlation_id: str | None = None, timeout_ms: float | None = None) -> ScopedClient:
        """A client for one workflow: every call shares a correlation_id (default: a new one) and,
        with ``timeout_ms``, one deadline."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        scope = CallScope(deadline, correlation_id or new_message_id(), self.source_agent)
        return ScopedClient(self, scope)

    async def describe(self, agent: str, *, timeout_ms: float = 5_000) -> AgentCard:
        """The agent's card: name, version and actions."""
        stub = self._stub(agent)
        try:
            reply = await stub.Describe(agent_pb2.DescribeRequest(), timeout=timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise _explain(exc, agent, "Describe", timeout_ms / 1000) from None
        card = reply.card
        return AgentCard(
            name=card.name,
            description=card.description,
            version=card.version,
            actions=[
                ActionInfo(
                    name=spec.name,
                    description=spec.description,
                    streaming=spec.streaming,
                    input_schema=struct_to_dict(spec.input_schema) if spec.HasField("input_schema") else None,
                )
                for spec in card.actions
            ],
            circuits=[
                CircuitInfo(
                    target=circuit.target,
                    state=agent_pb2.CircuitState.Name(circuit.state).removeprefix("CIRCUIT_STATE_").lower(),
                    failures=circuit.failures,
                    retry_in=circuit.retry_in_seconds,
                )
                for circuit in reply.circuits
            ],
        )

    async def health(self, agent: str, *, service: str = "", timeout_ms: float = 2_000) -> str:
        """The agent's gRPC health status name (``SERVING``, ``NOT_SERVING``, ...)."""
        stub = health_pb2_grpc.HealthStub(self.channel(agent))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise _explain(exc, agent, "health", timeout_ms / 1000) from None
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name


class ScopedClient:
    """Delegates on behalf of a call or workflow: its deadline and correlation_id carry on to each call.

    A handler has one as ``ctx.client``; :meth:`Coordinator.scope` makes one for a workflow.
    """

    __slots__ = ("_coordinator", "_scope")

    def __init__(self, coordinator: Coordinator, scope: CallScope) -> None:
        self._coordinator = coordinator
        self._scope = scope

    @property
    def correlation_id(self) -> str:
        """The workflow every call made through this client belongs to."""
        return self._scope.correlation_id

    @property
    def coordinator(self) -> Coordinator:
        """The coordinator the calls go through."""
        return self._coordinator

    def time_remaining(self) -> float | None:
        """Seconds left before the scope's deadline, or None when it has none."""
        return None if self._scope.deadline is None else self._scope.deadline - time.monotonic()

    async def delegate(
        self,
        agent: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout_ms: float | None = DEFAULT_TIMEOUT_MS,
        priority: Priority | int | str = Priority.NORMAL,
        message_id: str | None = None,
    ) -> Response:
        """Run ``action`` on ``agent`` within what is left of this call's deadline."""
        return await self._coordinator.delegate(
            agent, action, payload, timeout_ms=timeout_ms, priority=priority, message_id=message_id, scope=self._scope
        )

    def stream(
        self,
        agent: str,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout_ms: float | None = DEFAULT_TIMEOUT_MS,
        priority: Priority | int | str = Priority.NORMAL,
    ) -> AsyncIterator[Chunk]:
        """Stream ``action`` from ``agent`` within what is left of this call's deadline."""
        return self._coordinator.stream(
            agent, action, payload, timeout_ms=timeout_ms, priority=priority, scope=self._scope
        )


_StreamCall = grpc.aio.UnaryStreamCall[agent_pb2.StreamRequest, agent_pb2.StreamResponse]


def _left(deadline: float, agent: str, action: str) -> float:
    """Seconds left before ``deadline``, or DeadlineExceeded when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"no time left to call {agent}.{action}: the deadline has passed")
    return left


_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class _AgentStub:
    """AgentService's three calls on one channel.

    The generated stub makes "registered method" calls, which in grpcio 1.85's asyncio client
    cost a couple of dozen more Python calls per RPC than these plain ones.
    """

    __slots__ = ("Describe", "Execute", "Stream")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Execute: grpc.aio.UnaryUnaryMultiCallable[agent_pb2.ExecuteRequest, agent_pb2.ExecuteResponse] = (
            channel.unary_unary(
                f"/{_SERVICE}/Execute",
                request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
                response_deserializer=agent_pb2.ExecuteResponse.FromString,
            )
        )
        self.Stream: grpc.aio.UnaryStreamMultiCallable[agent_pb2.StreamRequest, agent_pb2.StreamResponse] = (
            channel.unary_stream(
                f"/{_SERVICE}/Stream",
                request_serializer=agent_pb2.StreamRequest.SerializeToString,
                response_deserializer=agent_pb2.StreamResponse.FromString,
            )
        )
        self.Describe: grpc.aio.UnaryUnaryMultiCallable[agent_pb2.DescribeRequest, agent_pb2.DescribeResponse] = (
            channel.unary_unary(
                f"/{_SERVICE}/Describe",
                request_serializer=agent_pb2.DescribeRequest.SerializeToString,
                response_deserializer=agent_pb2.DescribeResponse.FromString,
            )
        )


async def _announce(events: EventBus, agent: str, action: str, message: envelope_pb2.AgentMessage) -> None:
    """Publish a delegation on ``kosmos.agents.<agent>.requests`` (not its payload: only what it is)."""
    payload = {
        "action": action,
        "message_id": message.message_id,
        "source_agent": message.source_agent,
        "target_agent": agent,
    }
    await _tell(events, agent_requests, agent, payload, message.correlation_id)


async def _outcome(
    events: EventBus, agent: str, action: str, message: envelope_pb2.AgentMessage, status: str, answered: str
) -> None:
    """Publish how a delegation ended on ``kosmos.agents.<agent>.responses``."""
    payload = {"action": action, "message_id": message.message_id, "status": status, "answered_by": answered}
    await _tell(events, agent_responses, agent, payload, message.correlation_id)


async def _tell(
    events: EventBus,
    subject: Callable[[str], str],
    agent: str,
    payload: dict[str, Any],
    correlation_id: str,
) -> None:
    # Announcing never changes a delegation's own outcome: a failure here is logged, no more.
    try:
        await events.publish(subject(agent), payload, correlation_id=correlation_id)
    except Exception as exc:
        log.warning("could not announce a delegation to %s on the event bus: %s", agent, exc)


def _explain(exc: grpc.aio.AioRpcError, agent: str, action: str, timeout: float) -> KosmosError:
    """The mesh error for a failed call, with the agent named where the transport said little.

    Its ``origin`` is the agent whose failure it is: the one called, unless that one passed on
    the failure of an agent it called in turn (which set its own ``origin``).
    """
    error = from_rpc_error(exc)
    explained = bool(error.metadata) or isinstance(error, ActionFailed)  # by the agent itself
    error.metadata.setdefault(ORIGIN, agent)
    if explained:
        return error
    code = exc.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger than max" in (exc.details() or ""):
        # This channel refused to send it: the payload is far over the limit the mesh allows.
        return PayloadTooLarge(
            f"the payload to {agent}.{action} is over the limit ({exc.details()})", metadata={"field": "payload"}
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        error.message = f"{agent}.{action} did not answer within {timeout * 1000:.0f} ms"
    elif code == grpc.StatusCode.UNAVAILABLE:
        error.message = f"agent {agent!r} is unavailable: {exc.details()}"
    else:
        error.message = f"{agent}.{action} failed: {error.message}"
    error.args = (error.message,)
    return error
