"""Announcements: each delegation on ``kosmos.agents.<agent>.requests``, its outcome on ``.responses``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kosmos_grpc.errors import KosmosError
from kosmos_grpc.interceptors.outbound import OpenStream, OutboundInterceptor
from kosmos_grpc.subjects import agent_requests, agent_responses

if TYPE_CHECKING:
    from kosmos_grpc._proto.kosmos.v1 import agent_pb2
    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.interceptors.outbound import Delegation

__all__ = ["Announce"]

log = logging.getLogger(__name__)


class Announce(OutboundInterceptor):
    """Publishes what a delegation is (not its payload) and how it ended, on ``bus``.

    Announcing never changes a delegation's own outcome: a failure to publish is logged, no more.
    """

    def __init__(self, next: OutboundInterceptor, bus: EventBus) -> None:
        super().__init__(next)
        self.bus = bus

    async def delegate(self, call: Delegation[agent_pb2.ExecuteRequest]) -> agent_pb2.ExecuteResponse:
        await self._request(call)
        try:
            reply = await self.next.delegate(call)
        except KosmosError as error:
            await self._outcome(call, error.code.name)
            raise
        await self._outcome(call, "OK")
        return reply

    async def open_stream(self, call: Delegation[agent_pb2.StreamRequest]) -> OpenStream:
        await self._request(call)

        async def ended(code: str, error: BaseException | None) -> None:
            await self._outcome(call, code)

        call.at_end(ended)
        return await self.next.open_stream(call)

    async def _request(self, call: Delegation[Any]) -> None:
        message = call.request.message
        payload = {
            "action": call.action,
            "message_id": message.message_id,
            "source_agent": message.source_agent,
            "target_agent": call.agent,
        }
        await self._tell(agent_requests(call.agent), payload, message.correlation_id)

    async def _outcome(self, call: Delegation[Any], status: str) -> None:
        message = call.request.message
        answered = call.answered if status == "OK" else ""
        payload = {"action": call.action, "message_id": message.message_id, "status": status, "answered_by": answered}
        await self._tell(agent_responses(call.agent), payload, message.correlation_id)

    async def _tell(self, subject: str, payload: dict[str, Any], correlation_id: str) -> None:
        try:
            await self.bus.publish(subject, payload, correlation_id=correlation_id)
        except Exception as exc:
            log.warning("could not announce a delegation on %s: %s", subject, exc)
