"""Delegation loops refused at once: a chain deeper than ``max_hops``, or one back into an agent with no free slot.

Every delegation made from inside a handler carries, in the envelope's ``route``, the agents it
passed through (the client fills it in). An agent that delegates to itself, or two that delegate
to each other, would otherwise take one slot of the priority queue per level and wait for a
deeper level that can never get one: the whole agent stalls until the calls' TTL. Here, before
the call claims its message_id or queues, such a call is refused with a status naming the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kosmos_grpc.bounds import MAX_NAME_CHARS
from kosmos_grpc.envelope import ROUTE_LIMIT
from kosmos_grpc.errors import DelegationLoop, InvalidEnvelope, ResourceExhausted
from kosmos_grpc.interceptors.inbound import InboundInterceptor

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine, Sequence

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.admission import Admission
    from kosmos_grpc.interceptors.inbound import ServedCall

__all__ = ["LoopGuard", "describe_route"]

# What a message shows of a route: its first and last agents, each name cut to this length.
_SHOWN_ENDS = 4
_SHOWN_NAME = 48


def describe_route(route: Sequence[str], here: str) -> str:
    """``zeus → athena → zeus``: the agents ``route`` passed through, then ``here``, bounded in length."""
    names = [*route, here]
    if len(names) > 2 * _SHOWN_ENDS + 1:
        hidden = len(names) - 2 * _SHOWN_ENDS
        names = [*names[:_SHOWN_ENDS], f"… {hidden} more …", *names[-_SHOWN_ENDS:]]
    return " → ".join(name if len(name) <= _SHOWN_NAME else name[: _SHOWN_NAME - 1] + "…" for name in names)


class LoopGuard(InboundInterceptor):
    """Refuses a call whose route is too long (FAILED_PRECONDITION), or that comes back into this
    agent while ``admission`` has no free slot (RESOURCE_EXHAUSTED, not retryable): queued, it
    would wait for a slot held by its own callers up the chain.

    A call from outside the mesh has no route and costs one length check.
    """

    def __init__(self, next: InboundInterceptor, agent: str, max_hops: int, admission: Admission | None) -> None:
        super().__init__(next)
        if not 1 <= max_hops <= ROUTE_LIMIT:
            raise ValueError(f"max_hops must be from 1 to {ROUTE_LIMIT}, got {max_hops}")
        self.agent = agent
        self.max_hops = max_hops
        self.admission = admission

    # Not coroutines of their own: a refusal raises as the call enters, the rest pass straight on.
    def execute(self, call: ServedCall) -> Coroutine[Any, Any, agent_pb2.ExecuteResponse]:
        if call.message.route:
            self._check(call.message.route)
        return self.next.execute(call)

    def open_stream(self, call: ServedCall) -> Coroutine[Any, Any, AsyncGenerator[Any, None]]:
        if call.message.route:
            self._check(call.message.route)
        return self.next.open_stream(call)

    def _check(self, route: Sequence[str]) -> None:
        hops = len(route)
        if hops > ROUTE_LIMIT:
            raise InvalidEnvelope("route", f"route has {hops} agents, over the limit of {ROUTE_LIMIT}")
        for name in route:
            if not name or len(name) > MAX_NAME_CHARS:
                raise InvalidEnvelope(
                    "route", f"route holds an agent name of {len(name)} characters; names are 1 to {MAX_NAME_CHARS}"
                )
        agent = self.agent
        if hops > self.max_hops:
            raise DelegationLoop(
                f"{describe_route(route, agent)}: {hops} hops, over max_hops {self.max_hops}; "
                "is an agent delegating to itself?",
                metadata={"field": "route", "hops": str(hops), "max_hops": str(self.max_hops)},
            )
        admission = self.admission
        if (
            admission is not None
            and (admission.running >= admission.max_concurrency or admission.waiting)
            and agent in route
        ):
            raise ResourceExhausted(
                f"{describe_route(route, agent)}: a call back into {agent!r}, which has no free slot "
                f"({admission.running} of {admission.max_concurrency} running): refused rather than queued "
                "behind the calls waiting for it",
                metadata={"field": "route", "hops": str(hops)},
            )
