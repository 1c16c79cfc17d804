"""Athena, the knowledge agent: finds the sections of a folder of documents that answer a question.

``retrieve_context`` is hybrid: BM25 candidates from SQLite FTS5 and candidates by embedding
similarity over every section, fused by reciprocal rank fusion (constant 1) in which BM25's vote
for a section counts by how much of the query it holds (:mod:`agents.fusion`), so a question
worded unlike its answer is still found. ``search`` is the lexical half alone, its matched terms
highlighted. The index lives in her state folder, is built at start (re-embedding only changed
files) and follows the folder while she runs: see :mod:`agents.knowledge_index`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import agents
from agents.embeddings import load_embedder
from agents.knowledge_index import KnowledgeIndex
from kosmos_grpc import Agent, AgentUnavailable, Context, action
from kosmos_grpc.telemetry.bursts import BurstLog

__all__ = ["DEFAULT_CORPUS", "Athena", "corpus_folder"]

log = logging.getLogger(__name__)

#: The corpus the project ships: its own documentation, written for Athena.
DEFAULT_CORPUS = Path(agents.__file__).resolve().parent.parent / "corpus"
#: Changed files a refresh pass re-reads and re-embeds at most; the rest wait for the next pass.
FILES_PER_PASS = 50

_QUERY = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "the question or words"},
        "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5, "description": "how many sections"},
    },
    "required": ["query"],
    "additionalProperties": False,
}


def corpus_folder(setting: str | None) -> Path:
    """The folder ``corpus`` names (relative: to the working folder), else the shipped corpus."""
    return DEFAULT_CORPUS if setting is None else Path(setting).expanduser().absolute()


class Athena(Agent):
    """Knowledge: the passages of her documents that answer a question, by meaning and by words."""

    name = "athena"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "corpus": {
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "description": "the folder of documents (default: the repository's corpus/)",
            },
            "embedder": {
                "type": "string",
                "minLength": 3,
                "maxLength": 512,
                "description": "module:factory of another embedder (default: WordLlama, offline)",
            },
            "refresh_seconds": {
                "type": "number",
                "minimum": 0.05,
                "maximum": 86400,
                "default": 2,
                "description": "how often the folder is checked for changed files",
            },
        },
    }

    def __init__(self) -> None:
        self._index: KnowledgeIndex | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._bursts = BurstLog(log)

    async def on_start(self) -> None:
        settings = self.host.settings
        corpus = corpus_folder(settings.get("corpus"))
        spec = settings.get("embedder")
        database = self.host.state_dir / "index.sqlite3"
        started = time.monotonic()
        embedder = await asyncio.to_thread(load_embedder, spec)
        self._index = index = await asyncio.to_thread(KnowledgeIndex, database, corpus, embedder, spec or "wordllama")
        try:
            report = await asyncio.to_thread(index.sync)
        except BaseException:
            await asyncio.to_thread(index.close)
            raise
        if not report.files:
            log.warning("athena: corpus %s is empty or missing: retrieve_context answers no documents", corpus)
        else:
            log.info(
                "athena: %d sections of %d files from %s in %.2f s (%d files embedded anew); index %s",
                report.sections,
                report.files,
                corpus,
                time.monotonic() - started,
                report.rebuilt,
                database,
            )

    async def on_ready(self) -> None:
        self._refresher = asyncio.create_task(self._refresh(), name="athena-refresh")

    async def on_stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._index is not None:
            await asyncio.to_thread(self._index.close)

    async def _refresh(self) -> None:
        """Every ``refresh_seconds``, one bounded pass: changed, added and removed files indexed."""
        pause = float(self.host.settings["refresh_seconds"])
        index = self._index
        assert index is not None
        while True:
            await asyncio.sleep(pause)
            try:
                report = await asyncio.to_thread(index.sync, FILES_PER_PASS)
            except Exception as exc:  # a file system or database hiccup must not end the refreshing
                self._bursts.warn("refresh", "athena: refreshing the index failed: %s: %s", type(exc).__name__, exc)
                continue
            if report.rebuilt or report.removed:
                log.info(
                    "athena: %d files re-indexed (%d sections embedded), %d removed; %d sections, %d files wait",
                    report.rebuilt,
                    report.embedded,
                    report.removed,
                    report.sections,
                    report.pending,
                )

    def _ready_index(self) -> KnowledgeIndex:
        if self._index is None:
            raise AgentUnavailable("athena is still building her index")
        return self._index

    @action(schema=_QUERY)
    async def retrieve_context(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The k sections that best answer the query, by BM25 and embeddings fused, best first."""
        found = await asyncio.to_thread(self._ready_index().retrieve, payload["query"], payload["k"])
        return {"documents": [document.as_dict() for document in found]}

    @action(schema=_QUERY)
    async def search(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The k sections that match the query's words (BM25), the matched terms in **bold**."""
        found = await asyncio.to_thread(self._ready_index().search, payload["query"], payload["k"])
        return {"documents": [document.as_dict() for document in found]}
