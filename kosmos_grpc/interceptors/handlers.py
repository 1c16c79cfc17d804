"""The last link of the server's chain: an action's handler run, its result put into the reply."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.calls import Chunk
from kosmos_grpc.envelope import dict_to_struct
from kosmos_grpc.errors import ActionFailed, KosmosError
from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from google.protobuf import struct_pb2

    from kosmos_grpc.agent import Agent
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["Handlers", "action_failed", "fill_result"]

log = logging.getLogger("kosmos_grpc.servicer")  # where a failed action has always been logged


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
            raise action_failed(self.agent, action, exc) from None
        finally:
            self.running -= 1
        message = call.message
        response = agent_pb2.ExecuteResponse()
        reply = response.response
        reply.agent = self.agent
        reply.request_message_id = message.message_id
        reply.correlation_id = message.correlation_id
        fill_result(reply.result, result, self.agent, action)
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


def fill_result(struct: struct_pb2.Struct, result: Any, agent: str, action: str) -> None:
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


def action_failed(agent: str, action: str, exc: Exception) -> ActionFailed:
    """An unexpected exception, logged here with its traceback, as the caller sees it: without one."""
    log.error("agent %s action %s failed", agent, action, exc_info=exc)
    return ActionFailed(f"{agent}.{action} failed: {type(exc).__name__}")


async def _one(result: Awaitable[Any]) -> AsyncGenerator[Any, None]:
    """A unary action's result as a stream of one chunk."""
    yield await result
