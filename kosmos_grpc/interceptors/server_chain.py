"""The order of the server's interceptors, set here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from kosmos_grpc.envelope import DEFAULT_MAX_HOPS
from kosmos_grpc.interceptors.admission import AdmissionInterceptor
from kosmos_grpc.interceptors.deadline import DeadlineInterceptor
from kosmos_grpc.interceptors.idempotency import IdempotencyInterceptor
from kosmos_grpc.interceptors.inbound import InboundInterceptor
from kosmos_grpc.interceptors.loops import LoopGuard
from kosmos_grpc.interceptors.outbound import made
from kosmos_grpc.interceptors.payload_schema import PayloadSchemas
from kosmos_grpc.interceptors.server_telemetry import ServerTelemetry

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.admission import Admission
    from kosmos_grpc.idempotency import ExecutedCalls

#: What makes an interceptor from the next link of the chain (an interceptor class itself, say).
InboundFactory: TypeAlias = Callable[[InboundInterceptor], InboundInterceptor]

__all__ = ["InboundFactory", "server_chain"]


def server_chain(
    handlers: InboundInterceptor,
    *,
    agent: str,
    telemetry: bool,
    interceptors: Sequence[InboundFactory],
    executed: ExecutedCalls[agent_pb2.ExecuteResponse] | None,
    admission: Admission | None,
    running: Callable[[], float],
    intercepted: bool = False,
    max_hops: int = DEFAULT_MAX_HOPS,
    payload_checks: dict[str, Callable[[dict[str, Any]], None]] | None = None,
) -> InboundInterceptor:
    """The chain a served call goes through once its envelope is checked, outermost first:

    1. telemetry: the SERVER span covers everything below (the log fields are set before the chain);
    2. the agent's own ``interceptors``, in the order given (before anything is claimed or queued);
    3. the loop guard: a delegation chain over ``max_hops``, or back into this agent while it has
       no free slot, is refused before it claims its message_id or queues;
    4. the payload checked against its action's input schema (``payload_checks``), when it has one;
    5. idempotency: a duplicate message_id is answered from memory, never run twice;
    6. admission: the priority queue when ``max_concurrency`` is set, else the cap of
       ``max_concurrent_rpcs``, and the streams each connection holds;
    7. the deadline: a unary call's TTL, where gRPC's own deadline ends later (a stream's is kept
       by the servicer's StreamWatch);
    8. the handlers, which run the action (``running`` counts them).

    ``intercepted``: the server has ``grpc.aio`` interceptors underneath all this.

    A concern that is off is left out of the chain, so that it costs nothing.
    """
    chain: InboundInterceptor = DeadlineInterceptor(handlers, agent)
    if admission is not None:
        chain = AdmissionInterceptor(chain, admission, agent)
    if executed is not None:
        chain = IdempotencyInterceptor(chain, executed, agent)
    if payload_checks:
        chain = PayloadSchemas(chain, payload_checks)
    chain = LoopGuard(chain, agent, max_hops, admission)
    for make in reversed(interceptors):
        chain = made(make, chain, InboundInterceptor)
    if telemetry:
        waiting = (lambda: admission.waiting) if admission is not None else (lambda: 0)
        chain = ServerTelemetry(chain, agent, running, waiting, intercepted=intercepted)
    return chain
