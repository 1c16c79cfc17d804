"""Each payload checked against its action's input schema, before anything is claimed or queued."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc.interceptors.inbound import InboundInterceptor
from kosmos_grpc.schemas import compile_payload_check

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.agent import ActionSpec
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["PayloadSchemas", "payload_checks"]


def payload_checks(agent: str, actions: dict[str, ActionSpec]) -> dict[str, Callable[[dict[str, Any]], None]]:
    """The compiled check of every action of ``agent`` that declares an input schema (TypeError for a bad one)."""
    return {
        name: compile_payload_check(spec.input_schema, f"{agent}.{name}")
        for name, spec in actions.items()
        if spec.input_schema is not None
    }


class PayloadSchemas(InboundInterceptor):
    """INVALID_ARGUMENT naming the JSON path of a payload's first error against its action's schema;
    the defaults the schema gives are filled in for the handler."""

    def __init__(self, next: InboundInterceptor, checks: dict[str, Callable[[dict[str, Any]], None]]) -> None:
        super().__init__(next)
        self.checks = checks

    def execute(self, call: ServedCall) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        # Not a coroutine of its own: the check runs here, and the next link's coroutine goes on as it is.
        check = self.checks.get(call.spec.name)
        if check is not None:
            check(call.ctx.payload)
        return self.next.execute(call)

    def open_stream(self, call: ServedCall) -> Coroutine[Any, Any, AsyncGenerator[Any, None]]:
        check = self.checks.get(call.spec.name)
        if check is not None:
            check(call.ctx.payload)
        return self.next.open_stream(call)
