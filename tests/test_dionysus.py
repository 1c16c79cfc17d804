"""Dionysus on a real gRPC server: the extractive composer, streaming, the LLM path over real SSE, his stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from agents.chat_completions import ChatCompletions
from agents.composer import DUPLICATE_COSINE, sentences_of
from agents.dionysus import FALLBACK_NOTE, Dionysus
from kosmos_grpc import (
    AgentServer,
    ConfigError,
    Coordinator,
    KosmosError,
    ResourceExhausted,
    ServerSettings,
    StreamBroken,
)

from .conftest import free_port
from .helpers.chat_server import ChatServer, Script

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from .conftest import Mesh

KEY_ENV = "KOSMOS_TEST_DIONYSUS_KEY"
KEY = "sk-test-0123456789abcdef"

DOCUMENTS = [
    {
        "source": "notes/kitchen.md",
        "title": "Kitchen",
        "snippet": "Pasta cooks in ten minutes in salted water. Bananas are yellow and sweet.",
        "score": 0.9,
    },
    {
        "source": "docs/architecture.md",
        "title": "Architecture",
        "snippet": "# Architecture\n**Zeus** coordinates the agents: he delegates each call to the agent that "
        "serves it. Bananas ripen faster in a paper bag. The registry maps the name of every agent to the "
        "address it listens on.",
        "score": 0.8,
    },
    {
        "source": "README.md",
        "title": "README",
        "snippet": "Hermes sends **email** over SMTP to the configured server. Zeus coordinates the agents, and he "
        "delegates every call to the agent that serves it. A call to an agent goes through its circuit breaker, "
        "which opens after five failures in a row.",
        "score": 0.7,
    },
]
QUESTION = "How does Zeus coordinate the agents and delegate their calls?"
WRITE = {"instructions": QUESTION, "context": {"documents": DOCUMENTS}, "max_sentences": 3}


@contextlib.asynccontextmanager
async def dionysus(mesh: Mesh, tmp_path: Path, settings: dict[str, Any] | None = None) -> AsyncIterator[Coordinator]:
    """Dionysus served in-process on a free port with ``settings``; a client that does not retry."""
    server = AgentServer(
        Dionysus(),
        ServerSettings(grace_seconds=1),
        registry=mesh.registry,
        agent_settings=settings or {},
        state_dir=tmp_path / "dionysus",
    )
    await server.start()
    try:
        async with mesh.client(resilience=False) as client:
            yield client
    finally:
        await server.stop(0)


async def chunks_until_failure(
    client: Coordinator, payload: dict[str, Any]
) -> tuple[list[dict[str, Any]], KosmosError | None]:
    """The chunks of a stream_generate call, and the error it ended with (None when it ended well)."""
    received: list[dict[str, Any]] = []
    try:
        async for chunk in client.stream("dionysus", "stream_generate", payload, timeout_ms=10_000):
            received.append(chunk.data)
    except KosmosError as exc:
        return received, exc
    return received, None


def llm(url: str, **more: Any) -> dict[str, Any]:
    return {"llm_url": url, "llm_model": "tiny-test-model", "llm_api_key_env": KEY_ENV, **more}


async def test_the_composer_picks_relevant_sentences_drops_a_near_duplicate_and_cites_by_first_use(
    mesh: Mesh, tmp_path: Path
) -> None:
    async with dionysus(mesh, tmp_path) as client:
        result = (await client.delegate("dionysus", "write", WRITE)).result
    text = result["text"]
    # The best sentence, from the architecture notes, cited first: [1] is the first source used,
    # though the kitchen notes were ranked above it (they say nothing to the question).
    assert text.startswith("Zeus coordinates the agents: he delegates each call to the agent that serves it [1].")
    assert "The registry maps the name of every agent to the address it listens on [1]." in text
    assert "A call to an agent goes through its circuit breaker" in text
    assert text.endswith("[2].")
    # README's rewording of the best sentence (cosine above DUPLICATE_COSINE) is left out.
    assert "Zeus coordinates the agents, and he" not in text
    assert DUPLICATE_COSINE == 0.8
    for unrelated in ("Bananas", "Pasta", "Hermes", "**"):
        assert unrelated not in text
    assert result["citations"] == [
        {"index": 1, "source": "docs/architecture.md", "title": "Architecture"},
        {"index": 2, "source": "README.md", "title": "README"},
    ]


def test_snippets_are_cut_into_sentences_of_prose() -> None:
    snippet = (
        "...the end of a cut sentence. Issue #13 is not a heading. **KOSMOS** is a mesh, e.g. for agents.\n"
        "## Heading\n- a list item without its stop\n"
        "```\nx = call(1). Code stays out.\n```\n"
        "| a | table |\nresult = await f(a, {'k': [1]}). Too short. And one cut off at the ..."
    )
    assert list(sentences_of(snippet)) == [
        "Issue #13 is not a heading.",
        "KOSMOS is a mesh, e.g. for agents.",
        "a list item without its stop.",
    ]


async def test_the_composer_is_deterministic(mesh: Mesh, tmp_path: Path) -> None:
    async with dionysus(mesh, tmp_path) as client:
        first = (await client.delegate("dionysus", "write", WRITE)).result
        again = (await client.delegate("dionysus", "write", WRITE)).result
        shorter = (await client.delegate("dionysus", "write", {**WRITE, "max_sentences": 1})).result
    assert first == again
    assert shorter["text"] == "Zeus coordinates the agents: he delegates each call to the agent that serves it [1]."
    assert shorter["citations"] == [{"index": 1, "source": "docs/architecture.md", "title": "Architecture"}]


async def test_with_no_documents_the_text_says_so_and_cites_nothing(mesh: Mesh, tmp_path: Path) -> None:
    async with dionysus(mesh, tmp_path) as client:
        bare = (await client.delegate("dionysus", "write", {"instructions": QUESTION})).result
        noted = {"instructions": QUESTION, "context": {"documents": [], "note": FALLBACK_NOTE}}
        told = (await client.delegate("dionysus", "write", noted)).result
    assert bare == {
        "text": "No sources were given, so there is nothing to write from: "
        "Dionysus writes only from the context given.",
        "citations": [],
    }
    assert told["text"].startswith(f"No sources were given ({FALLBACK_NOTE})")


async def test_stream_generate_chunks_join_into_write_text_and_the_last_carries_the_citations(
    mesh: Mesh, tmp_path: Path
) -> None:
    async with dionysus(mesh, tmp_path) as client:
        written = (await client.delegate("dionysus", "write", WRITE)).result
        chunks, failure = await chunks_until_failure(client, WRITE)
    assert failure is None
    assert len(chunks) == 3  # one a sentence, sent as each is written out
    assert "".join(c["text"] for c in chunks) == written["text"]
    assert [("citations" in c) for c in chunks] == [False, False, True]
    assert chunks[-1]["citations"] == written["citations"]


async def test_llm_tokens_are_relayed_each_before_the_endpoint_makes_the_next(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    tokens = ["Zeus ", "delegates ", "each call [2]", "."]
    gates = {i: asyncio.Event() for i in range(1, len(tokens))}
    async with ChatServer(Script(tokens, gates)) as endpoint, dionysus(mesh, tmp_path, llm(endpoint.url)) as client:
        received: list[dict[str, Any]] = []
        async for chunk in client.stream("dionysus", "stream_generate", WRITE, timeout_ms=10_000):
            received.append(chunk.data)
            if len(received) <= len(tokens):
                # The endpoint cannot make token i+1 until this gate opens, and we open it only
                # once token i has reached us: a Dionysus that buffered would stall here.
                assert endpoint.produced == tokens[: len(received)]
                if len(received) in gates:
                    gates[len(received)].set()
        endpoint.script = Script(tokens)  # write's call: the tokens come at once
        written = (await client.delegate("dionysus", "write", WRITE)).result
    assert [c["text"] for c in received] == [*tokens, ""]
    cited = [{"index": 2, "source": "docs/architecture.md", "title": "Architecture"}]
    assert received[-1]["citations"] == cited  # only the source the text cites, under the number it was given
    assert all("citations" not in c for c in received[:-1])
    assert written == {"text": "".join(tokens), "citations": cited}
    body, headers = endpoint.bodies[0], endpoint.headers[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["stream"] is True
    assert body["model"] == "tiny-test-model"
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "[n]" in system["content"]
    assert user["role"] == "user"
    assert QUESTION in user["content"]
    assert "[1] Kitchen (notes/kitchen.md)" in user["content"]
    assert "[3] README (README.md)" in user["content"]
    assert "Zeus coordinates" in user["content"]
    assert "**" not in user["content"]


async def test_an_endpoint_cut_mid_stream_gives_its_chunks_then_data_loss(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with (
        ChatServer(Script(["one ", "two "], end="cut")) as endpoint,
        dionysus(mesh, tmp_path, llm(endpoint.url)) as client,
    ):
        chunks, failure = await chunks_until_failure(client, WRITE)
        with pytest.raises(KosmosError) as written:
            await client.delegate("dionysus", "write", WRITE)
    assert [c["text"] for c in chunks] == ["one ", "two "]
    # The caller holds part of a text: DATA_LOSS, not a retryable UNAVAILABLE that would repeat it.
    assert isinstance(failure, StreamBroken)
    assert failure.code == grpc.StatusCode.DATA_LOSS
    assert "failed mid-stream after 2 pieces: the connection dropped" in failure.message
    assert endpoint.url in failure.message
    # write gave the caller nothing yet: UNAVAILABLE, which a retry can mend.
    assert written.value.code == grpc.StatusCode.UNAVAILABLE
    assert "mid-stream" in written.value.message
    assert KEY not in failure.message + written.value.message


async def test_an_event_that_is_not_json_ends_the_stream_with_data_loss(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with (
        ChatServer(Script(["one "], end="garbage")) as endpoint,
        dionysus(mesh, tmp_path, llm(endpoint.url)) as client,
    ):
        chunks, failure = await chunks_until_failure(client, WRITE)
    assert [c["text"] for c in chunks] == ["one "]
    assert failure is not None
    assert failure.code == grpc.StatusCode.DATA_LOSS
    assert "mid-stream after 1 pieces: an event's data is not JSON" in failure.message


async def test_an_endpoint_that_is_down_is_unavailable_naming_its_url(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with dionysus(mesh, tmp_path, llm(url)) as client:
        with pytest.raises(KosmosError) as written:
            await client.delegate("dionysus", "write", WRITE)
        chunks, streamed = await chunks_until_failure(client, WRITE)
    assert written.value.code == grpc.StatusCode.UNAVAILABLE
    assert written.value.message == f"cannot reach the model endpoint {url}/chat/completions: connection refused"
    assert chunks == []
    assert streamed is not None
    assert streamed.code == grpc.StatusCode.UNAVAILABLE
    assert KEY not in written.value.message + streamed.message


async def test_an_http_error_is_unavailable_with_its_status_and_body_and_no_key(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    echoed = '{"error": {"message": "Incorrect API key provided: ' + KEY + '"}}' + " " * 5000
    async with (
        ChatServer(Script(status=401, body=echoed)) as endpoint,
        dionysus(mesh, tmp_path, llm(endpoint.url)) as client,
    ):
        with pytest.raises(KosmosError) as written:
            await client.delegate("dionysus", "write", WRITE)
    message = written.value.message
    assert written.value.code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith(f"the model endpoint {endpoint.url}/chat/completions answered HTTP 401: ")
    assert "Incorrect API key provided: [redacted]" in message
    assert KEY not in message
    assert len(message) < 600  # the body clipped


async def test_an_endpoint_slower_than_llm_timeout_seconds_is_cut_off(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with (
        ChatServer(Script(["slow "], end="hang")) as endpoint,
        dionysus(mesh, tmp_path, llm(endpoint.url, llm_timeout_seconds=0.5)) as client,
    ):
        chunks, failure = await chunks_until_failure(client, WRITE)
    assert [c["text"] for c in chunks] == ["slow "]
    assert failure is not None
    assert failure.code == grpc.StatusCode.DATA_LOSS
    assert "did not finish its answer within 0.5 s (llm_timeout_seconds; after 1 pieces)" in failure.message


async def test_the_answer_and_the_bytes_read_are_bounded() -> None:
    messages = [{"role": "user", "content": "hi"}]
    async with ChatServer(Script(["12345678", "90abcdef"])) as endpoint:
        short = ChatCompletions(endpoint.url, "m", None, 5, max_text_chars=10)
        small = ChatCompletions(endpoint.url, "m", None, 5, max_wire_bytes=100)
        try:
            got: list[str] = []
            pieces = short.stream(messages, None)
            got.append(await anext(pieces))
            with pytest.raises(ResourceExhausted, match="passed 10 characters mid-stream, after 1 pieces"):
                await anext(pieces)
            assert got == ["12345678"]
            with pytest.raises(ResourceExhausted, match="sent more than 100 bytes"):
                _ = [piece async for piece in small.stream(messages, None)]
        finally:
            await short.aclose()
            await small.aclose()


async def test_settings_are_checked_and_a_missing_key_variable_stops_the_start(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="missing dependency llm_model for llm_url"):
        Dionysus.checked_settings({"llm_url": "http://127.0.0.1:8000/v1"})
    with pytest.raises(ConfigError, match=r"agents\.dionysus\.settings\.llm_url: must match pattern"):
        Dionysus.checked_settings({"llm_url": "http://user:secret@127.0.0.1:8000/v1", "llm_model": "m"})
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"llm_api_key_env names {KEY_ENV}, which is not set"):
        async with dionysus(mesh, tmp_path, llm("http://127.0.0.1:8000/v1")):
            pass


@pytest.mark.parametrize(
    ("action", "payload", "field"),
    [
        ("write", {"context": {"documents": []}}, "payload.instructions"),
        ("write", {"instructions": "x" * 4001}, "payload.instructions"),
        ("write", {"instructions": "   "}, "payload.instructions"),
        ("write", {"instructions": "q", "max_sentences": 21}, "payload.max_sentences"),
        (
            "write",
            {"instructions": "q", "context": {"documents": [{"snippet": "s"}]}},
            "payload.context.documents.0.source",
        ),
        ("write", {"instructions": "q", "context": {"documents": [DOCUMENTS[0]] * 51}}, "payload.context.documents"),
        ("write", {"instructions": "q", "tone": "jolly"}, "payload"),
        ("stream_generate", {"instructions": "q", "max_sentences": 0}, "payload.max_sentences"),
        ("retrieve_context", {"query": "q", "k": 51}, "payload.k"),
        ("search", {"query": ""}, "payload.query"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    mesh: Mesh, tmp_path: Path, action: str, payload: dict[str, Any], field: str
) -> None:
    async with dionysus(mesh, tmp_path) as client:
        if action == "stream_generate":
            _, refusal = await chunks_until_failure(client, payload)
        else:
            with pytest.raises(KosmosError) as refused:
                await client.delegate("dionysus", action, payload)
            refusal = refused.value
    assert refusal is not None
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.metadata.get("field") == field
    assert refusal.message.startswith(field)


async def test_in_athenas_place_dionysus_answers_no_documents_and_says_why(mesh: Mesh, tmp_path: Path) -> None:
    async with dionysus(mesh, tmp_path) as client:
        context = (await client.delegate("dionysus", "retrieve_context", {"query": "what is zeus?"})).result
        found = (await client.delegate("dionysus", "search", {"query": "zeus", "k": 3})).result
    assert context == found == {"documents": [], "note": "Dionysus has no knowledge index; Athena is unavailable"}
