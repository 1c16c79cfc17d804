"""The envelope's TTL enforced on a unary handler, where gRPC's own deadline (which cancels it) ends later."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from kosmos_grpc.deadlines import past_deadline
from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["DeadlineInterceptor", "within"]

T = TypeVar("T")


class DeadlineInterceptor(InboundInterceptor):
    """Cancels the handler when ``call.timer`` runs out, answering DEADLINE_EXCEEDED."""

    def __init__(self, next: InboundInterceptor, agent: str) -> None:
        super().__init__(next)
        self.agent = agent

    def execute(self, call: ServedCall) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        # Not a coroutine of its own: where gRPC's deadline suffices, the next link's is awaited directly.
        work = self.next.execute(call)
        return work if call.timer is None else within(work, call.timer, self.agent, call.spec.name)

    # A stream's deadline is kept by the servicer's StreamWatch, which also covers the time a
    # write waits for a client that does not read: open_stream passes through.


async def within(work: Awaitable[T], seconds: float, agent: str, action: str) -> T:
    """Await ``work`` for at most ``seconds``, cancelling it then (a handler's own TimeoutError stays its own)."""
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await work
    except TimeoutError:
        if scope.expired():
            raise past_deadline(agent, action) from None
        raise
