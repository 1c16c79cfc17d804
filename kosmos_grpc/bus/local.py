"""In-process delivery: a subject trie of subscriptions and queue groups, fed by publish.

The embedded broker serves this over gRPC with pre-serialized events as its items; it works
in one process on its own too, with any item type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY, Subscription
from kosmos_grpc.subjects import SubjectTrie, check_queue, pattern_tokens

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LocalBus"]

T = TypeVar("T")


class _Group(Generic[T]):
    """The members of one queue group on one pattern: each event goes to one of them."""

    __slots__ = ("members", "turn")

    def __init__(self) -> None:
        self.members: list[Subscription[T]] = []
        self.turn = 0

    def offer(self, event: T) -> bool:
        """Hand the event to the next member in turn, or the one after it if that one is full."""
        count = len(self.members)
        for step in range(count):  # the next member in turn that has room
            index = (self.turn + step) % count
            if not self.members[index].full and self.members[index].offer(event):
                self.turn = (index + 1) % count
                return True
        member = self.members[self.turn]  # all full: the one in turn drops it, and counts it
        self.turn = (self.turn + 1) % count
        return member.offer(event)


class LocalBus(Generic[T]):
    """Subscriptions by pattern, and publish to all that match (at most once, never waiting).

    ``expired`` tells an item whose TTL ran out while it waited in a buffer: it is skipped.
    ``weigh`` tells an item's size in bytes, for subscriptions bounded in bytes (``max_bytes``).
    """

    def __init__(self, expired: Callable[[T], bool] | None = None, weigh: Callable[[T], int] | None = None) -> None:
        self._trie: SubjectTrie[Subscription[T] | _Group[T]] = SubjectTrie()
        self._groups: dict[tuple[str, str], _Group[T]] = {}
        self._expired = expired
        self._weigh = weigh

    def subscribe(
        self,
        pattern: str,
        queue: str | None = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int | None = None,
    ) -> Subscription[T]:
        """A new subscription to ``pattern`` (InvalidEnvelope naming ``pattern`` or ``queue`` when
        it is not one); with ``max_bytes`` (and the bus's ``weigh``) its buffer is bounded in bytes too."""
        pattern_tokens(pattern)  # before anything is made or stored
        if queue:
            check_queue(queue)
        subscription: Subscription[T] = Subscription(
            pattern,
            queue or None,
            capacity=capacity,
            on_unsubscribe=self._forget,
            expired=self._expired,
            max_bytes=max_bytes,
            weigh=self._weigh,
        )
        if queue:
            group = self._groups.get((pattern, queue))
            if group is None:
                group = self._groups[(pattern, queue)] = _Group()
                self._trie.add(pattern, group)
            group.members.append(subscription)
        else:
            self._trie.add(pattern, subscription)
        return subscription

    async def _forget(self, subscription: Subscription[T]) -> None:
        self.remove(subscription)

    def remove(self, subscription: Subscription[T]) -> None:
        """Stop delivering to ``subscription`` (it stays readable until its buffer is empty)."""
        subscription.close()
        if subscription.queue is None:
            self._trie.remove(subscription.pattern, subscription)
            return
        key = (subscription.pattern, subscription.queue)
        group = self._groups.get(key)
        if group is None or subscription not in group.members:
            return
        group.members.remove(subscription)
        if not group.members:
            del self._groups[key]
            self._trie.remove(subscription.pattern, group)

    def publish(self, subject: str, item: T) -> int:
        """Hand ``item`` to every subscription matching ``subject`` (already validated); how many took it."""
        delivered = 0
        for target in self._trie.match(subject):
            if target.offer(item):
                delivered += 1
        return delivered

    def __len__(self) -> int:
        return len(self._trie)
