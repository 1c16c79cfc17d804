"""One caller's SQL run against SQLite so that it can only read: SQLite itself refuses the rest.

Three locks, each enough alone: the database is opened ``mode=ro``, ``PRAGMA query_only`` is on,
and an authorizer allows reads alone (SELECT, reading columns, functions, recursive CTEs, a few
schema-describing PRAGMAs); ATTACH, every write, every other PRAGMA are denied when the statement
is prepared, before it runs. A progress handler, called every few thousand virtual-machine steps,
stops a query once its deadline passes or its caller has gone; the built-ins that one step could
keep busy past it are guarded (:mod:`agents.sql_guards`). Memory is bounded too: values by
SQLITE_LIMIT_LENGTH, and all of SQLite's together by a hard heap limit, temporary tables and sorts
included (they are kept in memory, never spilled to disk: a runaway sort wrote 1 GB there in 5 s).
Queries run on a small pool of threads, each with its own connection, so the event loop keeps
answering while they run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.sql_guards import LIKE_PATTERN_BYTES, Guards
from kosmos_grpc import Cancelled, ConfigError, DeadlineExceeded, InvalidEnvelope, PermissionDenied, ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = [
    "HEAP_BYTES",
    "INFO_PRAGMAS",
    "PROGRESS_STEPS",
    "RESULT_BYTES",
    "VALUE_BYTES",
    "QueryResult",
    "ReadOnlyDatabase",
]

#: The largest string or blob a query may make or read (SQLITE_LIMIT_LENGTH): a stored report's
#: body (1,000,000 characters, at most 4 bytes each) still fits.
VALUE_BYTES = 4 * 1024 * 1024
#: The most memory SQLite may hold in this process, every connection together (its hard heap limit,
#: which a PRAGMA can only lower): past it a query fails with RESOURCE_EXHAUSTED, not the machine.
HEAP_BYTES = 256 * 1024 * 1024
#: The most a result may take as it travels (its values and their encoding, estimated): past it the
#: rows are cut and ``truncated`` is true, so a reply fits the mesh's default 4 MiB payload.
RESULT_BYTES = 4 * 1024 * 1024 - 64 * 1024
#: Virtual-machine steps between two looks at the deadline (SQLite runs ~90 M a second: ~50 µs).
PROGRESS_STEPS = 5000
#: PRAGMAs that only describe the schema, whose table-valued forms (``pragma_table_info('t')``) may be read.
INFO_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
_READS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
# Functions no read needs that reach beyond the database (only the first is built in, and Python
# leaves it disabled; the rest come with extensions a custom build might load).
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
# Virtual tables declare their schema on first use, which the authorizer sees as a write to
# sqlite_master: each is prepared once (EXPLAIN: prepared, never run) before the authorizer is
# installed. The PRAGMA ones are all warmed, so that reading one not allowed is refused as that PRAGMA.
_PREWARM = ("json_each", "json_tree")
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name.replace(' ', '_')}"): name
    for name in (
        "CREATE INDEX", "CREATE TABLE", "CREATE TEMP INDEX", "CREATE TEMP TABLE", "CREATE TEMP TRIGGER",
        "CREATE TEMP VIEW", "CREATE TRIGGER", "CREATE VIEW", "DELETE", "DROP INDEX", "DROP TABLE",
        "DROP TEMP INDEX", "DROP TEMP TABLE", "DROP TEMP TRIGGER", "DROP TEMP VIEW", "DROP TRIGGER",
        "DROP VIEW", "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH",
        "ALTER TABLE", "REINDEX", "ANALYZE", "CREATE VTABLE", "DROP VTABLE", "FUNCTION", "SAVEPOINT",
        "RECURSIVE",
    )
}  # fmt: skip
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})
_UNREADABLE = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM")
_SQL = {"field": "payload.sql"}  # the metadata of an error that payload.sql caused
_WIRE_INT = 2**53  # beyond it a JSON number (a double) no longer holds every integer


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a query gave: its column names, its rows, and whether rows were left out."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


@dataclass(slots=True, eq=False)  # compared (and hashed) by identity: kept in a set while running
class _Job:
    """One query's limits, read by the progress handler on the query's thread."""

    deadline: float
    cancelled: bool = False  # set from the event loop when the caller goes away


_IDLE = _Job(math.inf)


@dataclass(slots=True)
class _Session:
    """A worker thread's connection and what its authorizer refused during the current query."""

    conn: sqlite3.Connection
    guards: Guards
    job: _Job = _IDLE
    denied: list[str] = field(default_factory=list)

    def authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, _inner: str | None) -> int:
        """Allow reads alone; note what else was asked, to say so."""
        if action in _READS:
            if action != sqlite3.SQLITE_FUNCTION or (arg2 or "").lower() not in _DENIED_FUNCTIONS:
                return sqlite3.SQLITE_OK
        elif action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in INFO_PRAGMAS:
            return sqlite3.SQLITE_OK
        self.denied.append(_describe(action, arg1, arg2, db))
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        """Non-zero stops the query: its deadline has passed or its caller has gone."""
        job = self.job
        return 1 if job.cancelled or time.monotonic() >= job.deadline else 0


def _describe(action: int, arg1: str | None, arg2: str | None, db: str | None) -> str:
    """What an authorizer call asked, in words: ``INSERT on main.orders``, ``PRAGMA query_only = OFF``."""
    name = _ACTION_NAMES.get(action, f"action {action}")
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
    if action == sqlite3.SQLITE_FUNCTION:
        return f"the function {arg2}()"
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        return f"{name} {arg1 or ''}".strip()
    target = f"{db}.{arg1}" if db and arg1 else (arg1 or "")
    said = f"{name} on {target}" if target else name
    if arg1 in _SCHEMA_TABLES:  # CREATE and its kin ask first to write the schema table; so does a virtual table
        return f"a change to the schema, or a virtual table not allowed ({said})"
    return said


def _uri(path: Path) -> str:
    """The read-only URI of a database file (percent-encoded, so any path works)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _value(value: Any) -> tuple[Any, int]:
    """A column value as it travels, and about how many bytes it takes there (with its encoding).

    BLOBs become base64 strings; integers a double cannot hold exactly, and infinities, their
    decimal strings.
    """
    kind = type(value)
    if kind is str:
        return value, (len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))) + 10
    if kind is int:
        return (value, 12) if -_WIRE_INT < value < _WIRE_INT else (str(value), 32)
    if kind is float:
        return (value, 12) if math.isfinite(value) else (str(value), 16)
    if value is None:
        return None, 4
    text = base64.b64encode(value).decode("ascii")
    return text, len(text) + 10


class ReadOnlyDatabase:
    """A SQLite file (and others attached under names) that callers' SQL can read and never change."""

    def __init__(self, path: Path, *, attach: Mapping[str, Path] | None = None, workers: int = 4) -> None:
        self.path = path
        self.attach = dict(attach or {})
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demeter-sql")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[_Session] = []
        self._active: set[_Job] = set()  # jobs whose query is running on a thread now
        self._closed = False

    @property
    def running(self) -> int:
        """Queries running on a thread now (one stopped at its deadline has left)."""
        return len(self._active)

    async def check(self) -> None:
        """Open the database on a worker as a query would, and read its schema: ConfigError when that fails."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._check)

    def _check(self) -> None:
        session = self._session()
        try:
            session.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the SQLite database {self.path}: {exc}") from None

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any], *, max_rows: int, deadline: float
    ) -> QueryResult:
        """Run one read-only statement by ``deadline`` (``time.monotonic``), up to ``max_rows`` rows.

        Raises PermissionDenied (it would write), InvalidEnvelope naming ``payload.sql`` or
        ``payload.params`` (SQLite refused it), DeadlineExceeded, Cancelled, ResourceExhausted.
        """
        job = _Job(deadline)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, job, sql, params, max_rows)
        except asyncio.CancelledError:
            job.cancelled = True  # a query already running stops at its next progress check
            raise

    def close(self) -> None:
        """Stop the queries running, wait for their threads, and close every connection."""
        self._closed = True
        with self._lock:
            for job in self._active:
                job.cancelled = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for session in self._sessions:
                session.conn.close()
                session.guards.close()
            self._sessions.clear()

    def _session(self) -> _Session:
        """This thread's connection, opened on first use."""
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._open()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _open(self) -> _Session:
        """A connection that can only read: read-only files, query_only, then the authorizer and progress handler."""
        try:
            conn = sqlite3.connect(_uri(self.path), uri=True, isolation_level=None, check_same_thread=False, timeout=1)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the SQLite database {self.path} read-only: {exc}") from None
        try:
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA trusted_schema = OFF")  # a custom file's views and triggers: harmless functions only
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_BYTES)
            conn.execute(f"PRAGMA hard_heap_limit = {HEAP_BYTES}")  # lowers it only (another's may be lower)
            conn.execute("PRAGMA temp_store = MEMORY")  # so that the heap limit bounds sorts and temporary tables
            for name, path in self.attach.items():
                conn.execute(f"ATTACH DATABASE ? AS {_ident(name)}", (_uri(path),))
            _prewarm(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot prepare the SQLite database {self.path}: {exc}") from None
        guards = Guards(VALUE_BYTES)
        guards.install(conn)
        session = _Session(conn, guards)
        conn.set_authorizer(session.authorize)
        conn.set_progress_handler(session.progress, PROGRESS_STEPS)
        return session

    def _run(self, job: _Job, sql: str, params: Sequence[Any] | Mapping[str, Any], max_rows: int) -> QueryResult:
        """The query, on a worker thread: its rows converted, up to ``max_rows`` and RESULT_BYTES."""
        if self._closed or job.cancelled:
            raise Cancelled("the query was cancelled before it started")
        session = self._session()
        session.job, session.denied = job, []
        session.guards.reset()
        with self._lock:
            self._active.add(job)
        cursor: sqlite3.Cursor | None = None
        try:
            if time.monotonic() >= job.deadline:
                raise DeadlineExceeded("the call's deadline passed before its query could start")
            cursor = session.conn.execute(sql, params)
            return _collect(cursor, max_rows)
        except (sqlite3.Error, OverflowError, MemoryError) as exc:  # MemoryError: SQLite's heap limit reached
            raise _failure(session, job, exc) from None
        finally:
            if cursor is not None:
                cursor.close()
            session.job = _IDLE
            with self._lock:
                self._active.discard(job)


def _prewarm(conn: sqlite3.Connection) -> None:
    """Prepare each virtual table once: the built-in ones, and those the files hold (FTS5, say)."""
    tables = [*_PREWARM, *(f"pragma_{name}" for (name,) in conn.execute("SELECT name FROM pragma_pragma_list"))]
    for schema in [row[1] for row in conn.execute("PRAGMA database_list") if row[1] != "temp"]:
        rows = conn.execute(
            f"SELECT name FROM {_ident(schema)}.sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'"
        )
        tables.extend(f"{_ident(schema)}.{_ident(name)}" for (name,) in rows)
    for table in tables:
        with contextlib.suppress(sqlite3.Error):  # one this build lacks, or whose module is missing: refused later
            conn.execute(f"EXPLAIN SELECT * FROM {table}").fetchall()


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _collect(cursor: sqlite3.Cursor, max_rows: int) -> QueryResult:
    """The cursor's rows, one at a time (memory held: the rows kept and one more), up to the limits."""
    columns = [str(column[0]) for column in cursor.description or ()]
    budget = RESULT_BYTES - sum(len(name) + 10 for name in columns)
    rows: list[list[Any]] = []
    truncated = False
    for row in cursor:
        if len(rows) == max_rows:
            truncated = True
            break
        values, size = [], 8
        for item in row:
            value, cost = _value(item)
            values.append(value)
            size += cost
        if size > budget:
            if not rows:
                raise ResourceExhausted(
                    f"the first row alone takes about {size:,} bytes, more than a result may ({RESULT_BYTES:,}):"
                    " select fewer or shorter columns (substr(), length())",
                    metadata=_SQL,
                )
            truncated = True
            break
        budget -= size
        rows.append(values)
    return QueryResult(columns, rows, truncated)


def _failure(session: _Session, job: _Job, exc: Exception) -> Exception:
    """The mesh error for what SQLite (or the binding of the parameters) refused."""
    if session.denied:
        what = session.denied[0]
        return PermissionDenied(f"payload.sql may only read: {what} is refused (the data is read-only)", metadata=_SQL)
    if session.guards.refused is not None:
        return ResourceExhausted(session.guards.refused, metadata=_SQL)
    if isinstance(session.guards.failed, sqlite3.Error | MemoryError):
        exc = session.guards.failed  # a guarded built-in failed as SQLite's own: said as such
    if isinstance(exc, MemoryError):
        return ResourceExhausted(
            f"payload.sql needs more memory than SQLite may take here ({HEAP_BYTES // 2**20} MiB in all)", metadata=_SQL
        )
    message = str(exc)
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name == "SQLITE_INTERRUPT":
        if job.cancelled:
            return Cancelled("the query was stopped: its caller went away", metadata={"stopped": "cancelled"})
        return DeadlineExceeded(
            "the query ran past the call's deadline and was stopped", metadata={"stopped": "deadline"}
        )
    if isinstance(exc, OverflowError):
        return InvalidEnvelope("payload.params", f"payload.params: {message}")
    if isinstance(exc, sqlite3.ProgrammingError):
        if "one statement" in message:
            return InvalidEnvelope("payload.sql", f"payload.sql must hold one statement (SQLite: {message})")
        if "binding" in message.lower() or "supplied" in message:
            return InvalidEnvelope("payload.params", f"payload.params: {message}")
    if name in ("SQLITE_READONLY", "SQLITE_AUTH") or "may not be modified" in message:  # (sqlite_master, say)
        return PermissionDenied(f"payload.sql may only read: {message}", metadata=_SQL)
    if name in ("SQLITE_TOOBIG", "SQLITE_NOMEM"):
        return ResourceExhausted(f"payload.sql: {message} (values are limited to {VALUE_BYTES:,} bytes)", metadata=_SQL)
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return ResourceExhausted(f"the database is busy: {message}", metadata=_SQL, retry_after=0.2)
    if name.startswith(_UNREADABLE):
        return ConfigError(f"the SQLite database cannot be read: {message}")
    if "pattern too complex" in message:
        message += f" (a pattern may take {LIKE_PATTERN_BYTES} bytes: each is matched at every place of the text)"
    return InvalidEnvelope("payload.sql", f"payload.sql: {message}")
