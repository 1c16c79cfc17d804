"""The seven agents as `kosmos up` runs them, each a real process: every workflow of Zeus on them,
the saga undone when its last step fails, and Dionysus answering while Athena's process is killed."""

from __future__ import annotations

import asyncio
import mailbox
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kosmos_grpc import Coordinator, NotFound, SagaFailed
from kosmos_grpc.bus import GrpcEventBus

from .conftest import Processes
from .test_supervisor import Up

AGENTS = {
    "zeus": "agents.zeus:Zeus",
    "athena": "agents.athena:Athena",
    "dionysus": "agents.dionysus:Dionysus",
    "hermes": "agents.hermes:Hermes",
    "apollo": "agents.apollo:Apollo",
    "prometheus": "agents.prometheus:Prometheus",
    "demeter": "agents.demeter:Demeter",
}
FALLBACKS = {"athena": "dionysus", "apollo": "prometheus"}
#: Calls through Zeus wait for several hops, an index query and an embedding: generous, never hit.
TIMEOUT_MS = 30_000


def _config(folder: Path) -> Path:
    lines = [
        f'[mesh]\nstate_dir = "{folder / "state"}"\ngrace_seconds = 2\n',
        '[bus]\naddress = "127.0.0.1:0"\n',
    ]
    for name, target in AGENTS.items():
        lines.append(f'[agents.{name}]\nobject = "{target}"\naddress = "127.0.0.1:0"\nmetrics_port = 0\n')
        if name in FALLBACKS:
            lines.append(f'fallback = "{FALLBACKS[name]}"\n')
    path = folder / "kosmos.toml"
    path.write_text("\n".join(lines))
    return path


class Running:
    """The mesh `kosmos up` started, its state folder, and the broker's address."""

    def __init__(self, up: Up, folder: Path) -> None:
        self.up = up
        self.state = folder / "state"
        self.broker = up.address("(broker)")

    def addresses(self) -> dict[str, str]:
        return {name: self.up.address(name) for name in AGENTS}

    def emails(self) -> dict[str, mailbox.MaildirMessage]:
        """What Hermes delivered into his Maildir, by Message-ID."""
        box = mailbox.Maildir(self.state / "hermes" / "Maildir", create=False)
        return {str(message["Message-ID"]): message for message in box}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("mesh")
    processes = Processes()
    try:
        up = Up(processes, _config(folder)).wait_up()
        yield Running(up, folder)
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0
    finally:
        processes.stop_all()


@pytest.fixture
async def zeus(running: Running) -> AsyncIterator[Coordinator]:
    async with Coordinator(running.addresses()) as client:
        yield client


async def test_ask_answers_from_athena_s_sources_with_citations_and_emails_it(
    running: Running, zeus: Coordinator
) -> None:
    before = set(running.emails())
    question = "How does a saga undo the steps it completed when a later step fails?"
    response = await zeus.delegate(
        "zeus", "ask", {"question": question, "email_to": "ops@example.com"}, timeout_ms=TIMEOUT_MS
    )
    answer = response.result
    assert answer["sources_from"] == "athena"
    assert answer["citations"], answer
    assert "[1]" in answer["answer"]
    assert any(
        "saga" in cited["source"].lower() or "pattern" in cited["source"].lower() for cited in answer["citations"]
    )
    emails = running.emails()
    (sent,) = set(emails) - before
    assert emails[sent]["To"] == "ops@example.com"
    assert answer["email"]["email_message_id"] == sent


async def test_status_asks_four_specialists_at_once_and_sums_them_up(zeus: Coordinator) -> None:
    response = await zeus.delegate("zeus", "status", {}, timeout_ms=TIMEOUT_MS)
    status = response.result
    assert status["failures"] == {}, status["failures"]
    assert set(status["parts"]) == {"docs", "data", "metrics", "health"}
    health = status["parts"]["health"]["agents"]
    assert {name for name, info in health.items() if info["health"] == "SERVING"} >= set(AGENTS) - {"apollo"}
    assert "agents SERVING" in status["summary"]


async def test_generate_report_streams_dionysus_s_chunks_through_zeus(zeus: Coordinator) -> None:
    chunks = [
        chunk
        async for chunk in zeus.stream("zeus", "generate_report", {"topic": "circuit breakers"}, timeout_ms=TIMEOUT_MS)
    ]
    assert len(chunks) > 2, "a report in several chunks"
    assert [chunk.sequence for chunk in chunks] == sorted(chunk.sequence for chunk in chunks)
    assert {chunk.agent for chunk in chunks} == {"zeus"}, "Zeus's own stream, relaying Dionysus's"
    text = "".join(chunk.data.get("text", "") for chunk in chunks)
    assert "[1]" in text
    assert chunks[-1].data.get("citations")


async def test_broadcast_gathers_every_success_and_every_failure(zeus: Coordinator) -> None:
    response = await zeus.delegate("zeus", "broadcast", {"action": "get_status"}, timeout_ms=TIMEOUT_MS)
    gathered = response.result
    assert set(gathered["asked"]) == set(AGENTS) - {"zeus"}
    assert set(gathered["successes"]) == {"apollo", "prometheus"}
    assert set(gathered["failures"]) == set(AGENTS) - {"zeus", "apollo", "prometheus"}
    assert {failure["code"] for failure in gathered["failures"].values()} == {"UNIMPLEMENTED"}


async def test_publish_report_stores_emails_and_announces(running: Running, zeus: Coordinator) -> None:
    async with GrpcEventBus(running.broker) as bus:
        announced = await bus.subscribe("kosmos.events.reports.published")
        response = await zeus.delegate(
            "zeus",
            "publish_report",
            {"topic": "the event bus", "email_to": "editor@example.com"},
            timeout_ms=TIMEOUT_MS,
        )
        event = await asyncio.wait_for(anext(aiter(announced)), 10)
    report_id = response.result["report_id"]
    assert event.payload["report_id"] == report_id
    stored = await zeus.delegate("demeter", "get_report", {"report_id": report_id})
    assert stored.result["title"] == response.result["title"]
    assert running.emails()[response.result["email"]["email_message_id"]]["Subject"] == response.result["title"]


async def test_a_saga_failing_at_its_last_step_is_undone_in_reverse(running: Running, zeus: Coordinator) -> None:
    broker = running.up.pid("(broker)")
    before = set(running.emails())
    os.kill(broker, signal.SIGSTOP)  # the bus takes nothing: the announcement, the saga's last step, fails
    try:
        with pytest.raises(SagaFailed) as caught:
            await zeus.delegate(
                "zeus",
                "publish_report",
                {"topic": "deadlines", "email_to": "editor@example.com"},
                timeout_ms=TIMEOUT_MS,
            )
    finally:
        os.kill(broker, signal.SIGCONT)
    failed = caught.value
    assert failed.metadata["step"] == "announce"
    report_id = failed.metadata["report_id"]
    emails = running.emails()
    new = {str(emails[key]["Subject"]): emails[key] for key in set(emails) - before}
    assert sorted(new) == ["Report: deadlines", "Retraction: Report: deadlines"], "sent, then retracted"
    assert new["Retraction: Report: deadlines"]["In-Reply-To"] == new["Report: deadlines"]["Message-ID"]
    with pytest.raises(NotFound):
        await zeus.delegate("demeter", "get_report", {"report_id": report_id})
    listed = await zeus.delegate("demeter", "query_data", {"sql": "SELECT title FROM reports.reports"})
    assert ["Report: deadlines"] not in listed.result["rows"], "the report is gone from Demeter"


async def test_dionysus_answers_in_athena_s_place_while_her_process_is_killed(
    running: Running, zeus: Coordinator
) -> None:
    os.kill(running.up.pid("athena"), signal.SIGKILL)
    try:
        response = await zeus.delegate("zeus", "ask", {"question": "What is a circuit breaker?"}, timeout_ms=TIMEOUT_MS)
        assert response.result["sources_from"] == "dionysus"
        assert response.result["fallback_for"] == "athena"
        assert response.result["answer"]
    finally:
        back = running.up.err.until("agent 'athena' is back", timeout=60)[-1]
        running.up._processes.adopt(int(back.split("pid ", 1)[1].split(",", 1)[0]))
