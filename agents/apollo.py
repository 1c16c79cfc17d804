"""Apollo, the monitor: every agent's health from its Watch stream, the circuits towards it, the event rates.

Apollo watches every agent of the registry, itself included (it reads SERVING once its own
``on_ready`` is done), and the agents that join later (the registry is looked at every
``registry_poll_seconds``). A change of health is published on ``kosmos.events.system.health``
as ``{agent, status, previous, since}``; an agent that cannot be reached reads UNREACHABLE.
Every event on ``kosmos.events.>`` is counted by subject (see :mod:`agents.event_rates`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from agents.event_rates import EventRates
from agents.health_watch import UNKNOWN, Backoff, HealthWatch
from agents.mesh_status import (
    MAX_AGENTS,
    STATUS_SCHEMA,
    agent_entry,
    agents_asked,
    budget,
    circuits_towards,
    iso_time,
    seconds_setting,
    status_reply,
)
from kosmos_grpc import Agent, Context, KosmosError, action
from kosmos_grpc.subjects import SYSTEM_HEALTH
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from kosmos_grpc.bus import Event, Subscription

__all__ = ["EVENTS", "Apollo"]

log = logging.getLogger(__name__)
_bursts = BurstLog(log)

#: What Apollo counts.
EVENTS = "kosmos.events.>"
#: The longest a health event may take to publish: a monitor does not wait on a slow broker.
PUBLISH_SECONDS = 1.0
_SUBSCRIBE_SECONDS = 5.0
_STOP_ROUNDS, _STOP_ROUND_SECONDS = 5, 1.0


class Apollo(Agent):
    """Monitoring: each agent's health and since when, the circuits towards it, and the event rates."""

    name = "apollo"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "watch_backoff_max_seconds": seconds_setting(0.05, 300, 5.0, "the longest wait before watching again"),
            "watch_connect_timeout_seconds": seconds_setting(0.1, 60, 3.0, "how long a Watch may take to say anything"),
            "registry_poll_seconds": seconds_setting(0.05, 300, 2.0, "how often the registry is read for new agents"),
            "describe_timeout_seconds": seconds_setting(0.05, 30, 1.0, "how long each agent's Describe may take"),
        },
    }

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) is what the event rates are counted by."""
        self.rates = EventRates(clock=clock)
        self._watches: dict[str, HealthWatch] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._subscription: Subscription[Event] | None = None

    async def on_ready(self) -> None:
        self._watch_new_agents()
        self._spawn(self._follow_registry(), "apollo registry")
        # Subscribed before SERVING when the broker answers, so that no event after that is missed.
        if self.host.bus is not None and not await self._subscribe():
            self._spawn(self._count_events(), "apollo events")

    async def on_stop(self) -> None:
        for watch in self._watches.values():
            watch.close()
        pending = {*self._watchers.values(), *self._background}
        for _ in range(_STOP_ROUNDS):  # a cancellation that a library swallowed is asked again
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=_STOP_ROUND_SECONDS)
        if pending:
            log.warning("apollo: %d of its tasks did not end when asked", len(pending))
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _watch_new_agents(self) -> None:
        """Start a watcher for each agent of the registry that has none (at most MAX_AGENTS)."""
        registry = self.host.registry
        settings = self.host.settings
        for name in list(registry):
            if name in self._watchers:
                continue
            if len(self._watchers) >= MAX_AGENTS:
                _bursts.warn("too many", "apollo watches %d agents at most; not %s", MAX_AGENTS, name)
                break
            watch = HealthWatch(
                name,
                lambda name=name: registry.get(name),  # type: ignore[misc]
                self._changed,
                backoff_max=settings["watch_backoff_max_seconds"],
                connect_timeout=settings["watch_connect_timeout_seconds"],
            )
            task = asyncio.create_task(watch.run(), name=f"apollo watching {name}")
            self._watches[name], self._watchers[name] = watch, task
            task.add_done_callback(lambda done, name=name: self._ended(name, done))  # type: ignore[misc]

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        """A watcher ends when its agent leaves the registry (or when cancelled): forget it."""
        if self._watchers.get(name) is task:
            del self._watchers[name]
            self._watches.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("apollo's watcher of %s failed", name, exc_info=task.exception())

    async def _follow_registry(self) -> None:
        while True:
            await asyncio.sleep(self.host.settings["registry_poll_seconds"])
            self._watch_new_agents()

    async def _count_events(self) -> None:
        """Subscribe to every event, trying again with backoff while the broker is away (the bus
        resubscribes by itself once subscribed)."""
        backoff = Backoff(0.5, 10.0)
        while True:
            await asyncio.sleep(backoff.next_delay())
            if await self._subscribe():
                return

    async def _subscribe(self) -> bool:
        """Subscribe to every event; whether it could."""
        bus = self.host.bus
        assert bus is not None
        try:
            async with asyncio.timeout(_SUBSCRIBE_SECONDS):
                self._subscription = await bus.subscribe(EVENTS, self._count)
        except (KosmosError, TimeoutError) as exc:
            _bursts.warn("subscribe", "apollo cannot subscribe to %s yet (trying again): %s", EVENTS, exc)
            return False
        return True

    async def _count(self, event: Event) -> None:
        self.rates.record(event.subject)

    async def _changed(self, agent: str, status: str, previous: str | None, since: float) -> None:
        """Note a change of ``agent``'s health and publish it (best-effort); the first sight is no change."""
        if previous is None:
            log.info("apollo: %s is %s", agent, status)
            return
        log.info("apollo: %s is %s (was %s)", agent, status, previous)
        bus = self.host.bus
        if bus is None:
            return
        event = {"agent": agent, "status": status, "previous": previous, "since": iso_time(since)}
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            async with asyncio.timeout(PUBLISH_SECONDS):
                await bus.publish(SYSTEM_HEALTH, event)
        except (KosmosError, TimeoutError) as exc:
            _bursts.warn("publish", "apollo could not publish the health of %s: %s", agent, exc)

    @action(schema=STATUS_SCHEMA)
    async def get_status(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Each agent's health and since when, the circuits towards it, and the event rates."""
        registry = self.host.registry
        names = agents_asked(payload, registry)
        timeout = budget(ctx, self.host.settings["describe_timeout_seconds"])
        towards = await circuits_towards(self.host.client, sorted(registry)[:MAX_AGENTS], timeout)
        agents: dict[str, dict[str, Any]] = {}
        for name in names:
            watch = self._watches.get(name)
            if watch is None or watch.status is None:  # joined since the registry was last read
                agents[name] = agent_entry(UNKNOWN, None, towards.get(name))
            else:
                agents[name] = agent_entry(watch.status, watch.since, towards.get(name))
        return status_reply(agents, self.rates.snapshot(), self.name)
