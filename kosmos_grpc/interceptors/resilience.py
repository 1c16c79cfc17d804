"""Resilience as a link of the client's chain: retries, a breaker per target and fallbacks around each call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc.interceptors.outbound import OpenStream, OutboundInterceptor

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.interceptors.outbound import Delegation
    from kosmos_grpc.resilience import Resilience

__all__ = ["ResilienceInterceptor"]


class ResilienceInterceptor(OutboundInterceptor):
    """Each attempt goes on to ``next`` with ``target`` set, as :class:`Resilience` decides; a
    fallback is told to the delegation's fallback callbacks (:meth:`Delegation.at_fallback`).

    Each attempt gets its ``attempt_deadline``, before the call's own. A stream is covered until
    its first chunk: after that, chunks have been seen, and a retry would repeat them.
    """

    def __init__(self, next: OutboundInterceptor, resilience: Resilience) -> None:
        super().__init__(next)
        self.resilience = resilience

    def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        def attempt(target: str) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
            call.target = target
            call.attempt_deadline = self.resilience.attempt_deadline(call.agent, target, call.deadline)
            return self.next.delegate(call)

        # Not a coroutine of its own: every call pays for this link, so it adds no frame to await.
        return self.resilience.call(call.agent, attempt, call.deadline, call.fell_back if call.on_fallback else None)

    def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> Coroutine[Any, Any, OpenStream]:
        def start(target: str) -> Coroutine[Any, Any, OpenStream]:
            call.target = target
            call.attempt_deadline = self.resilience.attempt_deadline(call.agent, target, call.deadline)
            return self.next.open_stream(call)

        return self.resilience.call(call.agent, start, call.deadline, call.fell_back if call.on_fallback else None)
