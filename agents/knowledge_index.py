"""Athena's index of a corpus: sections in SQLite (FTS5 for BM25, float32 embeddings), in step with the files.

One SQLite file holds every section, a full-text table over them (Porter-stemmed ``unicode61``
tokens, ranked by FTS5's ``bm25()``), each section's embedding, and each file's size, mtime and
SHA-256, so a restart re-embeds only the files whose content changed. The embeddings are also
kept in memory as one matrix: a corpus of a few thousand sections is a few MB, and one matrix
product ranks them all. Every method is blocking: call it in a thread. A lock keeps the
connection to one thread at a time; embedding happens outside it, so queries go on meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agents.corpus_files import FileStat, Scanner, read_bounded
from agents.embeddings import cosine
from agents.fusion import COVERAGE_POWER, RRF_K, coverage, fuse
from agents.sections import Section, clip, split_markdown
from agents.words import STOP_WORDS, words
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from agents.embeddings import Embedder

__all__ = [
    "CANDIDATES",
    "RRF_K",
    "Document",
    "KnowledgeIndex",
    "Method",
    "SyncReport",
    "fuse",
    "match_expression",
    "query_terms",
]

log = logging.getLogger(__name__)
_bursts = BurstLog(log)

Method = Literal["bm25", "embeddings", "hybrid"]
SCHEMA_VERSION = "2"  # 2: a section keeps its lines
SNIPPET_CHARS = 600
#: Words of a query that go into its full-text match, at most.
MAX_QUERY_TERMS = 64
#: How deep each ranking goes (at least k) before the two are fused: about a fifth of a corpus of
#: a hundred sections, deep enough that a section one method ranks well is seen by the fusion.
CANDIDATES = 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sections (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, position INTEGER NOT NULL, slug TEXT NOT NULL,
    title TEXT NOT NULL, heading TEXT NOT NULL, body TEXT NOT NULL, embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sections_by_path ON sections (path);
CREATE VIRTUAL TABLE IF NOT EXISTS sections_fts USING fts5 (title, heading, body, tokenize = 'porter unicode61');
"""


@dataclass(frozen=True, slots=True)
class Document:
    """One result: ``file#section``, ``Title — Heading``, a snippet and its score (higher is better)."""

    source: str
    title: str
    snippet: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "title": self.title, "snippet": self.snippet, "score": self.score}


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one pass over the folder found and did."""

    files: int
    sections: int
    #: Files whose sections were rebuilt (added, or their content changed), and their sections embedded.
    rebuilt: int
    embedded: int
    removed: int
    #: Changed files left for the next pass (a pass rebuilds at most its ``limit``).
    pending: int


@dataclass(frozen=True, slots=True)
class _Entry:
    source: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class _Vectors:
    """The sections as the queries see them: ids, their embeddings as one matrix, what to answer."""

    ids: NDArray[np.int64]
    matrix: NDArray[np.float32]
    entries: dict[int, _Entry]


@dataclass(frozen=True, slots=True)
class _Rebuild:
    """A changed file read, split and embedded, ready to be written (``sections`` None: same content)."""

    stat: FileStat
    sha256: str
    title: str = ""
    sections: Sequence[Section] | None = None
    vectors: NDArray[np.float32] | None = None


def query_terms(query: str) -> list[str]:
    """The words of a query its lexical search looks for: its content words (its stop words, if it has nothing else)."""
    found = words(query)
    chosen = [word for word in found if word not in STOP_WORDS] or found
    return list(dict.fromkeys(chosen))[:MAX_QUERY_TERMS]


def match_expression(query: str) -> str | None:
    """An FTS5 query matching any of the query's terms (:func:`query_terms`).

    Each word is quoted, so nothing a query holds (``AND``, ``NEAR(``, ``*``, ``"``, ``:``) is FTS5 syntax;
    None when it has no word at all, which then has no lexical candidates.
    """
    return _any_of(query_terms(query))


def _any_of(terms: Sequence[str]) -> str | None:
    return " OR ".join(f'"{term}"' for term in terms) or None


def _fallback_title(relative: str) -> str:
    return PurePosixPath(relative).stem.replace("_", " ").replace("-", " ").strip() or relative


def _embedding_text(title: str, section: Section) -> str:
    return f"{title}. {section.heading}. {section.text}".replace("\n", " ")  # lines matter to a writer, not here


class KnowledgeIndex:
    """The index of ``corpus`` kept in the SQLite file ``database``, embedded by ``embedder``.

    ``embedder_name`` identifies the embedder: when it differs from the one the file was built
    with, every section is embedded again.
    """

    def __init__(self, database: Path, corpus: Path, embedder: Embedder, embedder_name: str) -> None:
        self.corpus = corpus
        #: Reciprocal rank fusion's constant, and the power of BM25's coverage weights (the benchmark compares others).
        self.rrf_constant: float = RRF_K
        self.coverage_power: float = COVERAGE_POWER
        self._embedder = embedder
        self._scanner = Scanner(corpus)
        self._lock = threading.Lock()
        self._closed = False
        self._db = _open(database)
        self._start_fresh_unless(SCHEMA_VERSION, embedder_name)
        self._vectors = self._load_vectors()

    # ---- keeping in step with the folder

    def sync(self, limit: int | None = None) -> SyncReport:
        """One pass: files added or changed re-read and re-embedded (at most ``limit``), removed ones dropped."""
        found = {stat.relative: stat for stat in self._scanner.scan()}
        with self._lock:
            if self._closed:
                return SyncReport(0, 0, 0, 0, 0, 0)
            known = {
                row[0]: (row[1], row[2], row[3])
                for row in self._db.execute("SELECT path, size, mtime_ns, sha256 FROM files")
            }
        removed = sorted(known.keys() - found.keys())
        changed = [s for rel, s in found.items() if known.get(rel, (None, None, ""))[:2] != (s.size, s.mtime_ns)]
        work, pending = (changed, []) if limit is None else (changed[:limit], changed[limit:])
        rebuilds = [r for r in (self._prepare(s, known.get(s.relative, (0, 0, ""))[2]) for s in work) if r]
        with self._lock:
            if self._closed:
                return SyncReport(0, 0, 0, 0, 0, 0)
            if removed or rebuilds:
                with self._db:  # one transaction: a crash leaves the index as it was before the pass
                    for relative in removed:
                        self._delete(relative)
                    for rebuild in rebuilds:
                        self._write(rebuild)
            fresh = [r for r in rebuilds if r.sections is not None]
            if removed or fresh:
                self._vectors = self._load_vectors()
            sections = len(self._vectors.ids)
        embedded = sum(len(r.sections or ()) for r in fresh)
        return SyncReport(len(found), sections, len(fresh), embedded, len(removed), len(pending))

    def _prepare(self, stat: FileStat, known_sha: str) -> _Rebuild | None:
        data = read_bounded(stat.path)
        if data is None:
            return None  # gone, unreadable or grown too big since it was listed: the next pass sees
        digest = hashlib.sha256(data).hexdigest()
        if digest == known_sha:
            return _Rebuild(stat, digest)  # touched, not changed: only its size and mtime are kept
        title, sections = split_markdown(data.decode("utf-8", errors="replace"), _fallback_title(stat.relative))
        vectors = self._embedder.embed([_embedding_text(title, section) for section in sections])
        return _Rebuild(stat, digest, title, sections, np.asarray(vectors, dtype=np.float32))

    def _delete(self, relative: str) -> None:
        self._db.execute(
            "DELETE FROM sections_fts WHERE rowid IN (SELECT id FROM sections WHERE path = ?)", (relative,)
        )
        self._db.execute("DELETE FROM sections WHERE path = ?", (relative,))
        self._db.execute("DELETE FROM files WHERE path = ?", (relative,))

    def _write(self, rebuild: _Rebuild) -> None:
        stat = rebuild.stat
        if rebuild.sections is not None:
            assert rebuild.vectors is not None
            self._delete(stat.relative)
            for position, (section, vector) in enumerate(zip(rebuild.sections, rebuild.vectors, strict=True)):
                row = (stat.relative, position, section.slug, rebuild.title, section.heading, section.text)
                cursor = self._db.execute(
                    "INSERT INTO sections (path, position, slug, title, heading, body, embedding)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*row, vector.tobytes()),
                )
                self._db.execute(
                    "INSERT INTO sections_fts (rowid, title, heading, body) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, rebuild.title, section.heading, section.text),
                )
        self._db.execute(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
            (stat.relative, stat.size, stat.mtime_ns, rebuild.sha256),
        )

    def _load_vectors(self) -> _Vectors:
        rows = self._db.execute(
            "SELECT id, path, slug, title, heading, body, embedding FROM sections ORDER BY path, position"
        ).fetchall()
        entries = {
            row[0]: _Entry(f"{row[1]}#{row[2]}", f"{row[3]} — {row[4]}", clip(row[5], SNIPPET_CHARS)) for row in rows
        }
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        if not rows:
            return _Vectors(ids, np.zeros((0, 0), dtype=np.float32), entries)
        matrix = np.stack([np.frombuffer(row[6], dtype=np.float32) for row in rows])
        return _Vectors(ids, matrix, entries)

    def _start_fresh_unless(self, version: str, embedder_name: str) -> None:
        """Empty the index when it was built by another schema or embedder (its files are then indexed anew)."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta == {"schema": version, "embedder": embedder_name}:
            return
        if meta:
            log.info("athena: index built by %s, now %s: indexing every file again", meta, embedder_name)
        with self._db:
            for table in ("files", "sections", "sections_fts", "meta"):
                self._db.execute(f"DELETE FROM {table}")  # the table names are ours, never input
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", version), ("embedder", embedder_name)])

    # ---- queries

    def retrieve(self, query: str, k: int, method: Method = "hybrid") -> list[Document]:
        """The ``k`` sections best for ``query``: by BM25, by embeddings, or both fused (:mod:`agents.fusion`)."""
        depth = k if method != "hybrid" else max(k, CANDIDATES)
        terms = query_terms(query)
        weights: dict[int, float] = {}
        with self._lock:
            vectors = self._vectors
            lexical = self._bm25(terms, depth) if method != "embeddings" else []
            if method == "hybrid" and lexical:
                holders = {term: self._holders(term) for term in terms}
                weights = coverage(holders, len(vectors.ids), (i for i, _ in lexical), self.coverage_power)
        if method == "bm25":
            ranked = lexical
        else:
            semantic = self._semantic(vectors, query, depth)
            if method == "embeddings":
                ranked = semantic
            else:
                rankings = [[i for i, _ in lexical], [i for i, _ in semantic]]
                ranked = fuse(rankings, self.rrf_constant, [weights, None])
        found = []
        for section, score in ranked[:k]:
            entry = vectors.entries.get(section)
            if entry is not None:
                found.append(Document(entry.source, entry.title, entry.text, round(score, 6)))
        return found

    def search(self, query: str, k: int) -> list[Document]:
        """The ``k`` best sections by BM25 alone, each snippet with the matched terms in ``**``."""
        expression = match_expression(query)
        if expression is None:
            return []
        with self._lock:
            vectors = self._vectors
            rows = self._match(
                "SELECT rowid, bm25(sections_fts), snippet(sections_fts, -1, '**', '**', '…', 40)"
                " FROM sections_fts WHERE sections_fts MATCH ? ORDER BY bm25(sections_fts) LIMIT ?",
                expression,
                k,
            )
        found = []
        for section, rank, snippet in rows:
            entry = vectors.entries.get(section)
            if entry is not None:
                found.append(Document(entry.source, entry.title, snippet, round(-rank, 6)))
        return found

    def _bm25(self, terms: Sequence[str], depth: int) -> list[tuple[int, float]]:
        expression = _any_of(terms)
        if expression is None:
            return []
        rows = self._match(
            "SELECT rowid, bm25(sections_fts) FROM sections_fts WHERE sections_fts MATCH ?"
            " ORDER BY bm25(sections_fts) LIMIT ?",
            expression,
            depth,
        )
        return [(row[0], -row[1]) for row in rows]  # bm25() is negative, the better the lower

    def _holders(self, term: str) -> set[int]:
        """Every section that holds ``term`` (stemmed, as the full-text index holds it)."""
        return {
            row[0]
            for row in self._match("SELECT rowid FROM sections_fts WHERE sections_fts MATCH ? LIMIT ?", f'"{term}"', -1)
        }

    def _match(self, sql: str, expression: str, limit: int) -> list[Any]:
        if self._closed:
            return []
        try:
            return self._db.execute(sql, (expression, limit)).fetchall()
        except sqlite3.OperationalError as exc:  # quoted words make none we know of: a backstop
            _bursts.warn("fts", "athena: full-text query %r failed: %s", clip(expression, 120), exc)
            return []

    def _semantic(self, vectors: _Vectors, query: str, depth: int) -> list[tuple[int, float]]:
        if not len(vectors.ids) or not words(query):
            return []  # punctuation alone has vectors too, but they say nothing of what is wanted
        wanted = self._embedder.embed([query])[0]
        if not wanted.any():
            return []  # no word the model knows: every similarity would be 0, a ranking of nothing
        similarity = cosine(wanted, vectors.matrix)
        order = np.argsort(-similarity, kind="stable")[:depth]
        return [(int(vectors.ids[i]), float(similarity[i])) for i in order]

    def close(self) -> None:
        """Close the database; a pass or query still running in a thread then finds it closed and stops."""
        with self._lock:
            self._closed = True
            self._db.close()


def _open(database: Path) -> sqlite3.Connection:
    """The index file, made if need be; one that is not a database (or not ours) is started afresh."""
    for attempt in (1, 2):
        db = sqlite3.connect(database, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT key, value FROM meta LIMIT 1").fetchall()
            db.execute("SELECT path, size, mtime_ns, sha256 FROM files LIMIT 1").fetchall()
            return db
        except sqlite3.DatabaseError as exc:
            db.close()
            if attempt == 2:
                raise
            log.warning("athena: index %s is unusable (%s): building it anew", database, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
    raise AssertionError("unreachable")
