"""The standard gRPC tracing of ``opentelemetry-instrumentation-grpc``, as ``grpc.aio`` interceptors.

What ``[telemetry] grpc_instrumentation = true`` gives every process the mesh starts: a CLIENT
span around each call a channel makes and a SERVER span around each call a server takes, named
``/<service>/<method>``, beside the mesh's own spans and in the same trace. The library is
imported on first use, so a process without the switch never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = ["grpc_client_interceptors", "grpc_server_interceptors"]


def grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The library's client interceptors (unary and streaming calls alike), for a ``grpc.aio`` channel."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors()
    return interceptors


def grpc_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The library's server interceptor, as the list a ``grpc.aio`` server takes."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor()
    return [interceptor]
