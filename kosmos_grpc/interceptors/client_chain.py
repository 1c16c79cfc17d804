"""The order of the client's interceptors, set here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from kosmos_grpc.interceptors.announce import Announce
from kosmos_grpc.interceptors.client_telemetry import ClientTelemetry
from kosmos_grpc.interceptors.outbound import OutboundInterceptor, made
from kosmos_grpc.interceptors.resilience import ResilienceInterceptor

if TYPE_CHECKING:
    from collections.abc import Container, Sequence

    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.resilience import Resilience

#: What makes an interceptor from the next link of the chain (an interceptor class itself, say).
OutboundFactory: TypeAlias = Callable[[OutboundInterceptor], OutboundInterceptor]

__all__ = ["OutboundFactory", "client_chain", "outer_links"]


def client_chain(
    transport: OutboundInterceptor,
    *,
    source: str,
    telemetry: bool,
    events: EventBus | None,
    interceptors: Sequence[OutboundFactory],
    resilience: Resilience | None,
    known: Container[str] | None = None,
) -> tuple[OutboundInterceptor, OutboundInterceptor]:
    """The chain a delegation goes through, outermost first:

    1. telemetry: the span covers everything below, retries included (a fallback gets its own);
       its metrics are labelled with the agents of ``known`` (the registry) only;
    2. announcements: one per delegation, not per attempt;
    3. the caller's own ``interceptors``, in the order given, each seeing the delegation once;
    4. resilience: the call to the target or a fallback, through its breaker (once), retried;
    5. the transport: one gRPC call per attempt.

    A concern that is off is left out of the chain, so that it costs nothing. Returned: the
    whole chain, and its inner part (3 to 5), which :func:`outer_links` wraps again when the
    bus changes, so that the caller's interceptors are made once.
    """
    inner = transport
    if resilience is not None:
        inner = ResilienceInterceptor(inner, resilience)
    for make in reversed(interceptors):
        inner = made(make, inner, OutboundInterceptor)
    return outer_links(inner, source=source, telemetry=telemetry, events=events, known=known), inner


def outer_links(
    inner: OutboundInterceptor,
    *,
    source: str,
    telemetry: bool,
    events: EventBus | None,
    known: Container[str] | None = None,
) -> OutboundInterceptor:
    """Links 1 and 2 of :func:`client_chain` around its inner part."""
    chain = inner
    if events is not None:
        chain = Announce(chain, events)
    if telemetry:
        chain = ClientTelemetry(chain, source, known)
    return chain
