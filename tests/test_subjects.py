"""Subjects: the hierarchy, validation that names the problem, and trie matching equal to the reference."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kosmos_grpc import InvalidEnvelope
from kosmos_grpc.subjects import (
    AUDIT_LOG,
    MAX_HEADERS,
    SubjectTrie,
    _Node,
    agent_requests,
    agent_responses,
    matches,
    pattern_tokens,
    subject_tokens,
    validate_headers,
)


def test_the_hierarchy_is_named() -> None:
    assert agent_requests("athena") == "kosmos.agents.athena.requests"
    assert agent_responses("athena") == "kosmos.agents.athena.responses"
    assert AUDIT_LOG == "kosmos.events.audit.log"
    with pytest.raises(InvalidEnvelope, match="cannot be a subject token"):
        agent_requests("a.b")


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.b.c", "a.b", False),
        ("a.b", "a.b.c", False),
        ("a.*.c", "a.x.c", True),
        ("a.*.c", "a.x.y.c", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.>", "a.b", True),
        ("*.>", "a", False),
        ("kosmos.agents.*.requests", "kosmos.agents.athena.requests", True),
        ("kosmos.agents.*.requests", "kosmos.agents.athena.responses", False),
        ("kosmos.events.>", AUDIT_LOG, True),
    ],
)
def test_wildcards_match_as_in_nats(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected
    trie: SubjectTrie[str] = SubjectTrie()
    trie.add(pattern, "sub")
    assert (trie.match(subject) == ["sub"]) is expected


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("", "is empty"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a b", "whitespace"),
        ("a.\tb", "whitespace"),
        ("a.*", "wildcard"),
        ("a.>", "wildcard"),
        ("a.b*", "wildcard"),
        ("x" * 300, "over the limit of 256"),
        (".".join("t" * 17), "over the limit of 16"),
    ],
)
def test_a_bad_published_subject_is_refused_naming_the_problem(subject: str, problem: str) -> None:
    with pytest.raises(InvalidEnvelope, match=problem) as caught:
        subject_tokens(subject)
    assert caught.value.field == "subject"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("a.>.b", "'>' before its last token"),
        ("a.b*", "a wildcard must be a whole token"),
        ("a.>x", "a wildcard must be a whole token"),
        ("a..>", "empty token"),
        ("a >", "whitespace"),
    ],
)
def test_a_bad_pattern_is_refused_naming_the_problem(pattern: str, problem: str) -> None:
    with pytest.raises(InvalidEnvelope, match=problem) as caught:
        pattern_tokens(pattern)
    assert caught.value.field == "pattern"


def test_headers_are_bounded() -> None:
    validate_headers({"trace": "abc", "Nats-Msg-Id": "x"})
    with pytest.raises(InvalidEnvelope, match=f"over the limit of {MAX_HEADERS}"):
        validate_headers({f"h{i}": "v" for i in range(MAX_HEADERS + 1)})
    with pytest.raises(InvalidEnvelope, match="bytes, over the limit"):
        validate_headers({f"h{i}": "x" * 2000 for i in range(3)})
    with pytest.raises(InvalidEnvelope, match="visible ASCII without"):
        validate_headers({"a b": "v"})
    with pytest.raises(InvalidEnvelope, match="visible ASCII without"):
        validate_headers({"a:b": "v"})
    with pytest.raises(InvalidEnvelope, match="line break"):
        validate_headers({"a": "one\ntwo"})


def test_the_trie_agrees_with_the_reference_on_random_patterns_and_subjects() -> None:
    rng = random.Random(7)
    words = ["a", "b", "c", "kosmos"]

    def subject() -> str:
        return ".".join(rng.choice(words) for _ in range(rng.randint(1, 5)))

    def pattern() -> str:
        tokens = [rng.choice([*words, "*"]) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.3:
            tokens[-1] = ">"
        return ".".join(tokens)

    trie: SubjectTrie[int] = SubjectTrie()
    patterns = [pattern() for _ in range(400)]
    for index, p in enumerate(patterns):
        trie.add(p, index)
    for _ in range(2000):
        s = subject()
        assert sorted(trie.match(s)) == [i for i, p in enumerate(patterns) if matches(p, s)], s


def test_removing_every_subscription_leaves_an_empty_trie() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    entries = [("a.b.c", "1"), ("a.b.c", "2"), ("a.*.c", "3"), ("a.>", "4"), (">", "5"), ("a.b", "6")]
    for pattern, item in entries:
        trie.add(pattern, item)
    assert len(trie) == 6
    assert sorted(trie.match("a.b.c")) == ["1", "2", "3", "4", "5"]
    assert not trie.remove("a.b.c", "missing")
    assert not trie.remove("x.y", "1")
    for pattern, item in entries:
        assert trie.remove(pattern, item)
    assert len(trie) == 0
    assert trie.match("a.b.c") == []
    assert trie._root.empty(), "empty branches are pruned"


def test_unrelated_subscriptions_are_never_visited() -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    for i in range(10_000):
        trie.add(f"kosmos.tenant{i}.events.>", i)
    trie.add("kosmos.events.audit.log", -1)
    visited: list[str] = []

    class Spy(dict[str, _Node[int]]):
        def get(self, key: str, default: Any = None, /) -> Any:
            visited.append(key)
            return super().get(key, default)

    def spy(node: _Node[int]) -> None:
        node.children = Spy(node.children)
        for child in node.children.values():
            spy(child)

    spy(trie._root)
    assert trie.match(AUDIT_LOG) == [-1]
    # One literal and one "*" lookup per token: nothing that depends on the 10,000 others.
    assert len(visited) <= 2 * len(AUDIT_LOG.split("."))
