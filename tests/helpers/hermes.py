"""Hermes for tests: an email to send, Hermes served in-process, its outbox read from outside."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agents.hermes import Hermes
from kosmos_grpc import AgentServer, Coordinator, ServerSettings
from kosmos_grpc.bus.protocol import EventBus
from tests.helpers.smtp import SmtpSink

EMAIL = {"to": "ada@example.org", "subject": "Build 42 passed", "body": "All green.\nSee you."}


@contextlib.asynccontextmanager
async def hermes(
    state: Path, settings: dict[str, Any] | None = None, *, bus: EventBus | None = None, remember: bool = True
) -> AsyncIterator[Coordinator]:
    """Hermes served in-process with ``settings`` and its folder ``state``; a client without retries.

    ``remember=False`` turns the server's own memory of message_ids off, so that a repeated call
    reaches Hermes and its outbox answers it (as after a restart, when that memory is gone).
    """
    options: dict[str, Any] = {} if remember else {"idempotency": None}
    server = AgentServer(
        Hermes(), ServerSettings(grace_seconds=1, **options), agent_settings=settings or {}, state_dir=state, bus=bus
    )
    await server.start()
    try:
        async with Coordinator({"hermes": server.address}, resilience=False) as client:
            yield client
    finally:
        await server.stop(1)


def smtp(sink: SmtpSink) -> dict[str, Any]:
    """Hermes's settings for delivering to ``sink``."""
    return {"smtp_host": "127.0.0.1", "smtp_port": sink.port}


def outbox_state(state: Path, message_id: str) -> str | None:
    """The outbox's state for ``message_id``, read as another process would: a read-only connection."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT state FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else str(row[0])
