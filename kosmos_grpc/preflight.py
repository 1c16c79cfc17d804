"""What the mesh needs before ``kosmos up`` starts an agent, checked at once: one line when it is missing.

Without the check each agent would find out by itself, and the mesh would wait for agents that
cannot start; with it, a NATS server that is not there is named within seconds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kosmos_grpc.bus.nats_backend import NatsEventBus
from kosmos_grpc.errors import DependencyUnavailable

if TYPE_CHECKING:
    from kosmos_grpc.config import MeshConfig

__all__ = ["PREFLIGHT_SECONDS", "check_dependencies"]

#: How long ``kosmos up`` gives the whole check.
PREFLIGHT_SECONDS = 5.0


# ``timeout`` is a number of seconds handed on to the connect (nats-py's connect_timeout), not a scope.
async def check_dependencies(config: MeshConfig, *, timeout: float = PREFLIGHT_SECONDS) -> None:  # noqa: ASYNC109
    """Check, within ``timeout`` seconds (and one more for JetStream and the close), what ``config`` needs.

    That is the NATS server when ``[bus] nats`` is set: a real connect, and JetStream when the
    config has durable subjects (the agents' own connect asks for both). The embedded broker is
    not checked: ``kosmos up`` starts it.

    Raises:
        DependencyUnavailable: what is missing, where, why, and what to do, in one line.
    """
    bus = config.bus
    if not bus.nats_url:
        return
    nats = NatsEventBus(bus.nats_url, source_agent="preflight", durable=bus.durable)
    try:  # the connect, then JetStream's answer and the close, all within a second more
        async with asyncio.timeout(timeout + 1):
            try:
                await nats.connect(timeout)
            finally:
                await nats.close()
    except TimeoutError:
        raise DependencyUnavailable(
            f"cannot reach NATS at {bus.nats_url} (no answer within {timeout + 1:g} s): "
            "start it with '.venv/bin/nats-server -js' or set [bus] nats"
        ) from None
