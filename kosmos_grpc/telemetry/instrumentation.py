"""opentelemetry-instrumentation-grpc's asyncio interceptors, for ``[telemetry] grpc_instrumentation``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = ["grpc_client_interceptors", "grpc_server_interceptors"]


def grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The library's client interceptors: a CLIENT span per RPC, its context sent in the metadata."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def grpc_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The library's server interceptor: a SERVER span per RPC, continuing the caller's context."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]
