"""The priority queue as a link of the server's chain: a call runs once :class:`Admission` gives it a turn."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.admission import Admission
    from kosmos_grpc.errors import KosmosError
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["AdmissionInterceptor"]


class AdmissionInterceptor(InboundInterceptor):
    """``max_concurrency`` handlers at once, the rest queued by priority or shed; streams capped per connection."""

    def __init__(self, next: InboundInterceptor, admission: Admission, agent: str) -> None:
        super().__init__(next)
        self.admission = admission
        self.agent = agent

    async def execute(self, call: ServedCall) -> agent_pb2.ExecuteResponse:
        await self._wait_turn(call)
        try:
            return await self.next.execute(call)
        finally:
            self.admission.release()

    async def open_stream(self, call: ServedCall) -> AsyncGenerator[Any, None]:
        admission = self.admission
        # A delegation (its envelope has a route) shares its caller's connection with every other
        # user of that caller, Zeus relaying for all: it is capped where the user's call came in,
        # not here, or a few slow users would hold the one connection's share for everyone.
        # (The route is a claim until the mesh authenticates its agents; the caps on all streams
        # and their bytes hold whatever it says.)
        connection = None if call.message.route else call.context.peer()
        size = call.message.ByteSize()
        admission.open_stream(connection, size, self.agent, call.spec.name)
        try:
            await self._wait_turn(call)
        except BaseException:
            admission.close_stream(connection, size)
            raise

        def release(code: str, error: KosmosError | None, in_task: bool) -> None:
            admission.release()

        call.at_end(release)
        # The connection's count goes down once gRPC is done with the call, not when the handler
        # is: a stream ended while its client read nothing still holds a chunk and its status
        # until the client reads or hangs up, and one connection must not pile such streams up.
        # (grpc-stubs type the callback as a class of their own, which no function is.)
        call.context.add_done_callback(lambda _: admission.close_stream(connection, size))  # type: ignore[arg-type]
        return await self.next.open_stream(call)

    async def _wait_turn(self, call: ServedCall) -> None:
        """Wait for a turn to run and take the wait off the call's timer (DeadlineExceeded when nothing is left)."""
        admission, ctx = self.admission, call.ctx
        await admission.acquire(call.message.priority, ctx.time_remaining(), self.agent, call.spec.name)
        if call.timer is not None and ctx.deadline is not None:
            call.timer = ctx.deadline - time.monotonic()
            if call.timer <= 0:
                admission.release()
                raise admission.expired(f"{self.agent}.{call.spec.name}")
