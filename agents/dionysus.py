"""Dionysus, the writer: prose from the context he is given, cited; an LLM's when one is configured.

``write`` answers the text at once, ``stream_generate`` streams the same text as it is made. The
default generator is the extractive composer (:mod:`agents.composer`): offline, deterministic,
every sentence quoted from a source and cited. With ``llm_url`` set, an OpenAI-compatible
chat-completions endpoint writes instead, its tokens relayed as they arrive. Dionysus also
answers Athena's ``retrieve_context`` and ``search`` (the mesh's fallback for her), honestly empty.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import TYPE_CHECKING, Any, ClassVar

from agents.chat_completions import ChatCompletions
from agents.composer import Composition, compose, no_sources, numbered_sources
from agents.embeddings import load_embedder
from kosmos_grpc import Agent, ConfigError, Context, DependencyUnavailable, StreamBroken, action
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from agents.embeddings import Embedder

__all__ = ["FALLBACK_NOTE", "Dionysus", "cited_numbers", "prompt"]

log = logging.getLogger(__name__)

#: What Dionysus answers in Athena's place.
FALLBACK_NOTE = "Dionysus has no knowledge index; Athena is unavailable"

_DOCUMENT = {
    "type": "object",
    "properties": {
        "source": {"type": "string", "minLength": 1, "maxLength": 1000},
        "title": {"type": "string", "maxLength": 1000},
        "snippet": {"type": "string", "maxLength": 8000},
        "score": {"type": "number", "minimum": -1e9, "maximum": 1e9},
    },
    # What else a retriever adds (a section, a rank) is let through and not read.
    "required": ["source", "snippet"],
}
WRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "instructions": {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": r"\S"},
        "context": {
            "type": "object",
            "properties": {
                "documents": {"type": "array", "maxItems": 50, "items": _DOCUMENT, "default": []},
                # Said by whoever answered for the retriever (Dionysus himself, in Athena's place).
                "note": {"type": "string", "maxLength": 2000},
            },
            "default": {"documents": []},
        },
        "max_sentences": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
    },
    "required": ["instructions"],
    "additionalProperties": False,
}
QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 2000},
        "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
    },
    "required": ["query"],
    "additionalProperties": False,
}
SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "embedder": {"type": "string", "minLength": 3, "maxLength": 300, "pattern": r"^[\w.]+:[\w.]+$"},
        "llm_url": {"type": "string", "maxLength": 2000, "pattern": r"^https?://[^\s/@]+(/\S*)?$"},
        "llm_model": {"type": "string", "minLength": 1, "maxLength": 300},
        "llm_api_key_env": {"type": "string", "maxLength": 200, "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "llm_timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 30},
    },
    "dependencies": {"llm_url": ["llm_model"], "llm_model": ["llm_url"], "llm_api_key_env": ["llm_url"]},
}

_SYSTEM = (
    "You are Dionysus, a careful writer. Follow the user's instructions using only the numbered sources "
    "the user gives. After each statement, cite the source it comes from as [n], with that source's number. "
    "If the sources do not hold what the instructions ask, say so plainly rather than guess."
)
_CITED = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def prompt(instructions: str, documents: Sequence[Mapping[str, Any]], max_sentences: int) -> list[dict[str, str]]:
    """The chat messages asking a model to follow ``instructions`` from the numbered ``documents``."""
    of_document, citations = numbered_sources(documents)
    parts: dict[int, list[str]] = {}
    for number, document in zip(of_document, documents, strict=True):
        parts.setdefault(number, []).append(str(document.get("snippet", "")).replace("**", "").strip())
    sources = "\n\n".join(
        f"[{c['index']}] {c['title']} ({c['source']})\n" + "\n...\n".join(parts[c["index"]]) for c in citations
    )
    user = f"Instructions: {instructions}\nWrite at most {max_sentences} sentences.\n\nSources:\n\n{sources}"
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def cited_numbers(text: str, count: int) -> set[int]:
    """The source numbers (1 to ``count``) that ``text`` cites as [n] or [n, m]."""
    found: set[int] = set()
    for match in _CITED.finditer(text):
        found.update(int(n) for n in match.group(1).split(","))
    return {n for n in found if 1 <= n <= count}


class Dionysus(Agent):
    """Writing: prose from the given context, cited, at once or streamed; Athena's stand-in, honestly empty."""

    name = "dionysus"
    settings_schema: ClassVar[Mapping[str, Any] | None] = SETTINGS_SCHEMA

    def __init__(self) -> None:
        self._embedder: Embedder | None = None
        self._llm: ChatCompletions | None = None
        self._bursts = BurstLog(log)

    async def on_start(self) -> None:
        """The generator the settings name: the LLM endpoint's client, else the composer's embedder (loaded now)."""
        settings = self.host.settings
        url = settings.get("llm_url")
        if url is None:
            self._embedder = await asyncio.to_thread(load_embedder, settings.get("embedder"))
            return
        key = None
        variable = settings.get("llm_api_key_env")
        if variable is not None:
            key = os.environ.get(variable)
            if not key:
                raise ConfigError(
                    f"[agents.dionysus.settings] llm_api_key_env names {variable}, which is not set in Dionysus's "
                    "environment: set it to the endpoint's API key, or leave llm_api_key_env out"
                )
        self._llm = ChatCompletions(url, settings["llm_model"], key, settings["llm_timeout_seconds"])
        log.info("dionysus writes with %s at %s", settings["llm_model"], self._llm.shown)

    async def on_stop(self) -> None:
        if self._llm is not None:
            await self._llm.aclose()

    @action(schema=WRITE_SCHEMA)
    async def write(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Write from the context what the instructions ask, citing its sources as [n]."""
        pieces: list[str] = []
        citations: list[dict[str, Any]] = []
        async for chunk in self._generate(ctx, payload):
            pieces.append(chunk["text"])
            citations = chunk.get("citations", citations)
        return {"text": "".join(pieces), "citations": citations}

    @action(schema=WRITE_SCHEMA)
    async def stream_generate(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Write as ``write`` does, streaming the text as it is made; the last chunk carries the citations."""
        relayed = 0
        try:
            async for chunk in self._generate(ctx, payload):
                yield chunk
                relayed += 1
        except DependencyUnavailable as exc:
            if not relayed:
                raise  # nothing reached the caller: a retry loses nothing
            # The caller holds part of a text no retry would write again the same: what is missing is lost.
            raise StreamBroken(f"{exc.message} (after {relayed} chunks sent)", metadata=exc.metadata) from None

    @action(schema=QUERY_SCHEMA)
    async def retrieve_context(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Athena's retrieve_context, answered in her absence: no documents, and why."""
        return {"documents": [], "note": FALLBACK_NOTE}

    @action(schema=QUERY_SCHEMA)
    async def search(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Athena's search, answered in her absence: no documents, and why."""
        return {"documents": [], "note": FALLBACK_NOTE}

    async def _generate(self, ctx: Context, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The text's chunks as the generator makes them, ``{"text": piece}``; the last also has the citations."""
        instructions: str = payload["instructions"]
        context: dict[str, Any] = payload["context"]
        documents: list[dict[str, Any]] = context.get("documents", [])
        max_sentences: int = payload["max_sentences"]
        if self._llm is None or not documents:  # with nothing to cite, no model is asked to invent
            composition = await self._compose(instructions, documents, max_sentences, context.get("note"))
            last = len(composition.pieces) - 1
            for index, piece in enumerate(composition.pieces):
                yield {"text": piece, "citations": composition.citations} if index == last else {"text": piece}
            return
        _, citations = numbered_sources(documents)
        said: list[str] = []
        try:
            async for token in self._llm.stream(prompt(instructions, documents, max_sentences), ctx.deadline):
                said.append(token)
                yield {"text": token}
        except DependencyUnavailable as exc:
            self._bursts.warn("llm", "dionysus: %s", exc.message)
            raise
        # Only the sources the text cites: a source the model was given and did not use backs nothing it says.
        cited = cited_numbers("".join(said), len(citations))
        yield {"text": "", "citations": [c for c in citations if c["index"] in cited]}

    async def _compose(
        self, instructions: str, documents: list[dict[str, Any]], max_sentences: int, note: str | None
    ) -> Composition:
        if not documents:
            return no_sources(note)
        embedder = self._embedder
        if embedder is None:  # pragma: no cover - on_start loads it whenever no llm_url is set
            raise ConfigError("dionysus has no embedder: it was not started")
        return await asyncio.to_thread(compose, instructions, documents, max_sentences, embedder)
