"""The standard services every server carries, health and reflection, registered as grpcio's own
helpers do but with requests decoded by :func:`~kosmos_grpc._grpc.refusing`.

Registered by ``add_HealthServicer_to_server`` and ``enable_server_reflection``, bytes that do
not decode get UNKNOWN naming a Python exception, each with a traceback in the log: here they
get INVALID_ARGUMENT, logged a line a burst. The servicers are grpcio's, untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kosmos_grpc._grpc import SMALL_REQUEST, abort, refusing
from kosmos_grpc.errors import KosmosError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Sequence

    from kosmos_grpc.telemetry.bursts import BurstLog

__all__ = ["add_health_service", "add_reflection_service"]

_Context = grpc.aio.ServicerContext[Any, Any]


def add_health_service(servicer: health.aio.HealthServicer, server: grpc.aio.Server, refusals: BurstLog) -> None:
    """Serve ``grpc.health.v1.Health`` (Check, Watch; List when the servicer has it) from ``servicer``."""
    check_request = refusing(health_pb2.HealthCheckRequest, SMALL_REQUEST, refusals)
    reply = health_pb2.HealthCheckResponse.SerializeToString

    async def check(request: health_pb2.HealthCheckRequest | KosmosError, context: _Context) -> Any:
        if isinstance(request, KosmosError):
            await abort(context, request)
        return await servicer.Check(request, context)

    async def watch(request: health_pb2.HealthCheckRequest | KosmosError, context: _Context) -> None:
        if isinstance(request, KosmosError):
            await abort(context, request)
        await servicer.Watch(request, context)  # it sends with context.write

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Check": grpc.unary_unary_rpc_method_handler(check, check_request, reply),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, check_request, reply),
    }
    if type(servicer).List is not health_pb2_grpc.HealthServicer.List:  # grpcio-health 1.85's aio servicer has none
        list_request = refusing(health_pb2.HealthListRequest, SMALL_REQUEST, refusals)

        async def list_services(request: health_pb2.HealthListRequest | KosmosError, context: _Context) -> Any:
            if isinstance(request, KosmosError):
                await abort(context, request)
            return await servicer.List(request, context)

        handlers["List"] = grpc.unary_unary_rpc_method_handler(
            list_services, list_request, health_pb2.HealthListResponse.SerializeToString
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(health.SERVICE_NAME, handlers),))


def add_reflection_service(names: Sequence[str], server: grpc.aio.Server, refusals: BurstLog) -> None:
    """Serve ``grpc.reflection.v1alpha.ServerReflection`` for the services ``names``."""
    servicer = reflection.aio.ReflectionServicer(names)

    async def info(requests: AsyncIterable[Any], context: _Context) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for request in requests:
                if isinstance(request, KosmosError):
                    await abort(context, request)
                yield request

        async for response in servicer.ServerReflectionInfo(checked(), context):
            yield response

    handler = grpc.stream_stream_rpc_method_handler(
        info,
        refusing(reflection_pb2.ServerReflectionRequest, SMALL_REQUEST, refusals),
        reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(reflection.SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
