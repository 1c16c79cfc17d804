"""Athena served for real: hybrid retrieval, lexical search, bounds, an index that persists and follows its folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agents.athena import DEFAULT_CORPUS, Athena
from agents.embeddings import load_embedder
from agents.words import content_words
from kosmos_grpc import AgentServer, InvalidEnvelope, ServerSettings
from tests.helpers.counting_embedder import CountingEmbedder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from kosmos_grpc import Coordinator
    from tests.conftest import Mesh

COUNTING = "tests.helpers.counting_embedder:factory"
ROOT = Path(__file__).resolve().parent.parent

DOCS = {
    "resilience.md": """# Resilience

How callers survive peers that fail.

## Circuit breakers

After five failed calls in a row the circuit to an agent opens, and calls to it fail at once
without being sent. Thirty seconds later a single probe call is let through: a success closes
the circuit again.

## Retries

A call that ends UNAVAILABLE is tried again, three attempts in all, with exponential backoff and
jitter between them.
""",
    "events.md": """# Events

## Wildcards

In a subscription pattern a star matches one token of a subject and a greater-than sign matches
every remaining token.

## Queue groups

Subscribers that join the same queue group share the events: each event goes to one member.
""",
    "mail.md": """# Mail

## Delivery

Hermes sends email over SMTP to the configured mail server. Without one he writes each message
into a Maildir folder under his state directory, one file per email.
""",
    "storage.md": """# Storage

## Sample database

Demeter keeps her data in SQLite. At her first start she creates a sample database with
customers, orders and products, always the same rows.
""",
}


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@contextlib.asynccontextmanager
async def serve_athena(mesh: Mesh, state: Path, **settings: Any) -> AsyncIterator[Coordinator]:
    """Athena in-process with ``settings`` and her folder ``state``; a client without retries."""
    server = AgentServer(
        Athena(), ServerSettings(grace_seconds=1), registry=mesh.registry, agent_settings=settings, state_dir=state
    )
    await server.start()
    try:
        async with mesh.client(resilience=False) as client:
            yield client
    finally:
        await server.stop(0)


async def documents(client: Coordinator, action: str, query: str, k: int = 5) -> list[dict[str, Any]]:
    response = await client.delegate("athena", action, {"query": query, "k": k})
    found: list[dict[str, Any]] = response.result["documents"]
    return found


async def until(condition: Any, limit: float = 10.0) -> None:
    """Poll ``await condition()`` until true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {limit} s")
        await asyncio.sleep(0.05)


async def test_a_question_is_answered_from_the_section_that_holds_the_answer(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus)) as client:
        found = await documents(client, "retrieve_context", "How long does the circuit stay open before a probe?", 3)
    assert found[0]["source"] == "resilience.md#circuit-breakers"
    assert found[0]["title"] == "Resilience — Circuit breakers"
    assert found[0]["snippet"].startswith("After five failed calls in a row the circuit")
    assert len(found) == 3
    scores = [document["score"] for document in found]
    assert scores == sorted(scores, reverse=True)


async def test_a_paraphrase_sharing_no_content_word_is_found_by_the_hybrid(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    question = "Where do the shop's purchase records come from?"
    answer = DOCS["storage.md"]
    assert not set(content_words(question)) & set(content_words(answer)), "the question must share no content word"
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus)) as client:
        lexical = await documents(client, "search", question)
        hybrid = await documents(client, "retrieve_context", question)
    assert "storage.md#sample-database" not in [document["source"] for document in lexical]
    assert hybrid[0]["source"] == "storage.md#sample-database"


async def test_search_highlights_the_matched_terms(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus)) as client:
        found = await documents(client, "search", "queue group members")
    assert found[0]["source"] == "events.md#queue-groups"
    assert found[0]["title"] == "Events — Queue groups"
    assert "**queue** **group**" in found[0]["snippet"]
    assert "**member**" in found[0]["snippet"]  # Porter stemming: "members" matched "member"
    assert found[0]["score"] > 0


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"query": "circuit", "k": 0}, "payload.k", "payload.k: must be bigger than or equal to 1"),
        ({"query": "circuit", "k": 51}, "payload.k", "payload.k: must be smaller than or equal to 50"),
        ({"query": "circuit", "k": 2.5}, "payload.k", "payload.k: must be integer"),
        ({"query": "x" * 2001}, "payload.query", "payload.query: must be shorter than or equal to 2000"),
        ({"query": ""}, "payload.query", "payload.query: must be longer than or equal to 1"),
        ({"k": 3}, "payload.query", "payload.query is required"),
    ],
)
async def test_bad_payloads_are_refused_naming_the_field(
    mesh: Mesh, tmp_path: Path, payload: dict[str, Any], field: str, says: str
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus)) as client:
        for action in ("retrieve_context", "search"):
            with pytest.raises(InvalidEnvelope) as refused:
                await client.delegate("athena", action, payload)
            assert refused.value.metadata["field"] == field
            assert says in refused.value.message


async def test_fts_syntax_in_a_query_is_only_words(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    hostile = ['NEAR(circuit breaker, 2) AND "', "circuit*", '"unbalanced', "title: OR ^probe", "NOT AND OR", "-:()"]
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus)) as client:
        for query in hostile:
            for action in ("retrieve_context", "search"):
                await documents(client, action, query)  # answers, whatever it finds
        found = await documents(client, "search", 'NEAR(circuit breaker, 2) AND "')
        assert found[0]["source"] == "resilience.md#circuit-breakers"  # the words, taken as words
        for action in ("retrieve_context", "search"):
            assert await documents(client, action, '"*^:()-+') == []  # no word at all: nothing to rank


async def test_the_index_persists_and_a_second_start_embeds_only_what_changed(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "athena"
    embedder = load_embedder(COUNTING)
    assert isinstance(embedder, CountingEmbedder)
    before = embedder.count
    async with serve_athena(mesh, state, corpus=str(corpus), embedder=COUNTING):
        pass
    assert embedder.count - before == 7, "every section of the four files embedded once"
    assert (state / "index.sqlite3").is_file()
    again = embedder.count
    async with serve_athena(mesh, state, corpus=str(corpus), embedder=COUNTING) as client:
        assert embedder.count == again, "nothing embedded on the second start"
        found = await documents(client, "search", "Maildir")
        assert found[0]["source"] == "mail.md#delivery"
    (corpus / "mail.md").write_text("# Mail\n\n## Delivery\n\nHermes now delivers into an mbox file.\n")
    (corpus / "events.md").touch()  # a new mtime, the same content: not embedded again
    again = embedder.count
    async with serve_athena(mesh, state, corpus=str(corpus), embedder=COUNTING) as client:
        assert embedder.texts[again:] == ["Mail. Delivery. Hermes now delivers into an mbox file."]
        assert (await documents(client, "search", "mbox"))[0]["source"] == "mail.md#delivery"


async def test_changed_added_and_removed_files_are_picked_up_while_she_runs(mesh: Mesh, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serve_athena(mesh, tmp_path / "athena", corpus=str(corpus), refresh_seconds=0.1) as client:

        async def sources(query: str) -> list[str]:
            return [document["source"] for document in await documents(client, "search", query)]

        assert await sources("zeppelin") == []
        (corpus / "storage.md").write_text("# Storage\n\n## Airships\n\nDemeter stores zeppelin timetables.\n")

        async def changed() -> bool:
            return await sources("zeppelin") == ["storage.md#airships"]

        await until(changed)
        assert await sources("customers") == [], "the old content is gone"
        (corpus / "nested").mkdir()
        (corpus / "nested" / "new.md").write_text("# New\n\n## Kites\n\nA kite section.\n")

        async def added() -> bool:
            return await sources("kite") == ["nested/new.md#kites"]

        await until(added)
        (corpus / "mail.md").unlink()

        async def removed() -> bool:
            return await sources("Maildir") == []

        await until(removed)


async def test_an_empty_or_missing_corpus_still_serves_no_documents(
    mesh: Mesh, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agents.athena"):
            async with serve_athena(mesh, tmp_path / f"state-{folder.name}", corpus=str(folder)) as client:
                assert await client.health("athena") == "SERVING"
                assert await documents(client, "retrieve_context", "what is a circuit breaker?") == []
                assert await documents(client, "search", "circuit") == []
        said = [record.getMessage() for record in caplog.records if "is empty or missing" in record.getMessage()]
        assert said == [f"athena: corpus {folder} is empty or missing: retrieve_context answers no documents"]


async def test_by_default_she_serves_the_shipped_corpus(mesh: Mesh, tmp_path: Path) -> None:
    assert ROOT / "corpus" == DEFAULT_CORPUS
    assert Athena.checked_settings({}) == {"refresh_seconds": 2}
    async with serve_athena(mesh, tmp_path / "athena") as client:
        found = await documents(
            client, "retrieve_context", "What does a priority of PRIORITY_CRITICAL mean for ttl_ms?"
        )
    assert "envelope.md#urgency-fields-priority-and-ttl_ms" in [document["source"] for document in found]
