"""Event subjects: the kosmos hierarchy, validation, and a trie that finds matching subscriptions.

Subjects are dot-separated tokens, as in NATS. In a subscription pattern ``*`` matches exactly
one token and ``>`` (last only) one or more trailing tokens. A published subject holds no
wildcards. Matching walks a trie, so the cost of a publish depends on the subscriptions that
could match it, not on how many subscriptions exist; the trie keeps what each recent subject
matched (as NATS's sublist does), so that patterns sharing a long prefix with a subject (say
4,096 of ``*`` and its tokens, differing in the last) cost a repeated subject nothing either.

Every length and count is checked before any other work, and an error message quotes at most
:data:`~kosmos_grpc.quoting.ECHO_CHARS` characters of what it refuses.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Generic, TypeVar

from kosmos_grpc.errors import InvalidEnvelope
from kosmos_grpc.quoting import echo
from kosmos_grpc.subject_index import PatternBits

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "AUDIT_LOG",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_NAME",
    "MAX_HEADER_VALUE",
    "MAX_QUEUE_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "MAX_TOKENS",
    "NOTIFICATIONS_SENT",
    "SCALE_DOWN",
    "SCALE_UP",
    "SYSTEM_HEALTH",
    "USER_ACTION",
    "SubjectTrie",
    "agent_requests",
    "agent_responses",
    "check_queue",
    "check_subject",
    "matches",
    "pattern_tokens",
    "subject_tokens",
    "validate_headers",
]

USER_ACTION = "kosmos.events.user.action"
SYSTEM_HEALTH = "kosmos.events.system.health"
AUDIT_LOG = "kosmos.events.audit.log"
NOTIFICATIONS_SENT = "kosmos.events.notifications.sent"
SCALE_UP = "kosmos.commands.scale.up"
SCALE_DOWN = "kosmos.commands.scale.down"

MAX_SUBJECT_LENGTH = 256
MAX_TOKENS = 16
MAX_HEADERS = 32
MAX_HEADER_BYTES = 4096
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 2048
MAX_QUEUE_LENGTH = 128
#: The most characters of a refused value that an error message quotes.

_SINGLE = "*"
_REST = ">"
_WHITESPACE = frozenset(" \t\r\n\f\v")


@functools.lru_cache(maxsize=1024)  # announced on every delegation: built once per agent
def agent_requests(agent: str) -> str:
    """``kosmos.agents.<agent>.requests``: where delegations to ``agent`` are announced."""
    return f"kosmos.agents.{_token(agent, 'agent')}.requests"


@functools.lru_cache(maxsize=1024)
def agent_responses(agent: str) -> str:
    """``kosmos.agents.<agent>.responses``: where the outcomes of delegations to ``agent`` go."""
    return f"kosmos.agents.{_token(agent, 'agent')}.responses"


def _token(value: str, field: str) -> str:
    if (
        not value
        or len(value) > MAX_SUBJECT_LENGTH
        or "." in value
        or _SINGLE in value
        or _REST in value
        or not _WHITESPACE.isdisjoint(value)
    ):
        raise InvalidEnvelope(field, f"{field} {echo(value)} cannot be a subject token")
    return value


def _tokens(text: str, field: str) -> list[str]:
    if not text:
        raise InvalidEnvelope(field, f"{field} is empty")
    if len(text) > MAX_SUBJECT_LENGTH:  # first: nothing below runs over a long string
        raise InvalidEnvelope(field, f"{field} is {len(text)} characters long, over the limit of {MAX_SUBJECT_LENGTH}")
    if not _WHITESPACE.isdisjoint(text):
        raise InvalidEnvelope(field, f"{field} {echo(text)} contains whitespace")
    tokens = text.split(".")
    if "" in tokens:
        raise InvalidEnvelope(field, f"{field} {echo(text)} has an empty token")
    if len(tokens) > MAX_TOKENS:
        raise InvalidEnvelope(field, f"{field} {echo(text)} has {len(tokens)} tokens, over the limit of {MAX_TOKENS}")
    return tokens


def check_queue(queue: str) -> None:
    """Raise InvalidEnvelope (field ``queue``) unless ``queue`` can name a queue group (empty: none)."""
    if len(queue) > MAX_QUEUE_LENGTH:
        raise InvalidEnvelope("queue", f"queue is {len(queue)} characters long, over the limit of {MAX_QUEUE_LENGTH}")
    if not _WHITESPACE.isdisjoint(queue) or not queue.isprintable():
        raise InvalidEnvelope("queue", f"queue {echo(queue)} must be printable, without whitespace")


_CHECKED: set[str] = set()  # subjects already found valid: a publisher repeats a few subjects
_CHECKED_MAX = 4096


def check_subject(subject: str) -> None:
    """Raise InvalidEnvelope (field ``subject``) unless ``subject`` can be published on; remembers good ones."""
    if subject in _CHECKED:
        return
    subject_tokens(subject)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(subject)


def subject_tokens(subject: str) -> list[str]:
    """The tokens of a subject to publish on; InvalidEnvelope (field ``subject``) says what is wrong."""
    tokens = _tokens(subject, "subject")
    for token in tokens:
        if _SINGLE in token or _REST in token:
            raise InvalidEnvelope("subject", f"subject {echo(subject)} has a wildcard: only patterns may")
    return tokens


def pattern_tokens(pattern: str) -> list[str]:
    """The tokens of a subscription pattern; InvalidEnvelope (field ``pattern``) says what is wrong."""
    tokens = _tokens(pattern, "pattern")
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        if token == _REST and index != last:
            raise InvalidEnvelope("pattern", f"pattern {echo(pattern)} has '>' before its last token")
        if token not in (_SINGLE, _REST) and (_SINGLE in token or _REST in token):
            raise InvalidEnvelope("pattern", f"pattern {echo(pattern)}: a wildcard must be a whole token")
    return tokens


def validate_headers(headers: Mapping[str, str]) -> None:
    """Check an event's headers: at most MAX_HEADERS, each name and value bounded, MAX_HEADER_BYTES
    in all, no empty or spaced names; lengths first, so a huge header costs only its length."""
    if len(headers) > MAX_HEADERS:
        raise InvalidEnvelope("headers", f"{len(headers)} headers, over the limit of {MAX_HEADERS}")
    size = 0
    for name, value in headers.items():
        if len(name) > MAX_HEADER_NAME:
            raise InvalidEnvelope(
                "headers", f"header name {echo(name)} is over the limit of {MAX_HEADER_NAME} characters"
            )
        if len(value) > MAX_HEADER_VALUE:
            raise InvalidEnvelope(
                "headers",
                f"header {echo(name)} has a value of {len(value)} characters, over the limit of {MAX_HEADER_VALUE}",
            )
        # What NATS carries unchanged: visible ASCII names without ':', values on one line.
        if not name or not name.isascii() or not name.isprintable() or ":" in name or " " in name:
            raise InvalidEnvelope("headers", f"header name {echo(name)} must be visible ASCII without ':' or spaces")
        if "\r" in value or "\n" in value:
            raise InvalidEnvelope("headers", f"header {echo(name)} has a line break in its value")
        size += len(name) + len(value.encode())  # each bounded above: encoding costs little
        if size > MAX_HEADER_BYTES:
            raise InvalidEnvelope("headers", f"headers take more than {MAX_HEADER_BYTES} bytes, over the limit")


def matches(pattern: str, subject: str) -> bool:
    """Whether ``pattern`` matches ``subject`` (both assumed valid): the reference the trie must agree with."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == _REST:
            return len(given) > index
        if index >= len(given) or (token != _SINGLE and token != given[index]):
            return False
    return len(wanted) == len(given)


T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("children", "here", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}  # by literal token, and "*"
        self.here: list[T] = []  # patterns that end at this node
        self.rest: list[T] = []  # patterns that end here with ">"

    def empty(self) -> bool:
        return not (self.children or self.here or self.rest)


class SubjectTrie(Generic[T]):
    """Subscriptions by pattern; :meth:`match` finds those a subject reaches.

    A publish visits only the branches its own tokens (and ``*``) lead to, so subscriptions on
    unrelated subjects cost it nothing; and what a subject matched is kept (up to
    :attr:`CACHE_SUBJECTS` subjects and :attr:`CACHE_ITEMS` items in all, forgotten at every
    add or remove), so a subject published again costs one lookup whatever the patterns. A new
    subject whose walk would visit more than :attr:`WALK_BUDGET` nodes (patterns sharing much of
    it) is matched by :class:`PatternBits` instead, at a cost bounded whatever their shapes.
    """

    CACHE_SUBJECTS = 1024
    CACHE_ITEMS = 65_536
    WALK_BUDGET = 8

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._count = 0
        self._bits: PatternBits[list[T]] = PatternBits(MAX_TOKENS)
        self._cache: dict[str, list[T]] = {}
        self._cached_items = 0

    def _forget(self) -> None:
        if self._cache:
            self._cache = {}
            self._cached_items = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, item: T) -> None:
        """Subscribe ``item`` to ``pattern`` (validated: InvalidEnvelope naming ``pattern``)."""
        node = self._root
        tokens = pattern_tokens(pattern)
        for token in tokens[:-1]:
            node = node.children.setdefault(token, _Node())
        last = tokens[-1]
        bucket = node.rest if last == _REST else node.children.setdefault(last, _Node()).here
        if not bucket:
            self._bits.add(pattern, bucket)
        bucket.append(item)
        self._count += 1
        self._forget()

    def remove(self, pattern: str, item: T) -> bool:
        """Unsubscribe ``item`` from ``pattern``; whether it was there. Empty branches are pruned."""
        tokens = pattern_tokens(pattern)
        path = [self._root]
        for token in tokens[:-1]:
            child = path[-1].children.get(token)
            if child is None:
                return False
            path.append(child)
        last = tokens[-1]
        if last == _REST:
            bucket = path[-1].rest
        else:
            end = path[-1].children.get(last)
            if end is None:
                return False
            path.append(end)
            bucket = end.here
        try:
            bucket.remove(item)
        except ValueError:
            return False
        if not bucket:
            self._bits.remove(pattern)
        self._count -= 1
        self._forget()
        keys = [*tokens[:-1], last] if last != _REST else tokens[:-1]
        for depth in range(len(path) - 1, 0, -1):  # prune from the leaf up
            if not path[depth].empty():
                break
            del path[depth - 1].children[keys[depth - 1]]
        return True

    def match(self, subject: str) -> list[T]:
        """Every item subscribed by a pattern that matches ``subject`` (a valid, wildcard-free subject).

        The list may be the one kept for the subject: read it, never change it.
        """
        found = self._cache.get(subject)
        if found is not None:
            return found
        found = []
        tokens = subject.split(".")
        if not self._walk(tokens, found):
            found = [item for bucket in self._bits.match(tokens) for item in bucket]
        if len(self._cache) >= self.CACHE_SUBJECTS or self._cached_items + len(found) > self.CACHE_ITEMS:
            self._forget()  # bounded: a publisher of ever new subjects starts it afresh
        if len(found) <= self.CACHE_ITEMS:
            self._cache[subject] = found
            self._cached_items += len(found)
        return found

    def _walk(self, tokens: list[str], found: list[T]) -> bool:
        """Add to ``found`` what the trie holds for ``tokens``; False past WALK_BUDGET nodes."""
        count = len(tokens)
        budget = self.WALK_BUDGET
        stack = [(self._root, 0)]
        while stack:
            budget -= 1
            if budget < 0:
                return False
            node, index = stack.pop()
            if index == count:
                found.extend(node.here)
                continue
            found.extend(node.rest)  # ">" here takes every remaining token, at least one
            children = node.children
            literal = children.get(tokens[index])
            if literal is not None:
                stack.append((literal, index + 1))
            single = children.get(_SINGLE)
            if single is not None:
                stack.append((single, index + 1))
        return True

    def __iter__(self) -> Iterator[T]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield from node.here
            yield from node.rest
            stack.extend(node.children.values())
