"""The coordinator client: delegate and stream to agents by name, under deadlines, through an interceptor chain."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.calls import ActionInfo, AgentCard, CallScope, Chunk, CircuitInfo, Response
from kosmos_grpc.deadlines import time_left
from kosmos_grpc.envelope import (
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_TTL_MS,
    Priority,
    new_message,
    new_message_id,
    struct_to_dict,
)
from kosmos_grpc.errors import InvalidEnvelope, StreamBroken
from kosmos_grpc.interceptors.client_chain import client_chain, outer_links
from kosmos_grpc.interceptors.outbound import Delegation, failure_of, status_name
from kosmos_grpc.registry import Registry
from kosmos_grpc.resilience import Resilience, ResiliencePolicy
from kosmos_grpc.telemetry.logs import current_call
from kosmos_grpc.transport import Transport, explain

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from types import TracebackType

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.interceptors.client_chain import OutboundFactory

__all__ = ["DEFAULT_TIMEOUT_MS", "Coordinator", "ScopedClient", "served_route"]

DEFAULT_TIMEOUT_MS = 30_000


class Coordinator:
    """Delegates actions to agents by name; one channel per agent address, reused by every call.

    Every delegation goes through one chain of interceptors (see
    :mod:`kosmos_grpc.interceptors.client_chain` for their order): telemetry, announcements on
    ``events``, the caller's own ``interceptors``, resilience, then the transport. The effective
    deadline of a call is the smaller of ``timeout_ms``, the TTL and, inside a handler, the
    remaining deadline of the call being served. Failures raise :class:`KosmosError` subclasses.
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
        interceptors: Sequence[OutboundFactory] = (),
        grpc_interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        """Args:
        registry: Agent name -> address.
        source_agent: Who the calls come from (the envelope's ``source_agent``).
        payload_limit: The largest payload, in bytes, a call may carry.
        events: Where each delegation is announced (None: nowhere).
        resilience: Retries, breakers and fallbacks: a policy, True for the defaults, False for none.
        telemetry: Whether each delegation gets a span and is counted.
        interceptors: The caller's own outbound interceptors, each made from the next link.
        grpc_interceptors: Standard ``grpc.aio`` client interceptors, given to every channel.
        """
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.source_agent = source_agent
        #: Retries, a circuit breaker per target and fallbacks, applied to every delegate and stream;
        #: None when ``resilience=False`` asked for calls exactly as made.
        self.resilience: Resilience | None
        if isinstance(resilience, Resilience):
            self.resilience = resilience
        elif isinstance(resilience, ResiliencePolicy):
            self.resilience = Resilience(resilience, source=source_agent)
        else:
            self.resilience = Resilience(source=source_agent) if resilience else None
        self._telemetry = telemetry
        self._events = events
        self._transport = Transport(self.registry, payload_limit, grpc_interceptors)
        self._chain, self._inner = client_chain(
            self._transport,
            source=source_agent,
            telemetry=telemetry,
            events=events,
            interceptors=interceptors,
            resilience=self.resilience,
            known=self.registry,
        )

    @property
    def events(self) -> EventBus | None:
        """Where each delegation is announced (None: nowhere); :meth:`announce_on` changes it."""
        return self._events

    def announce_on(self, events: EventBus | None) -> None:
        """Announce every delegation from now on on ``events`` (None: nowhere)."""
        self._events = events
        self._chain = outer_links(
            self._inner, source=self.source_agent, telemetry=self._telemetry, events=events, known=self.registry
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the chain: every interceptor's, and the transport's channels."""
        await self._chain.close()

    def channel(self, agent: str) -> grpc.aio.Channel:
        """The channel to ``agent``'s current address, made on first use."""
        return self._transport.channel(agent)

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
    ) -> tuple[float, str]:
        """Fill the request's envelope in place; the call's timeout in seconds, and the agent's address."""
        address = self.registry.address(agent)  # AgentNotFound now, before a word of it is announced or counted
        if timeout_ms is None:
            timeout = math.inf
        elif timeout_ms > 0 and timeout_ms != math.inf:  # also false for NaN
            timeout = timeout_ms / 1000
        else:
            raise InvalidEnvelope("timeout_ms", f"timeout_ms must be a number above zero, or None; got {timeout_ms}")
        if scope is not None and scope.deadline is not None:
            timeout = min(timeout, time_left(scope.deadline, agent, action))
        if ttl_ms is None:
            ttl_ms = DEFAULT_TTL_MS if math.isinf(timeout) else max(1, math.ceil(timeout * 1000))
        route = scope.route if scope is not None else served_route()
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
        if route:
            into.route.extend(route)
        return min(timeout, (ttl_ms or DEFAULT_TTL_MS) / 1000), address

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
        timeout, address = self._prepare(
            agent, action, payload, timeout_ms, priority, correlation_id, ttl_ms, message_id, scope, request.message
        )
        call = Delegation(agent, action, request, time.monotonic() + timeout, timeout, agent, address)
        response = (await self._chain.delegate(call)).response
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
        timeout, address = self._prepare(
            agent, action, payload, timeout_ms, priority, correlation_id, ttl_ms, message_id, scope, request.message
        )
        call = Delegation(agent, action, request, time.monotonic() + timeout, timeout, agent, address)
        code, failure = "OK", None
        try:
            opened = await self._chain.open_stream(call)
            # Read here, straight from the call: no link of the chain runs per chunk.
            replies, reply = opened.replies, opened.first
            try:
                while True:
                    if reply is grpc.aio.EOF:
                        raise StreamBroken(f"the stream from {call.target}.{action} ended without its final marker")
                    chunk = reply.chunk
                    if chunk.final:
                        call.answered = chunk.agent
                        if opened.read_to_end:
                            with contextlib.suppress(grpc.aio.AioRpcError):
                                await replies.read()
                        return
                    yield Chunk(chunk.agent, chunk.sequence, wire=chunk.data)
                    try:
                        reply = await replies.read()
                    except grpc.aio.AioRpcError as exc:
                        raise explain(exc, call.target, action, timeout) from None
            finally:  # leaving the loop early, or failing, cancels the call now
                replies.cancel()
        except BaseException as error:
            code, failure = status_name(error), failure_of(error)
            raise
        finally:
            await call.ended(code, failure)

    def scope(self, *, correlation_id: str | None = None, timeout_ms: float | None = None) -> ScopedClient:
        """A client for one workflow: every call shares a correlation_id (default: a new one) and,
        with ``timeout_ms``, one deadline."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        scope = CallScope(deadline, correlation_id or new_message_id(), self.source_agent, route=served_route())
        return ScopedClient(self, scope)

    async def describe(self, agent: str, *, timeout_ms: float = 5_000) -> AgentCard:
        """The agent's card: name, version and actions."""
        stub = self._transport.stub(agent)
        try:
            reply = await stub.Describe(agent_pb2.DescribeRequest(), timeout=timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise explain(exc, agent, "Describe", timeout_ms / 1000) from None
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
            pid=reply.process.pid,
            started=reply.process.started.ToNanoseconds() / 1e9,
            restarts=reply.process.restarts,
        )

    async def health(self, agent: str, *, service: str = "", timeout_ms: float = 2_000) -> str:
        """The agent's gRPC health status name (``SERVING``, ``NOT_SERVING``, ...)."""
        stub = health_pb2_grpc.HealthStub(self.channel(agent))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise explain(exc, agent, "health", timeout_ms / 1000) from None
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name


def served_route() -> tuple[str, ...]:
    """The route a delegation made now carries: inside a handler, the served call's and then its
    agent (so that a loop is seen however the handler made its client); outside one, none."""
    served = current_call.get()
    if served is None:
        return ()
    return (*served.envelope.route, served.agent_name)


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
