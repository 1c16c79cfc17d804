"""Demeter's report store: reports kept in their own SQLite file (WAL), stored once per message_id.

A report's row keeps the message_id that stored it (UNIQUE), so a retried store_report, even one
arriving after a restart, answers with the report it made the first time. Deleting leaves a
tombstone (the row without its title and body): a late retry of the store that made it finds it
and does not bring the report back, and deleting it again answers as the first delete did. The
``reports`` view shows the live reports alone; Demeter's queries read it (attached read-only).
All of it runs on one thread of its own, so the writes are serialized and the event loop never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kosmos_grpc import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

__all__ = ["Report", "ReportStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_reports (
    report_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,     -- the envelope that stored it: a retry stores nothing more
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL,               -- ISO 8601, UTC
    deleted TEXT                         -- when delete_report removed it (a tombstone), else NULL
);
CREATE VIEW IF NOT EXISTS reports AS
    SELECT report_id, title, body, created FROM stored_reports WHERE deleted IS NULL;
"""

Report = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, taken at once (BEGIN IMMEDIATE), committed unless the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class ReportStore:
    """Reports in ``path``: store (once per message_id), get, delete (a tombstone stays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demeter-reports")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (or make) the file, in WAL mode, with its table and view."""
        await self._call(self._open)

    async def store(self, title: str, body: str, message_id: str, report_id: str | None = None) -> Report:
        """Store a report: ``{report_id, created}``, the first one's when ``message_id`` (or the
        caller's own ``report_id``) stored one already."""
        return await self._call(self._store, title, body, message_id, report_id)

    async def get(self, report_id: str) -> Report | None:
        """``{report_id, title, body, created}``, or None when there is no such report (or it was deleted)."""
        return await self._call(self._get, report_id)

    async def delete(self, report_id: str) -> bool:
        """Delete a report (True, also when it was deleted before); False when it never existed."""
        return await self._call(self._delete, report_id)

    async def count(self) -> int:
        """How many live reports there are."""
        return await self._call(self._count)

    def close(self) -> None:
        """Close the file (after the writes under way), and the thread."""
        self._pool.submit(self._close).result()
        self._pool.shutdown(wait=True)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        # Not cancelled half-way: a write the caller stopped waiting for still commits whole, or not at all.
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the report store is not open")
        return self._conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the report store {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # a stored report survives a power cut: the saga relies on it
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot open the report store {self.path}: {exc}") from None
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _store(self, title: str, body: str, message_id: str, report_id: str | None) -> Report:
        with _transaction(self._db()) as conn:  # the look-up and the insert together
            row = conn.execute(
                "SELECT report_id, created FROM stored_reports WHERE message_id = ? OR report_id = ?",
                (message_id, report_id),
            ).fetchone()
            if row is None:
                row = (report_id or f"rpt-{uuid.uuid4().hex}", _now())
                conn.execute(
                    "INSERT INTO stored_reports (report_id, message_id, title, body, created) VALUES (?, ?, ?, ?, ?)",
                    (row[0], message_id, title, body, row[1]),
                )
        return {"report_id": row[0], "created": row[1]}

    def _get(self, report_id: str) -> Report | None:
        row = self._db().execute(
            "SELECT report_id, title, body, created FROM reports WHERE report_id = ?", (report_id,)
        )
        found = row.fetchone()
        return None if found is None else dict(zip(("report_id", "title", "body", "created"), found, strict=True))

    def _delete(self, report_id: str) -> bool:
        with _transaction(self._db()) as conn:  # the check and the tombstone together
            known = conn.execute("SELECT deleted FROM stored_reports WHERE report_id = ?", (report_id,)).fetchone()
            if known is None:
                return False
            if known[0] is None:
                conn.execute(
                    "UPDATE stored_reports SET title = '', body = '', deleted = ? WHERE report_id = ?",
                    (_now(), report_id),
                )
        return True

    def _count(self) -> int:
        count: int = self._db().execute("SELECT count(*) FROM reports").fetchone()[0]
        return count
