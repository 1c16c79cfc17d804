"""Demeter's sample database, made the same way every time: a few related tables to query out of the box.

Rows come from ``random.Random(13).random()`` alone: Python guarantees that method's sequence for a
given seed across versions (``randint``, ``choice`` and the like may change), so two fresh state
folders hold the same rows. The file is built under a temporary name and renamed into place, so a
crash never leaves half a database where Demeter looks for one.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["APPLICATION_ID", "SAMPLE_VERSION", "build_sample", "ensure_sample"]

#: Marks the file as Demeter's sample (``PRAGMA application_id``: "KMSD"), and which edition of it.
APPLICATION_ID = 0x4B4D5344
SAMPLE_VERSION = 1
_SEED = 13
_ORDERS, _INCIDENTS = 600, 120

_SCHEMA = """
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE regions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    timezone TEXT NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    unit_price REAL NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    ordered_on TEXT NOT NULL,            -- YYYY-MM-DD
    region_id INTEGER NOT NULL REFERENCES regions(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    amount REAL NOT NULL,                -- quantity * unit_price
    status TEXT NOT NULL                 -- delivered, shipped or cancelled
);
CREATE INDEX orders_by_date ON orders(ordered_on);
CREATE INDEX orders_by_region ON orders(region_id);
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL REFERENCES agents(name),
    opened_at TEXT NOT NULL,             -- ISO 8601, UTC
    severity TEXT NOT NULL,              -- low, medium, high or critical
    minutes_to_resolve INTEGER,          -- NULL while still open
    summary TEXT NOT NULL
);
CREATE VIEW sales_by_region AS
    SELECT r.name AS region, count(*) AS orders, round(sum(o.amount), 2) AS amount
    FROM orders AS o JOIN regions AS r ON r.id = o.region_id
    WHERE o.status != 'cancelled'
    GROUP BY r.name;
"""

_AGENTS = (
    ("zeus", "coordinator", "runs the workflows: sequential, parallel, streamed, scatter-gather, saga"),
    ("athena", "knowledge", "hybrid retrieval (BM25 and embeddings) over a folder of documents"),
    ("dionysus", "writing", "composes answers from context, citing its sources"),
    ("hermes", "notifications", "sends email, exactly once per message"),
    ("apollo", "monitoring", "watches every agent's health and the event rates"),
    ("prometheus", "metrics", "scrapes the agents' /metrics: latencies, error rates"),
    ("demeter", "data", "read-only SQL over SQLite, and the report store"),
)
_REGIONS = (
    ("Attica", "Europe/Athens"),
    ("Crete", "Europe/Athens"),
    ("Epirus", "Europe/Athens"),
    ("Macedonia", "Europe/Athens"),
    ("Peloponnese", "Europe/Athens"),
    ("Thessaly", "Europe/Athens"),
)
_PRODUCTS = (  # name, category, price in cents (whole cents: the amounts are exact sums)
    ("barley", "grain", 180),
    ("wheat flour", "grain", 240),
    ("bread", "bakery", 320),
    ("olive oil", "pantry", 1150),
    ("olives", "pantry", 590),
    ("honey", "pantry", 890),
    ("oregano", "pantry", 260),
    ("feta", "dairy", 760),
    ("yoghurt", "dairy", 310),
    ("figs", "fruit", 480),
    ("grapes", "fruit", 350),
    ("wine", "drinks", 1400),
)
_STATUSES = ("delivered",) * 7 + ("shipped",) * 2 + ("cancelled",)
_SEVERITIES = ("low",) * 5 + ("medium",) * 3 + ("high",) + ("critical",)
_TROUBLES = (
    "slow answers under load",
    "circuit to a peer opened",
    "restarted by the supervisor",
    "deadline exceeded on a delegation",
    "queue shed low-priority calls",
    "event bus reconnect",
    "memory above its soft limit",
)
_YEAR = date(2025, 1, 1)
_T = TypeVar("_T")


def _pick(rng: random.Random, items: Sequence[_T]) -> _T:
    """One of ``items``, from ``rng.random()`` alone (the one method whose sequence Python guarantees)."""
    return items[int(rng.random() * len(items))]


def _rows(rng: random.Random) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The orders and incidents, drawn in a fixed order from ``rng``."""
    orders: list[tuple[object, ...]] = []
    for order_id in range(1, _ORDERS + 1):
        day = _YEAR + timedelta(days=int(rng.random() * 365))
        region = 1 + int(rng.random() * len(_REGIONS))
        product = 1 + int(rng.random() * len(_PRODUCTS))
        quantity = 1 + int(rng.random() * 40)
        cents = quantity * _PRODUCTS[product - 1][2]
        status = _pick(rng, _STATUSES)
        orders.append((order_id, day.isoformat(), region, product, quantity, cents / 100, status))
    incidents: list[tuple[object, ...]] = []
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for incident_id in range(1, _INCIDENTS + 1):
        agent = _pick(rng, _AGENTS)[0]
        opened = start + timedelta(seconds=int(rng.random() * 365 * 86400))
        severity = _pick(rng, _SEVERITIES)
        still_open = rng.random() < 0.08
        minutes = None if still_open else 1 + int(rng.random() * 240)
        summary = f"{agent}: {_pick(rng, _TROUBLES)}"
        incidents.append((incident_id, agent, opened.strftime("%Y-%m-%dT%H:%M:%SZ"), severity, minutes, summary))
    return orders, incidents


def build_sample(path: Path) -> None:
    """Write the sample database into ``path`` (a new or empty file)."""
    orders, incidents = _rows(random.Random(_SEED))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(_SCHEMA)  # a temporary file: no one sees it before the rename, whole or not
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO agents VALUES (?, ?, ?)", _AGENTS)
        conn.executemany("INSERT INTO regions (name, timezone) VALUES (?, ?)", _REGIONS)
        conn.executemany(
            "INSERT INTO products (name, category, unit_price) VALUES (?, ?, ?)",
            [(name, category, cents / 100) for name, category, cents in _PRODUCTS],
        )
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", orders)
        conn.executemany("INSERT INTO incidents VALUES (?, ?, ?, ?, ?, ?)", incidents)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SAMPLE_VERSION}")
        conn.execute("COMMIT")


def _is_current(path: Path) -> bool:
    """Whether ``path`` holds this edition of the sample (read-only look: an unreadable file is not it)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            marks = tuple(conn.execute(f"PRAGMA {mark}").fetchone()[0] for mark in ("application_id", "user_version"))
            complete = conn.execute("SELECT count(*) FROM orders").fetchone()[0] == _ORDERS
    except sqlite3.Error:
        return False
    return marks == (APPLICATION_ID, SAMPLE_VERSION) and complete


def ensure_sample(path: Path) -> bool:
    """Make sure ``path`` holds the current sample database; True when it was (re)built now.

    Built beside it under a temporary name, flushed to disk, then renamed over it in one step.
    """
    if path.is_file() and _is_current(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a crash while building
        stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(name)
    try:
        build_sample(temp)  # SQLite takes the empty file mkstemp made as an empty database
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _sync_folder(path.parent)
    return True


def _sync_folder(folder: Path) -> None:
    """Flush the rename to disk where the platform allows it (POSIX folders open read-only)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
