"""Athena's index on its own: Markdown split into sections, safe queries, bounded files, a broken index rebuilt."""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import TYPE_CHECKING

import pytest

from agents.corpus_files import MAX_FILE_BYTES
from agents.embeddings import load_embedder
from agents.fusion import coverage
from agents.knowledge_index import SCHEMA_VERSION, KnowledgeIndex, fuse, match_expression
from agents.sections import clip, slugify, split_markdown
from tests.helpers.counting_embedder import CountingEmbedder

if TYPE_CHECKING:
    from pathlib import Path

COUNTING = "tests.helpers.counting_embedder:factory"

DOCUMENT = """Text before any heading.

# The Title

Under the title.

## First part

One.

```toml
# not a heading: a comment in a code block
[agents.athena.settings]
```

### A `[mesh]` detail

Deeper, still its own section.

#### Too deep

Stays in the section above.

## First part

The same heading again.

## Empty

## Last ##

Closing hashes are not part of the heading.
"""


def test_markdown_is_split_into_sections_with_github_anchors() -> None:
    title, sections = split_markdown(DOCUMENT, "fallback")
    assert title == "The Title"
    assert [(s.slug, s.heading) for s in sections] == [
        ("the-title", "Introduction"),
        ("first-part", "First part"),
        ("a-mesh-detail", "A `[mesh]` detail"),
        ("first-part-1", "First part"),
        ("last", "Last"),
    ]
    assert sections[0].text == "Text before any heading.\nUnder the title.", "lines kept, for the writer"
    assert "# not a heading: a comment in a code block" in sections[1].text
    assert "Too deep\nStays in the section above." in sections[2].text
    assert split_markdown("just words\n", "notes")[0] == "notes"


def test_slugs_and_clipping() -> None:
    assert slugify("The [mesh] table") == "the-mesh-table"
    assert slugify("Identity fields: message_id and timestamp") == "identity-fields-message_id-and-timestamp"
    assert slugify("???") == "section"
    assert clip("short", 10) == "short"
    clipped = clip("one two three four five six", 15)
    assert clipped == "one two three…"
    assert len(clipped) <= 15


def test_queries_become_quoted_words_and_fusion_rewards_both_lists() -> None:
    assert match_expression('NEAR(circuit "breaker", 2) AND x*') == '"near" OR "circuit" OR "breaker" OR "2" OR "x"'
    assert match_expression("what is it") == '"what" OR "is" OR "it"'  # only stop words: they are all it has
    assert match_expression("the circuit of the breaker") == '"circuit" OR "breaker"'
    assert match_expression('"*^:()') is None
    fused = fuse([[1, 2, 3], [3, 4]], constant=1)
    assert [item for item, _ in fused] == [3, 1, 2, 4]  # 3 is in both lists; a tie goes by id
    assert fused[0][1] == pytest.approx(1 / 4 + 1 / 2)


def test_an_oversized_file_is_skipped_with_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "small.md").write_text("# Small\n\nA small document about kites.\n")
    (corpus / "big.md").write_text("# Big\n\n" + "word " * (MAX_FILE_BYTES // 5 + 10))
    (corpus / ".hidden.md").write_text("# Hidden\n\nkites\n")
    (corpus / "picture.png").write_bytes(b"\x89PNG kites")
    index = KnowledgeIndex(tmp_path / "index.sqlite3", corpus, load_embedder(), "wordllama")
    try:
        with caplog.at_level(logging.WARNING, logger="agents.corpus_files"):
            first = index.sync()
            second = index.sync()
        assert (first.files, first.sections, second.rebuilt) == (1, 1, 0)
        skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert len(skipped) == 1
        assert "big.md" in skipped[0]
        assert [d.source for d in index.search("kites", 5)] == ["small.md#small"]
    finally:
        index.close()


def test_an_unusable_index_file_is_built_anew(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\n## Kites\n\nKites fly.\n")
    database = tmp_path / "index.sqlite3"
    database.write_bytes(b"this is not a database" * 100)
    index = KnowledgeIndex(database, corpus, load_embedder(), "wordllama")
    try:
        assert index.sync().sections == 1
        assert [d.source for d in index.search("kites", 5)] == ["a.md#kites"]
    finally:
        index.close()
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (SCHEMA_VERSION,)


def test_another_embedder_embeds_every_section_again(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\n## One\n\nFirst.\n\n## Two\n\nSecond.\n")
    database = tmp_path / "index.sqlite3"
    first = KnowledgeIndex(database, corpus, load_embedder(), "wordllama")
    first.sync()
    first.close()
    counting = load_embedder(COUNTING)
    assert isinstance(counting, CountingEmbedder)
    before = counting.count
    second = KnowledgeIndex(database, corpus, counting, COUNTING)
    try:
        assert second.sync().embedded == 2
        assert counting.count - before == 2
    finally:
        second.close()


def test_coverage_weighs_the_words_a_section_holds_by_their_rarity() -> None:
    holders = {"kites": {1}, "agent": {1, 2, 3, 4}, "soar": set()}  # soar: a word no section holds
    shares = coverage(holders, sections=4, among=[1, 2, 5], power=1)
    rare, common, absent = (math.log(5 / 1.5), math.log(5 / 4.5), math.log(5 / 0.5))
    assert shares[1] == pytest.approx((rare + common) / (rare + common + absent))
    assert shares[2] == pytest.approx(common / (rare + common + absent))  # one common word: a small share
    assert shares[5] == 0
    assert coverage(holders, 4, [2], power=3)[2] == pytest.approx(shares[2] ** 3)
    assert coverage({}, 4, [1]) == {}
    # BM25's vote for 1 weighs a tenth: the embeddings' first (2) wins, where plain fusion ties it.
    assert [item for item, _ in fuse([[1], [2, 1]], 1, [{1: 0.1}, None])] == [2, 1]
    assert [item for item, _ in fuse([[1], [2, 1]], 1)] == [1, 2]


def test_a_section_sharing_one_common_word_with_a_paraphrase_does_not_bury_its_answer(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "kites.md").write_text("# Kites\n\n## Flying\n\nKites fly high over the beach when the wind blows.\n")
    (corpus / "taxes.md").write_text("# Taxes\n\n## Filing\n\nTax forms and receipts are due on one day in April.\n")
    index = KnowledgeIndex(tmp_path / "index.sqlite3", corpus, load_embedder(), "wordllama")
    try:
        index.sync()
        question = "Which toys soar on a breezy day?"  # shares "day" with the taxes, nothing with the kites
        assert [d.source for d in index.retrieve(question, 2, "bm25")] == ["taxes.md#filing"]
        assert index.retrieve(question, 2, "embeddings")[0].source == "kites.md#flying"
        assert index.retrieve(question, 2)[0].source == "kites.md#flying"
        index.coverage_power = 0  # every vote whole: plain reciprocal rank fusion puts the one word first
        assert index.retrieve(question, 2)[0].source == "taxes.md#filing"
    finally:
        index.close()
