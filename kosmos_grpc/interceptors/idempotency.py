"""The memory of executed calls as a link of the server's chain: a retried message_id never runs twice."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from kosmos_grpc.errors import AgentUnavailable, DuplicateMessage, KosmosError, is_final
from kosmos_grpc.interceptors.deadline import within
from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.idempotency import ExecutedCall, ExecutedCalls
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["IdempotencyInterceptor"]

# A duplicate waits for the first call with its message_id; should that one not finish, the
# duplicate runs itself. Each try ends when a call ends, so a few are plenty.
_DUPLICATE_TRIES = 3
# What a started stream leaves for a duplicate of it: an error made once, never raised as such.
_STREAMED = DuplicateMessage("a stream already started under this message_id", metadata={"field": "message_id"})


class IdempotencyInterceptor(InboundInterceptor):
    """A duplicate Execute gets the first call's reply, or its failure if that was final; a stream
    is claimed by its message_id, and a retry of one that started is refused (ALREADY_EXISTS)."""

    def __init__(
        self, next: InboundInterceptor, executed: ExecutedCalls[agent_pb2.ExecuteResponse], agent: str
    ) -> None:
        super().__init__(next)
        self.executed = executed
        self.agent = agent

    async def execute(self, call: ServedCall) -> agent_pb2.ExecuteResponse:
        executed, message_id = self.executed, call.message.message_id
        for _ in range(_DUPLICATE_TRIES):
            first, entry = executed.claim(message_id)
            if first:
                return await self._first(call, entry)
            # A retry of a call seen before: its outcome, once the first call has one.
            waited = entry.wait()
            reply, failure = await (
                waited if call.timer is None else within(waited, call.timer, self.agent, call.spec.name)
            )
            if reply is not None:
                return reply
            if failure is not None:
                raise failure
        raise AgentUnavailable(f"the earlier calls under message_id {message_id!r} kept ending unfinished; try again")

    async def _first(
        self, call: ServedCall, entry: ExecutedCall[agent_pb2.ExecuteResponse]
    ) -> agent_pb2.ExecuteResponse:
        executed, message_id = self.executed, call.message.message_id
        try:
            reply = await self.next.execute(call)
        except KosmosError as error:
            # What the duplicates get: the failure if the call finished with it, else nothing (they run).
            executed.settle(message_id, entry, None, error if is_final(error) else None)
            raise
        except BaseException:  # cancelled, or a fault: forgotten, so that a retry runs
            executed.settle(message_id, entry, None, None)
            raise
        executed.settle(message_id, entry, reply, None, reply.ByteSize())
        return reply

    async def stream(self, call: ServedCall) -> AsyncGenerator[agent_pb2.StreamResponse, None]:
        executed, message_id = self.executed, call.message.message_id
        # A stream is not replayed: a retry of one that started must not run it twice.
        first, claimed = executed.claim(message_id)
        if not first:
            raise DuplicateMessage(
                f"a call under message_id {message_id!r} already started on {self.agent!r}: "
                "a stream is neither replayed nor run twice; send it again under a new message_id",
                metadata={"field": "message_id"},
            )
        entry: ExecutedCall[agent_pb2.ExecuteResponse] | None = claimed
        error: KosmosError | None = None
        try:
            async with contextlib.aclosing(self.next.stream(call)) as replies:
                async for reply in replies:
                    if entry is not None:  # the first chunk: from now on, a retry must not run it again
                        executed.settle(message_id, entry, None, _STREAMED)
                        entry = None
                    yield reply
        except KosmosError as failure:
            error = failure
            raise
        finally:
            if entry is not None:  # ended before its first chunk, or with none at all
                if not call.started or (error is not None and not is_final(error)):
                    # Never started, or failed in a way a retry may mend (its own UNAVAILABLE,
                    # say): forgotten, so that the retry runs, as for Execute.
                    executed.settle(message_id, entry, None, None)
                else:  # it ran (to its end, or the caller went away, or it failed for good): never again
                    executed.settle(message_id, entry, None, error or _STREAMED)
