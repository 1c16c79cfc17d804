"""Demeter served in-process on real SQLite: reads answered, every write refused by SQLite with the
data unchanged, deadlines enforced inside the query, the sample made the same way every time, and
reports stored once per message_id, deleted, and readable through query_data."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import statistics
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from agents.demeter import Demeter
from agents.readonly_sql import ReadOnlyDatabase
from agents.sample_data import ensure_sample
from kosmos_grpc import (
    AgentServer,
    ConfigError,
    DeadlineExceeded,
    InvalidEnvelope,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerSettings,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kosmos_grpc import Coordinator

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
TABLES = ("agents", "regions", "products", "orders", "incidents")


class Served:
    """Demeter served on a free port, with a client that calls it."""

    def __init__(self, server: AgentServer, agent: Demeter) -> None:
        self.server, self.agent = server, agent
        self.client: Coordinator = server.coordinator

    async def query(self, sql: str, params: Any = None, **options: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"sql": sql}
        if params is not None:
            payload["params"] = params
        timeout_ms = options.pop("timeout_ms", 5_000)
        payload.update(options)
        response = await self.client.delegate("demeter", "query_data", payload, timeout_ms=timeout_ms)
        return response.result

    async def call(self, action: str, payload: dict[str, Any], **options: Any) -> dict[str, Any]:
        response = await self.client.delegate("demeter", action, payload, **options)
        return response.result


@contextlib.asynccontextmanager
async def serve(state_dir: Path, **settings: Any) -> AsyncIterator[Served]:
    agent = Demeter()
    server = AgentServer(agent, ServerSettings(grace_seconds=1), agent_settings=settings, state_dir=state_dir)
    await server.start()
    try:
        yield Served(server, agent)
    finally:
        await server.stop()


async def until(condition: Any, seconds: float = 5.0) -> None:
    """Poll ``condition()`` until it holds, failing after ``seconds``."""
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "the condition did not come true in time"
        await asyncio.sleep(0.005)


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}


async def test_a_query_answers_its_columns_rows_and_whether_rows_were_left_out(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        regions = await demeter.query("SELECT id, name FROM regions ORDER BY id")
        assert regions["columns"] == ["id", "name"]
        assert regions["rows"][:2] == [[1, "Attica"], [2, "Crete"]]
        assert len(regions["rows"]) == 6
        assert regions["truncated"] is False
        capped = await demeter.query("SELECT id FROM orders ORDER BY id", max_rows=5)
        assert capped["rows"] == [[1], [2], [3], [4], [5]]
        assert capped["truncated"] is True
        exact = await demeter.query("SELECT id FROM orders", max_rows=600)
        assert (len(exact["rows"]), exact["truncated"]) == (600, False)
        default = await demeter.query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 1500) SELECT x FROM c"
        )
        assert (len(default["rows"]), default["truncated"]) == (1000, True)
        view = await demeter.query("SELECT sum(orders) FROM sales_by_region")
        assert view["rows"] == [[553]]  # 600 orders, 47 of them cancelled
    async with serve(tmp_path / "capped", row_cap=3) as demeter:
        capped = await demeter.query("SELECT id FROM orders")
        assert (len(capped["rows"]), capped["truncated"]) == (3, True)


async def test_params_are_bound_by_position_and_by_name(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        positional = await demeter.query("SELECT name FROM regions WHERE id IN (?, ?) ORDER BY id", [2, 5])
        assert positional["rows"] == [["Crete"], ["Peloponnese"]]
        named = await demeter.query(
            "SELECT count(*) FROM orders WHERE status = :status AND amount >= :least",
            {"status": "delivered", "least": 100},
        )
        assert named["rows"][0][0] == sum(
            1 for row in contents(demeter.agent.data_path)["orders"] if row[6] == "delivered" and row[5] >= 100
        )
        typed = await demeter.query("SELECT typeof(?), typeof(?), typeof(?), typeof(?)", ["text", 1.5, 7, None])
        assert typed["rows"] == [["text", "real", "integer", "null"]]
        with pytest.raises(InvalidEnvelope) as wrong:
            await demeter.query("SELECT ?", [1, 2])
        assert wrong.value.field == "payload.params"
        assert "uses 1, and there are 2 supplied" in wrong.value.message
        with pytest.raises(InvalidEnvelope) as missing:
            await demeter.query("SELECT :a, :b", {"a": 1})
        assert missing.value.field == "payload.params"


WRITES = (
    "INSERT INTO regions (name, timezone) VALUES ('Atlantis', 'UTC')",
    "REPLACE INTO regions (id, name, timezone) VALUES (1, 'Atlantis', 'UTC')",
    "UPDATE orders SET amount = 0",
    "DELETE FROM incidents",
    "DROP TABLE orders",
    "DROP VIEW sales_by_region",
    "CREATE TABLE notes (x)",
    "CREATE TEMP TABLE notes (x)",
    "CREATE INDEX orders_by_amount ON orders(amount)",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM orders; END",
    "ALTER TABLE orders ADD COLUMN notes TEXT",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = WAL",
    "PRAGMA user_version = 7",
    "PRAGMA writable_schema = ON",
    "ATTACH DATABASE '{tmp}/attached.db' AS other",
    "DETACH DATABASE reports",
    "WITH doomed AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN (SELECT id FROM doomed)",
    "WITH fresh(n) AS (VALUES ('x')) INSERT INTO regions (name, timezone) SELECT n, 'UTC' FROM fresh",
    "VACUUM",
    "VACUUM INTO '{tmp}/copy.db'",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "SAVEPOINT s",
    "UPDATE sqlite_master SET sql = ''",
    "INSERT INTO reports.stored_reports VALUES ('r', 'm', 't', 'b', 'c', NULL)",
    "DELETE FROM reports.stored_reports",
    "SELECT load_extension('/tmp/evil')",
    "SELECT * FROM pragma_journal_mode",
)


async def test_every_kind_of_write_is_permission_denied_and_the_data_is_unchanged(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        await demeter.call("store_report", {"title": "kept", "body": "as it was"})
        data, reports = demeter.agent.data_path, tmp_path / "demeter" / "reports.sqlite3"
        before = checksum(data), contents(data)
        with contextlib.closing(sqlite3.connect(reports)) as conn:
            reports_before = conn.execute("SELECT * FROM stored_reports").fetchall()
        for write in WRITES:
            sql = write.format(tmp=tmp_path)
            with pytest.raises(PermissionDenied) as refused:
                await demeter.query(sql)
            assert refused.value.metadata["field"] == "payload.sql", sql
            assert "may only read" in refused.value.message, sql
        print("e.g.", refused.value.message)
        assert (checksum(data), contents(data)) == before
        with contextlib.closing(sqlite3.connect(reports)) as conn:
            assert conn.execute("SELECT * FROM stored_reports").fetchall() == reports_before
        assert not (tmp_path / "attached.db").exists()
        assert not (tmp_path / "copy.db").exists()
        # and the connection still reads, as before
        assert (await demeter.query("SELECT count(*) FROM orders"))["rows"] == [[600]]


async def test_reads_of_the_schema_are_allowed(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        columns = await demeter.query("SELECT name FROM pragma_table_info('regions') ORDER BY cid")
        assert columns["rows"] == [["id"], ["name"], ["timezone"]]
        tables = await demeter.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        assert [row[0] for row in tables["rows"]] == sorted(TABLES)
        assert (await demeter.query("SELECT value FROM json_each('[3, 4]')"))["rows"] == [[3], [4]]
        described = await demeter.call("describe_data", {})
        rows = {table["name"]: table["rows"] for table in described["tables"]}
        assert rows == {
            "agents": 7,
            "incidents": 120,
            "orders": 600,
            "products": 12,
            "regions": 6,
            "sales_by_region": None,
        }


async def test_two_statements_are_invalid_argument_and_the_second_never_runs(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        with pytest.raises(InvalidEnvelope) as refused:
            await demeter.query("SELECT 1; DROP TABLE orders")
        assert refused.value.field == "payload.sql"
        assert "one statement" in refused.value.message
        assert (await demeter.query("SELECT count(*) FROM orders"))["rows"] == [[600]]
        assert (await demeter.query("SELECT 1; -- a trailing comment is no statement"))["rows"] == [[1]]


async def test_bad_sql_is_invalid_argument_with_sqlites_message(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        for sql, says in (
            ("SELEC 1", 'near "SELEC": syntax error'),
            ("SELECT * FROM nowhere", "no such table: nowhere"),
            ("SELECT missing FROM orders", "no such column: missing"),
            ("SELECT abs()", "wrong number of arguments to function abs()"),
        ):
            with pytest.raises(InvalidEnvelope) as refused:
                await demeter.query(sql)
            assert refused.value.field == "payload.sql"
            assert refused.value.message == f"payload.sql: {says}"
        for payload, field in (
            ({"sql": ""}, "payload.sql"),
            ({"sql": "x" * 10_001}, "payload.sql"),
            ({"sql": "SELECT 1", "max_rows": 0}, "payload.max_rows"),
            ({"sql": "SELECT 1", "params": list(range(101))}, "payload.params"),
            ({"sql": "SELECT 1", "params": [[1]]}, "payload.params.0"),
        ):
            with pytest.raises(InvalidEnvelope) as refused:
                await demeter.call("query_data", payload)
            assert refused.value.field == field


async def test_values_travel_as_json_can_hold_them_and_big_results_are_cut(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        values = await demeter.query("SELECT x'00ff10', 9007199254740993, 1e999, 2.5, NULL")
        assert values["rows"] == [["AP8Q", "9007199254740993", "inf", 2.5, None]]  # BLOB in base64
        wide = await demeter.query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 1000)"
            " SELECT x, printf('%.10000c', 'a') FROM c"  # 1,000 rows of 10 kB
        )
        assert wide["truncated"] is True
        assert 300 < len(wide["rows"]) < 1000  # cut by bytes (4 MiB), not by rows
        with pytest.raises(ResourceExhausted):
            await demeter.query("SELECT randomblob(5000000)")  # over SQLite's length limit, 4 MiB


async def test_a_runaway_recursive_query_ends_with_deadline_exceeded_at_its_deadline(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await demeter.query(RUNAWAY, timeout_ms=500)
        answered = time.monotonic() - started
        await until(lambda: demeter.agent.queries_running == 0)
        stopped = time.monotonic() - started
        print(f"runaway query (deadline 500 ms): answered at {answered:.3f} s, its thread free at {stopped:.3f} s")
        assert answered < 5
        assert stopped < 5
    # The database alone: how long after its deadline the progress handler stops the query.
    database = ReadOnlyDatabase(tmp_path / "demeter" / "data.sqlite3")
    try:
        lags = []
        for _ in range(3):
            deadline = time.monotonic() + 0.2
            with pytest.raises(DeadlineExceeded):
                await database.query(RUNAWAY, [], max_rows=10, deadline=deadline)
            lags.append(time.monotonic() - deadline)
        print(f"stopped after its deadline by {', '.join(f'{lag * 1000:.2f}' for lag in lags)} ms")
        assert max(lags) < 5
    finally:
        database.close()


async def test_query_timeout_seconds_stops_a_query_whose_call_has_longer(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter", query_timeout_seconds=0.3) as demeter:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as stopped:
            await demeter.query(RUNAWAY, timeout_ms=20_000)
        assert "ran past the call's deadline and was stopped" in stopped.value.message
        assert time.monotonic() - started < 5


async def test_health_keeps_answering_during_a_long_query_and_a_cancelled_caller_stops_it(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        long = asyncio.create_task(demeter.query(RUNAWAY, timeout_ms=8_000))
        await until(lambda: demeter.agent.queries_running == 1)
        checks = []
        for _ in range(5):
            started = time.perf_counter()
            assert await demeter.client.health("demeter", timeout_ms=1_000) == "SERVING"
            checks.append(time.perf_counter() - started)
        print(f"health during a runaway query: {max(checks) * 1000:.1f} ms at most")
        assert demeter.agent.queries_running == 1
        assert not long.done()
        long.cancel()  # the client cancels its call: the server's handler is cancelled, and its query stops
        with pytest.raises(asyncio.CancelledError):
            await long
        started = time.monotonic()
        await until(lambda: demeter.agent.queries_running == 0, seconds=3)
        print(f"the cancelled query stopped {(time.monotonic() - started) * 1000:.1f} ms after its caller left")


async def test_simple_queries_answer_in_about_a_millisecond_in_process(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        await demeter.query("SELECT 1")  # the first opens a connection
        latencies = []
        for i in range(200):
            started = time.perf_counter()
            result = await demeter.query("SELECT name FROM regions WHERE id = ?", [1 + i % 6])
            latencies.append(time.perf_counter() - started)
            assert len(result["rows"]) == 1
        p50 = statistics.median(latencies)
        print(f"query_data p50 {p50 * 1000:.2f} ms, p95 {statistics.quantiles(latencies, n=20)[-1] * 1000:.2f} ms")
        assert p50 < 0.05  # a generous bound: about 1 ms is usual


async def test_the_sample_database_is_the_same_in_every_fresh_state_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "one" / "data.sqlite3", tmp_path / "two" / "data.sqlite3"
    assert ensure_sample(first)
    assert ensure_sample(second)
    assert contents(first) == contents(second)
    assert {table: len(rows) for table, rows in contents(first).items()} == {
        "agents": 7, "regions": 6, "products": 12, "orders": 600, "incidents": 120
    }  # fmt: skip
    assert sorted(p.name for p in first.parent.iterdir()) == ["data.sqlite3"]  # no temporary file left
    assert not ensure_sample(first)  # kept as it is at the next start
    first.write_bytes(first.read_bytes()[:4096])  # cut short, as a crash while copying might
    assert ensure_sample(first)
    assert contents(first) == contents(second)


async def test_a_data_setting_queries_another_file_and_never_writes_it(tmp_path: Path) -> None:
    own = tmp_path / "own.sqlite3"
    with contextlib.closing(sqlite3.connect(own)) as conn:
        conn.execute("CREATE TABLE plants (name TEXT, height REAL)")
        conn.executemany("INSERT INTO plants VALUES (?, ?)", [("wheat", 1.2), ("barley", 0.9)])
        conn.commit()
    before = checksum(own)
    async with serve(tmp_path / "demeter", data=str(own)) as demeter:
        assert (await demeter.query("SELECT name FROM plants ORDER BY height"))["rows"] == [["barley"], ["wheat"]]
        with pytest.raises(PermissionDenied):
            await demeter.query("DELETE FROM plants")
    assert checksum(own) == before
    assert not (tmp_path / "demeter" / "data.sqlite3").exists()
    with pytest.raises(ConfigError, match="no SQLite file at"):
        async with serve(tmp_path / "missing", data=str(tmp_path / "nowhere.sqlite3")):
            pass


async def test_reports_are_stored_read_deleted_and_then_not_found(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        stored = await demeter.call("store_report", {"title": "Harvest", "body": "Wheat is in."})
        report_id = stored["report_id"]
        assert report_id.startswith("rpt-")
        datetime.fromisoformat(stored["created"])
        got = await demeter.call("get_report", {"report_id": report_id})
        assert got == {"report_id": report_id, "title": "Harvest", "body": "Wheat is in.", "created": stored["created"]}
        assert await demeter.call("delete_report", {"report_id": report_id}) == {
            "report_id": report_id,
            "deleted": True,
        }
        with pytest.raises(NotFound) as gone:
            await demeter.call("get_report", {"report_id": report_id})
        assert gone.value.metadata["field"] == "payload.report_id"
        assert report_id in gone.value.message
        # deleting again (a compensation retried) answers as the first time did
        assert (await demeter.call("delete_report", {"report_id": report_id}))["deleted"] is True
        with pytest.raises(NotFound) as unknown:
            await demeter.call("delete_report", {"report_id": "rpt-never"})
        assert unknown.value.metadata["field"] == "payload.report_id"
        assert "'rpt-never'" in unknown.value.message


async def test_the_same_message_id_stores_one_report_even_after_a_restart(tmp_path: Path) -> None:
    message_id = str(uuid.uuid4())
    payload = {"title": "Once", "body": "only once"}
    async with serve(tmp_path / "demeter") as demeter:
        first = await demeter.call("store_report", payload, message_id=message_id)
        other = await demeter.call("store_report", payload)
        assert other["report_id"] != first["report_id"]
    async with serve(tmp_path / "demeter") as demeter:  # a new process would not remember the call: the row does
        again = await demeter.call("store_report", payload, message_id=message_id)
        assert again == first
        await demeter.call("delete_report", {"report_id": first["report_id"]})
        late = await demeter.call("store_report", payload, message_id=message_id)
        assert late == first  # a late retry does not bring a deleted report back
        with pytest.raises(NotFound):
            await demeter.call("get_report", {"report_id": first["report_id"]})
    with contextlib.closing(sqlite3.connect(tmp_path / "demeter" / "reports.sqlite3")) as conn:
        assert conn.execute("SELECT count(*) FROM stored_reports WHERE message_id = ?", (message_id,)).fetchone() == (
            1,
        )


async def test_a_report_named_by_its_caller_is_stored_once_under_that_name(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        stored = await demeter.call("store_report", {"title": "Named", "body": "by Zeus", "report_id": "rpt-saga-1"})
        assert stored["report_id"] == "rpt-saga-1"
        again = await demeter.call("store_report", {"title": "Named", "body": "again", "report_id": "rpt-saga-1"})
        assert again == stored, "another message_id, the same name: nothing more stored"
        assert (await demeter.call("get_report", {"report_id": "rpt-saga-1"}))["body"] == "by Zeus"
        with pytest.raises(InvalidEnvelope) as refused:
            await demeter.call("store_report", {"title": "Bad", "report_id": "rpt one; DROP"})
        assert refused.value.field == "payload.report_id"


async def test_reports_are_readable_through_query_data_and_read_only_there(tmp_path: Path) -> None:
    async with serve(tmp_path / "demeter") as demeter:
        stored = await demeter.call("store_report", {"title": "Olive harvest", "body": "Good year."})
        seen = await demeter.query("SELECT title FROM reports.reports WHERE report_id = ?", [stored["report_id"]])
        assert seen["rows"] == [["Olive harvest"]]
        with pytest.raises(PermissionDenied):
            await demeter.query("UPDATE reports.stored_reports SET title = 'changed'")
        await demeter.call("delete_report", {"report_id": stored["report_id"]})
        assert (await demeter.query("SELECT count(*) FROM reports.reports"))["rows"] == [[0]]
