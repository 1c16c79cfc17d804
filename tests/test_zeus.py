"""Zeus's workflows on the real specialists, served in-process: each pattern's answer, a part that
fails named while the rest answer, the saga undone in reverse when its last step fails, and an
email sent once when the same ask is retried."""

from __future__ import annotations

import mailbox
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.athena import Athena
from agents.demeter import Demeter
from agents.dionysus import Dionysus
from agents.hermes import Hermes
from agents.zeus import Zeus
from kosmos_grpc import Agent, AgentServer, Coordinator, InvalidEnvelope, NotFound, Registry, SagaFailed, ServerSettings
from kosmos_grpc.envelope import new_message_id
from kosmos_grpc.resilience import ResiliencePolicy

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


class Mesh:
    """Zeus and the specialists on free loopback ports, sharing one registry, with the seed's fallback."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.registry = Registry()
        self.servers: list[AgentServer] = []

    async def serve(self, agent: Agent, **settings: object) -> None:
        server = AgentServer(
            agent,
            ServerSettings(grace_seconds=1, idempotency=None),  # each repeat reaches the agents themselves
            registry=self.registry,
            resilience=ResiliencePolicy(fallbacks={"athena": "dionysus"}),
            agent_settings=settings,
            state_dir=self.state / agent.name,
        )
        await server.start()
        self.servers.append(server)

    def emails(self) -> dict[str, mailbox.MaildirMessage]:
        """What Hermes delivered, by Subject."""
        box = mailbox.Maildir(self.state / "hermes" / "Maildir", create=False)
        return {str(message["Subject"]): message for message in box}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(tmp_path)
    try:
        await mesh.serve(Zeus())
        await mesh.serve(Athena(), corpus=str(CORPUS), refresh_seconds=60)
        await mesh.serve(Dionysus())
        await mesh.serve(Hermes())
        await mesh.serve(Demeter())
        yield mesh
    finally:
        for server in reversed(mesh.servers):
            await server.stop(0)


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[Coordinator]:
    async with Coordinator(mesh.registry, resilience=False) as coordinator:
        yield coordinator


async def test_ask_is_athena_then_dionysus_then_hermes(mesh: Mesh, client: Coordinator) -> None:
    question = "What happens when a circuit breaker opens?"
    answer = (await client.delegate("zeus", "ask", {"question": question, "email_to": "ops@example.com"})).result
    assert answer["sources_from"] == "athena"
    assert any("resilience.md" in cited["source"] for cited in answer["citations"]), answer["citations"]
    assert "[1]" in answer["answer"]
    (email,) = mesh.emails().values()
    assert email["Subject"] == f"KOSMOS: {question}"
    assert answer["email"]["email_message_id"] == email["Message-ID"]
    body = email.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"Sources:" in body


async def test_the_same_ask_retried_sends_its_email_once(mesh: Mesh, client: Coordinator) -> None:
    message_id = new_message_id()
    payload = {"question": "What is a queue group?", "email_to": "ops@example.com"}
    first = (await client.delegate("zeus", "ask", payload, message_id=message_id)).result
    again = (await client.delegate("zeus", "ask", payload, message_id=message_id)).result
    assert len(mesh.emails()) == 1, "Hermes was asked under the same derived message_id: one email"
    assert again["email"] == {**first["email"], "duplicate": True}


async def test_ask_falls_back_to_dionysus_when_athena_is_down(mesh: Mesh, client: Coordinator) -> None:
    athena = next(server for server in mesh.servers if server.agent.name == "athena")
    await athena.stop(0)
    answer = (await client.delegate("zeus", "ask", {"question": "What is a saga?"})).result
    assert (answer["sources_from"], answer["fallback_for"]) == ("dionysus", "athena")
    assert answer["citations"] == []
    assert "Athena is unavailable" in answer["answer"]


async def test_status_names_the_parts_that_failed_and_sums_up_the_rest(client: Coordinator) -> None:
    status = (await client.delegate("zeus", "status", {})).result
    assert set(status["parts"]) == {"docs", "data"}
    assert status["by"] == {"docs": "athena", "data": "demeter"}
    assert {part: failure["code"] for part, failure in status["failures"].items()} == {
        "metrics": "NOT_FOUND",
        "health": "NOT_FOUND",
    }, "no Prometheus nor Apollo in this mesh"
    assert status["parts"]["data"]["columns"] == ["region", "orders", "amount"]
    assert "the data query returned 3 rows" in status["summary"].lower()
    assert "metrics: not_found" in status["summary"].lower()


async def test_generate_report_relays_the_writer_s_chunks_in_order(client: Coordinator) -> None:
    chunks = [c async for c in client.stream("zeus", "generate_report", {"topic": "deadlines", "max_sentences": 3})]
    assert len(chunks) >= 2
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    written = (
        await client.delegate(
            "dionysus",
            "write",
            {
                "instructions": "deadlines",
                "context": (await client.delegate("athena", "retrieve_context", {"query": "deadlines"})).result,
                "max_sentences": 3,
            },
        )
    ).result
    assert "".join(c.data.get("text", "") for c in chunks) == written["text"], "the same text, in chunks"
    assert chunks[-1].data["citations"] == written["citations"]


async def test_broadcast_shows_every_success_and_every_failure(client: Coordinator) -> None:
    gathered = (await client.delegate("zeus", "broadcast", {"action": "describe_data"})).result
    assert gathered["asked"] == ["athena", "demeter", "dionysus", "hermes"]
    assert set(gathered["successes"]) == {"demeter"}
    assert {name: failure["code"] for name, failure in gathered["failures"].items()} == {
        "athena": "UNIMPLEMENTED",
        "dionysus": "UNIMPLEMENTED",
        "hermes": "UNIMPLEMENTED",
    }


async def test_a_saga_whose_announcement_fails_is_undone_in_reverse(mesh: Mesh, client: Coordinator) -> None:
    # This mesh has no bus: the announcement, the saga's last step, fails after the report was
    # stored and emailed.
    with pytest.raises(SagaFailed) as caught:
        await client.delegate("zeus", "publish_report", {"topic": "retries", "email_to": "ed@example.com"})
    failed = caught.value
    assert failed.metadata["step"] == "announce"
    assert "compensated 2 completed step(s)" in failed.message
    with pytest.raises(NotFound):
        await client.delegate("demeter", "get_report", {"report_id": failed.metadata["report_id"]})
    emails = mesh.emails()
    assert sorted(emails) == ["Report: retries", "Retraction: Report: retries"]
    assert emails["Retraction: Report: retries"]["In-Reply-To"] == emails["Report: retries"]["Message-ID"]


async def test_zeus_s_payloads_are_checked_against_his_schemas(client: Coordinator) -> None:
    with pytest.raises(InvalidEnvelope, match=r"payload\.question is required"):
        await client.delegate("zeus", "ask", {})
    with pytest.raises(InvalidEnvelope) as too_many:
        await client.delegate("zeus", "ask", {"question": "x", "k": 99})
    assert too_many.value.field == "payload.k"
    with pytest.raises(InvalidEnvelope) as no_time:
        await client.delegate("zeus", "broadcast", {"action": "x", "timeout_ms": 0})
    assert no_time.value.field == "payload.timeout_ms"
