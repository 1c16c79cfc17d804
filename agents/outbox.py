"""Hermes's outbox in SQLite: each email recorded before it is sent and marked after, so a message_id sends once.

One row per envelope message_id (its primary key) holding the built email, in one of three states:
``pending`` (recorded, maybe sent: a crash came before the mark), ``sent`` (with the answer given)
or ``failed`` (refused for good, with the refusal). WAL with ``synchronous=FULL``: a row is on disk
before the email leaves, and a mark is on disk before the answer does. Rows older than the
outbox's window are pruned. Every method blocks: the agent calls them in ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from agents.mail_message import Email

__all__ = ["FAILED", "PENDING", "SENT", "Entry", "Outbox"]

PENDING, SENT, FAILED = "pending", "sent", "failed"
_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,              -- of the request, so a reused message_id with another email is seen
    email_message_id TEXT NOT NULL,    -- its Message-ID header
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,          -- a JSON array
    subject TEXT NOT NULL,
    email BLOB NOT NULL,               -- the email as sent, byte for byte on every retry
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    result TEXT,                       -- sent: the answer (JSON); failed: {"field", "message"}
    announced INTEGER NOT NULL DEFAULT 0,  -- whether kosmos.events.notifications.sent went out
    created REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""
_COLUMNS = "message_id, digest, state, email, sender, recipients, subject, email_message_id, result, announced"


@dataclass(frozen=True, slots=True)
class Entry:
    """One email of the outbox as recorded."""

    message_id: str
    digest: str
    state: str
    email: bytes
    sender: str
    recipients: list[str]
    subject: str
    email_message_id: str
    #: The answer given (sent), or {"field", "message"} of the refusal (failed); None while pending.
    result: dict[str, Any] | None
    announced: bool


class Outbox:
    """The SQLite outbox at ``path``: one connection, its calls serialised (they come from worker threads)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the email leaves
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, message_id: str) -> Entry | None:
        """The entry of ``message_id``, if recorded."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else _entry(row)

    def record(self, message_id: str, digest: str, email: Email) -> Entry:
        """Record ``email`` as pending under ``message_id``, unless an entry is there already: the entry kept."""
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (message_id, digest, email_message_id, sender, recipients, subject, email,"
                " state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                (
                    message_id,
                    digest,
                    email.message_id,
                    email.sender,
                    json.dumps(email.recipients),
                    email.subject,
                    email.data,
                    PENDING,
                    now,
                    now,
                ),
            )
            row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
        return _entry(row)

    def mark_sent(self, message_id: str, result: dict[str, Any]) -> None:
        """``message_id`` went out: the answer to give every later call with it."""
        self._mark(message_id, SENT, result)

    def mark_failed(self, message_id: str, field: str, message: str) -> None:
        """``message_id`` was refused for good: the refusal to give every later call with it."""
        self._mark(message_id, FAILED, {"field": field, "message": message})

    def mark_announced(self, message_id: str) -> None:
        """Its ``notifications.sent`` event was published."""
        with self._lock:
            self._db.execute("UPDATE outbox SET announced = 1 WHERE message_id = ?", (message_id,))

    def prune(self, older_than: float) -> int:
        """Remove the entries recorded more than ``older_than`` seconds ago; how many."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM outbox WHERE created < ?", (self._clock() - older_than,))
        return cursor.rowcount

    def counts(self) -> dict[str, int]:
        """How many entries are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
        return {PENDING: 0, SENT: 0, FAILED: 0, **{state: count for state, count in rows}}

    def _mark(self, message_id: str, state: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET state = ?, result = ?, updated = ? WHERE message_id = ?",
                (state, json.dumps(result), self._clock(), message_id),
            )


def _entry(row: tuple[Any, ...]) -> Entry:
    message_id, digest, state, email, sender, recipients, subject, email_message_id, result, announced = row
    return Entry(
        message_id=message_id,
        digest=digest,
        state=state,
        email=bytes(email),
        sender=sender,
        recipients=json.loads(recipients),
        subject=subject,
        email_message_id=email_message_id,
        result=None if result is None else json.loads(result),
        announced=bool(announced),
    )
