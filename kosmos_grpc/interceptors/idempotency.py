"""The memory of executed calls as a link of the server's chain: a retried message_id never runs twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc.errors import AgentUnavailable, DuplicateMessage, KosmosError, is_final
from kosmos_grpc.interceptors.deadline import within
from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine

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
            if first:  # run here rather than in a coroutine of its own: every call takes this path
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
            # A retry of a call seen before: its outcome, once the first call has one.
            waited = entry.wait()
            kept, failure = await (
                waited if call.timer is None else within(waited, call.timer, self.agent, call.spec.name)
            )
            if kept is not None:
                return kept
            if failure is not None:
                raise failure
        raise AgentUnavailable(f"the earlier calls under message_id {message_id!r} kept ending unfinished; try again")

    def open_stream(self, call: ServedCall) -> Coroutine[Any, Any, AsyncGenerator[Any, None]]:
        executed, message_id = self.executed, call.message.message_id
        # A stream is not replayed: a retry of one that started must not run it twice.
        first, entry = executed.claim(message_id)
        if not first:
            raise DuplicateMessage(
                f"a call under message_id {message_id!r} already started on {self.agent!r}: "
                "a stream is neither replayed nor run twice; send it again under a new message_id",
                metadata={"field": "message_id"},
            )
        claim = _StreamClaim(executed, message_id, entry, call)
        call.at_first(claim.chunked)
        call.at_end(claim.ended)
        return self.next.open_stream(call)


class _StreamClaim:
    """A stream's claim on its message_id: given up or kept for good, as the stream goes."""

    __slots__ = ("call", "entry", "executed", "message_id")

    def __init__(
        self,
        executed: ExecutedCalls[agent_pb2.ExecuteResponse],
        message_id: str,
        entry: ExecutedCall[agent_pb2.ExecuteResponse],
        call: ServedCall,
    ) -> None:
        self.executed, self.message_id, self.call = executed, message_id, call
        self.entry: ExecutedCall[agent_pb2.ExecuteResponse] | None = entry

    def chunked(self) -> None:
        """The first chunk is out: from now on, a retry must not run the stream again."""
        if self.entry is not None:
            self.executed.settle(self.message_id, self.entry, None, _STREAMED)
            self.entry = None

    def ended(self, code: str, error: KosmosError | None, in_task: bool) -> None:
        """Ended before its first chunk, or with none at all (else nothing is left to do)."""
        entry, self.entry = self.entry, None
        if entry is None:
            return
        if not self.call.started or (error is not None and not is_final(error)):
            # Never started, or failed in a way a retry may mend (its own UNAVAILABLE, say):
            # forgotten, so that the retry runs, as for Execute.
            self.executed.settle(self.message_id, entry, None, None)
        else:  # it ran (to its end, or the caller went away, or it failed for good): never again
            self.executed.settle(self.message_id, entry, None, error or _STREAMED)
