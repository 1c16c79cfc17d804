"""Demeter, the data agent: read-only SQL over SQLite (sample data by default), and a store of reports.

``query_data`` runs one statement that can only read (SQLite refuses the rest: see
:mod:`agents.readonly_sql`) under the call's deadline; the stored reports are readable there too,
as ``reports.reports``. ``store_report`` keeps a report once per message_id, and ``delete_report``
undoes it (the compensation of Zeus's ``publish_report`` saga).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

from agents.readonly_sql import ReadOnlyDatabase
from agents.reports import ReportStore
from agents.sample_data import ensure_sample
from kosmos_grpc import Agent, ConfigError, Context, NotFound, action
from kosmos_grpc.quoting import echo

__all__ = ["Demeter"]

_MAX_ROWS = 1000
_SCALAR = {"type": ["string", "number", "boolean", "null"], "maxLength": 100_000}
_QUERY_SCHEMA = {
    "type": "object",
    "properties": {
        "sql": {
            "type": "string",
            "minLength": 1,
            "maxLength": 10_000,
            "description": "one SQLite statement that reads",
        },
        "params": {
            "type": ["array", "object"],
            "description": "values for ? placeholders (an array) or :name ones (an object)",
            "maxItems": 100,
            "items": _SCALAR,
            "maxProperties": 100,
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
            "additionalProperties": _SCALAR,
            "default": [],
        },
        "max_rows": {"type": "integer", "minimum": 1, "maximum": _MAX_ROWS, "default": _MAX_ROWS},
    },
    "required": ["sql"],
    "additionalProperties": False,
}
_REPORT_ID = {"type": "string", "minLength": 1, "maxLength": 100, "description": "what store_report answered"}
_STORE_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "body": {"type": "string", "maxLength": 1_000_000, "default": ""},
        "report_id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_.-]{1,100}$",
            "description": "the caller's own name for it (a saga's, known to every step): stored once under it",
        },
    },
    "required": ["title"],
    "additionalProperties": False,
}
_ID_SCHEMA = {
    "type": "object",
    "properties": {"report_id": _REPORT_ID},
    "required": ["report_id"],
    "additionalProperties": False,
}
_DESCRIBE_SCHEMA = {"type": "object", "additionalProperties": False}
# The tables and views of the data file, each with its columns (in order) and, for a table, its rows.
_TABLES_SQL = """
SELECT m.name, m.type, json_group_array(p.name) AS columns
FROM main.sqlite_master AS m JOIN pragma_table_info(m.name) AS p
WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
GROUP BY m.name ORDER BY m.name LIMIT 100
"""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Demeter(Agent):
    """Data: read-only SQL over SQLite, and a store of reports."""

    name = "demeter"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "data": {
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "description": "a SQLite file to query instead of the sample (opened read-only, never written)",
            },
            "row_cap": {"type": "integer", "minimum": 1, "maximum": _MAX_ROWS, "default": _MAX_ROWS},
            "query_timeout_seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "default": 10,
                "description": "the longest a query runs, whatever the call's deadline",
            },
        },
    }

    def __init__(self) -> None:
        self._db: ReadOnlyDatabase | None = None
        self._reports: ReportStore | None = None

    @property
    def queries_running(self) -> int:
        """Queries running on a thread now (a query stopped at its deadline has left)."""
        return 0 if self._db is None else self._db.running

    @property
    def data_path(self) -> Path:
        """The SQLite file ``query_data`` reads."""
        return self._database().path

    async def on_start(self) -> None:
        """Open the report store, make the sample database if it is the one queried, and open that read-only."""
        state = self.host.state_dir
        try:
            self._reports = ReportStore(state / "reports.sqlite3")
            await self._reports.open()
            path = await asyncio.to_thread(_data_file, self.host.settings.get("data"), state)
            self._db = ReadOnlyDatabase(path, attach={"reports": self._reports.path})
            await self._db.check()
        except BaseException:
            await self.on_stop()  # the server calls on_stop only for an agent that started
            raise

    async def on_stop(self) -> None:
        """Stop the queries still running and close both databases."""
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None
        if self._reports is not None:
            await asyncio.to_thread(self._reports.close)
            self._reports = None

    def _database(self) -> ReadOnlyDatabase:
        if self._db is None:
            raise ConfigError("demeter's database is not open (the agent has not started)")
        return self._db

    def _store(self) -> ReportStore:
        if self._reports is None:
            raise ConfigError("demeter's report store is not open (the agent has not started)")
        return self._reports

    def _deadline(self, ctx: Context) -> float:
        """When a query of this call must stop: the call's deadline, or sooner the configured longest."""
        cap = time.monotonic() + float(self.host.settings["query_timeout_seconds"])
        return min(cap, ctx.deadline if ctx.deadline is not None else math.inf)

    @action(schema=_QUERY_SCHEMA)
    async def query_data(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one read-only SQL statement: its columns, its rows (BLOBs in base64), whether rows were left out."""
        max_rows = min(int(payload["max_rows"]), int(self.host.settings["row_cap"]))
        result = await self._database().query(
            payload["sql"], payload["params"], max_rows=max_rows, deadline=self._deadline(ctx)
        )
        return {"columns": result.columns, "rows": result.rows, "truncated": result.truncated}

    @action(schema=_DESCRIBE_SCHEMA)
    async def describe_data(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The tables and views query_data can read: their columns, the tables' row counts, the reports."""
        db, deadline = self._database(), self._deadline(ctx)
        found = await db.query(_TABLES_SQL, [], max_rows=100, deadline=deadline)
        tables = [t for t in found.rows if t[1] == "table"]
        counts: dict[str, int] = {}
        if tables:
            sql = " UNION ALL ".join(f"SELECT ?, count(*) FROM main.{_quoted(t[0])}" for t in tables)
            counted = await db.query(sql, [t[0] for t in tables], max_rows=100, deadline=deadline)
            counts = {str(name): int(rows) for name, rows in counted.rows}
        reports = await self._store().count()
        return {
            "database": str(db.path),
            "tables": [
                {"name": name, "kind": kind, "columns": json.loads(columns), "rows": counts.get(name)}
                for name, kind, columns in found.rows
            ],
            "reports": reports,
        }

    @action(schema=_STORE_SCHEMA)
    async def store_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Store a report (once per message_id: a retry answers the first one's id): its report_id and when."""
        store = self._store()
        return await store.store(payload["title"], payload["body"], ctx.envelope.message_id, payload.get("report_id"))

    @action(schema=_ID_SCHEMA)
    async def get_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """A stored report: its title, body and when it was stored (NOT_FOUND once deleted)."""
        report_id = payload["report_id"]
        report = await self._store().get(report_id)
        if report is None:
            raise _unknown(report_id)
        return report

    @action(schema=_ID_SCHEMA)
    async def delete_report(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Delete a stored report (the undoing of store_report; deleting it again is no error)."""
        report_id = payload["report_id"]
        if not await self._store().delete(report_id):
            raise _unknown(report_id)
        return {"report_id": report_id, "deleted": True}


def _data_file(data: str | None, state: Path) -> Path:
    """The file query_data reads: the ``data`` setting's, else the sample in ``state`` (made when missing)."""
    if data:
        path = Path(data).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"[agents.demeter.settings] data: no SQLite file at {path}")
        return path
    path = state / "data.sqlite3"
    ensure_sample(path)
    return path


def _unknown(report_id: str) -> NotFound:
    return NotFound(f"no report {echo(report_id)}", metadata={"field": "payload.report_id"})
