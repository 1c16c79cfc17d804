"""Hermes sends an email once per message_id, over a real SMTP server (aiosmtpd) or into a Maildir, and says so."""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agents.hermes import Hermes
from kosmos_grpc import AgentServer, ConfigError, DependencyUnavailable, InvalidEnvelope, ServerSettings
from kosmos_grpc.bus import BrokerServer, GrpcEventBus
from kosmos_grpc.envelope import new_message_id
from kosmos_grpc.subjects import NOTIFICATIONS_SENT
from tests.helpers.hermes import EMAIL, hermes, outbox_state, smtp
from tests.helpers.smtp import SmtpSink

from .conftest import free_port


async def test_an_email_arrives_over_smtp_with_its_message_id_to_and_subject(tmp_path: Path) -> None:
    message_id = new_message_id()
    async with SmtpSink() as sink, hermes(tmp_path / "hermes", smtp(sink)) as client:
        answer = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
        (received,) = await sink.wait_for(1)
    assert received["Message-ID"] == f"<{message_id}@kosmos>"
    assert (received["To"], received["Subject"], received["From"]) == (
        "ada@example.org",
        "Build 42 passed",
        "hermes@kosmos.localhost",
    )
    assert received.get_content() == "All green.\nSee you.\n"
    assert sink.envelopes == [("hermes@kosmos.localhost", ["ada@example.org"])]
    assert answer == {
        "message_id": message_id,
        "email_message_id": f"<{message_id}@kosmos>",
        "recipients": ["ada@example.org"],
        "delivered_via": "smtp",
        "duplicate": False,
    }
    assert outbox_state(tmp_path / "hermes", message_id) == "sent"


async def test_the_same_message_id_twice_sends_one_email_and_the_second_answer_is_a_duplicate(tmp_path: Path) -> None:
    message_id = new_message_id()
    payload = {**EMAIL, "to": ["ada@example.org", "alan@example.org"], "reply_to": "ops@example.org"}
    async with SmtpSink() as sink, hermes(tmp_path / "hermes", smtp(sink), remember=False) as client:
        first = (await client.delegate("hermes", "send_email", payload, message_id=message_id)).result
        again = (await client.delegate("hermes", "send_email", payload, message_id=message_id)).result
        other = (await client.delegate("hermes", "send_email", payload)).result
        await sink.wait_for(2)
    assert (first["duplicate"], again["duplicate"], other["duplicate"]) == (False, True, False)
    assert again == {**first, "duplicate": True}
    assert [m["Message-ID"] for m in sink.messages] == [first["email_message_id"], other["email_message_id"]]
    assert sink.messages[0]["Reply-To"] == "ops@example.org"
    assert sink.envelopes[0] == ("hermes@kosmos.localhost", ["ada@example.org", "alan@example.org"])


async def test_a_message_id_reused_for_another_email_is_refused(tmp_path: Path) -> None:
    message_id = new_message_id()
    async with hermes(tmp_path / "hermes", remember=False) as client:
        await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)
        with pytest.raises(InvalidEnvelope, match="was used for another email") as refused:
            await client.delegate("hermes", "send_email", {**EMAIL, "subject": "other"}, message_id=message_id)
    assert refused.value.field == "message_id"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": "ada.example.org"}, "payload.to"),
        ({"to": "ada@@example.org"}, "payload.to"),
        ({"to": "ada@localhost-only"}, "payload.to"),
        ({"to": "Ada <ada@example.org>"}, "payload.to"),
        ({"to": "ada@example.org\r\nBcc: eve@example.org"}, "payload.to"),
        ({"to": "ada@example.org, eve@example.org"}, "payload.to"),
        ({"to": ["ada@example.org", "eve@"]}, "payload.to.1"),
        ({"to": ["ada@example.org"] * 21}, "payload.to"),
        ({"to": "a" * 300 + "@example.org" * 2}, "payload.to"),
        ({"reply_to": "eve example.org"}, "payload.reply_to"),
        ({"subject": "Hello\r\nBcc: eve@example.org"}, "payload.subject"),
        ({"subject": "Hello\nX-Injected: 1"}, "payload.subject"),
        ({"subject": ""}, "payload.subject"),
        ({"in_reply_to": "no-brackets@kosmos"}, "payload.in_reply_to"),
        ({"body": "x" * 1_000_001}, "payload.body"),
        ({"cc": "eve@example.org"}, "payload"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_sent(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    async with hermes(tmp_path / "hermes") as client:
        with pytest.raises(InvalidEnvelope) as refused:
            await client.delegate("hermes", "send_email", {**EMAIL, **change})
    assert refused.value.field == field
    assert not list((tmp_path / "hermes" / "Maildir" / "new").iterdir())


async def test_localhost_and_a_list_of_addresses_are_taken(tmp_path: Path) -> None:
    async with hermes(tmp_path / "hermes") as client:
        answer = await client.delegate("hermes", "send_email", {**EMAIL, "to": ["root@localhost", "ada@example.org"]})
    assert answer.result["recipients"] == ["root@localhost", "ada@example.org"]


async def test_an_smtp_server_that_is_down_is_unavailable_naming_its_address_and_a_retry_sends(tmp_path: Path) -> None:
    port, message_id = free_port(), new_message_id()
    settings = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_timeout_seconds": 2}
    async with hermes(tmp_path / "hermes", settings, remember=False) as client:
        with pytest.raises(DependencyUnavailable, match=rf"SMTP server at 127\.0\.0\.1:{port} is unavailable") as down:
            await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)
        assert down.value.retryable
        assert down.value.metadata["address"] == f"127.0.0.1:{port}"
        assert outbox_state(tmp_path / "hermes", message_id) == "pending"
        async with SmtpSink(port) as sink:  # the server is back: the retry sends the email kept
            answer = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
            (received,) = await sink.wait_for(1)
    assert answer["duplicate"] is False
    assert received["Message-ID"] == f"<{message_id}@kosmos>"


async def test_an_smtp_server_that_does_not_answer_in_time_is_unavailable(tmp_path: Path) -> None:
    async with SmtpSink() as sink:
        sink.hold.clear()  # it takes the email and never says 250
        async with hermes(tmp_path / "hermes", {**smtp(sink), "smtp_timeout_seconds": 0.3}) as client:
            with pytest.raises(DependencyUnavailable, match=r"unavailable: no answer within 0\.3 s"):
                await client.delegate("hermes", "send_email", EMAIL)


async def test_a_login_with_the_password_from_the_environment_and_a_refused_one_that_shows_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"smtp_username": "hermes", "smtp_password_env": "KOSMOS_TEST_SMTP_PASSWORD"}
    async with SmtpSink(login=("hermes", "s3cret-Pa55")) as sink:
        monkeypatch.setenv("KOSMOS_TEST_SMTP_PASSWORD", "s3cret-Pa55")
        async with hermes(tmp_path / "good", {**smtp(sink), **settings}) as client:
            await client.delegate("hermes", "send_email", EMAIL)
        monkeypatch.setenv("KOSMOS_TEST_SMTP_PASSWORD", "wrong-Pa55")
        async with hermes(tmp_path / "bad", {**smtp(sink), **settings}) as client:
            with pytest.raises(ConfigError, match=r"refused the login of 'hermes': 535") as refused:
                await client.delegate("hermes", "send_email", EMAIL)
    assert len(sink.messages) == 1
    assert "Pa55" not in str(refused.value)
    assert "Pa55" not in str(refused.value.metadata)


async def test_a_permanently_refused_recipient_is_invalid_and_a_retry_gets_the_same_answer(tmp_path: Path) -> None:
    message_id = new_message_id()
    async with (
        SmtpSink(refuse=frozenset({"nobody@example.org"})) as sink,
        hermes(tmp_path / "hermes", smtp(sink), remember=False) as client,
    ):
        for _ in range(2):
            with pytest.raises(InvalidEnvelope, match=r"550 5\.1\.1 <nobody@example\.org>: no such mailbox") as refused:
                await client.delegate(
                    "hermes", "send_email", {**EMAIL, "to": "nobody@example.org"}, message_id=message_id
                )
            assert refused.value.field == "payload.to"
    assert sink.messages == []
    assert outbox_state(tmp_path / "hermes", message_id) == "failed"


async def test_recipients_the_server_refuses_are_named_and_the_others_get_the_email(tmp_path: Path) -> None:
    payload = {**EMAIL, "to": ["ada@example.org", "nobody@example.org"]}
    async with (
        SmtpSink(refuse=frozenset({"nobody@example.org"})) as sink,
        hermes(tmp_path / "hermes", smtp(sink)) as client,
    ):
        answer = (await client.delegate("hermes", "send_email", payload)).result
        await sink.wait_for(1)
    assert answer["recipients"] == ["ada@example.org"]
    assert answer["refused"] == {"nobody@example.org": "550 5.1.1 <nobody@example.org>: no such mailbox here"}
    assert sink.envelopes == [("hermes@kosmos.localhost", ["ada@example.org"])]


async def test_outbox_entries_older_than_outbox_days_are_pruned_at_start(tmp_path: Path) -> None:
    old, recent, state = new_message_id(), new_message_id(), tmp_path / "hermes"
    async with hermes(state) as client:
        for message_id in (old, recent):
            await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)
    with contextlib.closing(sqlite3.connect(state / "outbox.sqlite3")) as db, db:
        db.execute("UPDATE outbox SET created = created - 3 * 86400 WHERE message_id = ?", (old,))
    async with hermes(state, {"outbox_days": 2}):
        assert (outbox_state(state, old), outbox_state(state, recent)) == (None, "sent")


async def test_without_an_smtp_server_one_file_lands_in_the_maildir_named_by_the_message_id(tmp_path: Path) -> None:
    message_id = new_message_id()
    async with hermes(tmp_path / "hermes", remember=False) as client:
        first = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
        again = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
    maildir = tmp_path / "hermes" / "Maildir"
    assert first["delivered_via"] == "maildir"
    assert first["path"] == str(maildir / "new" / message_id)
    assert again == {**first, "duplicate": True}
    box = mailbox.Maildir(maildir, create=False)
    (stored,) = box.values()
    assert stored["Message-ID"] == f"<{message_id}@kosmos>"
    assert stored["Subject"] == "Build 42 passed"


async def test_a_retraction_threads_with_the_email_it_retracts(tmp_path: Path) -> None:
    async with SmtpSink() as sink, hermes(tmp_path / "hermes", smtp(sink)) as client:
        original = (await client.delegate("hermes", "send_email", EMAIL)).result["email_message_id"]
        retraction = {
            "to": "ada@example.org",
            "subject": "Retraction: Build 42 passed",
            "body": f"Please disregard {original}.",
            "in_reply_to": original,
        }
        await client.delegate("hermes", "send_email", retraction)
        _, received = await sink.wait_for(2)
    assert (received["In-Reply-To"], received["References"]) == (original, original)


async def test_each_send_is_announced_on_the_bus(tmp_path: Path) -> None:
    broker = BrokerServer(address="127.0.0.1:0")
    await broker.start()
    try:
        async with GrpcEventBus(broker.address, source_agent="test") as listener:
            events = await listener.subscribe(NOTIFICATIONS_SENT)
            bus = GrpcEventBus(broker.address, source_agent="hermes")  # the server closes it
            async with hermes(tmp_path / "hermes", bus=bus) as client:
                answer = (await client.delegate("hermes", "send_email", EMAIL, correlation_id="wf-7")).result
                event = await asyncio.wait_for(anext(events), 5)
    finally:
        await broker.stop(0)
    assert event.payload == {
        "message_id": answer["message_id"],
        "email_message_id": answer["email_message_id"],
        "recipients": ["ada@example.org"],
        "subject": "Build 42 passed",
        "delivered_via": "maildir",
    }
    assert event.message.correlation_id == "wf-7"


async def test_a_bus_that_is_down_does_not_fail_the_send(tmp_path: Path) -> None:
    broker = BrokerServer(address="127.0.0.1:0")
    await broker.start()
    bus = GrpcEventBus(broker.address, source_agent="hermes")
    await broker.stop(0)  # nothing listens there now
    async with hermes(tmp_path / "hermes", bus=bus) as client:
        answer = (await client.delegate("hermes", "send_email", EMAIL)).result
    assert answer["delivered_via"] == "maildir"
    assert len(mailbox.Maildir(tmp_path / "hermes" / "Maildir", create=False)) == 1


async def test_a_password_variable_that_is_not_set_stops_the_start_without_a_value(tmp_path: Path) -> None:
    settings = {"smtp_host": "127.0.0.1", "smtp_username": "hermes", "smtp_password_env": "KOSMOS_TEST_UNSET_PASSWORD"}
    server = AgentServer(Hermes(), ServerSettings(grace_seconds=1), agent_settings=settings, state_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"smtp_password_env: \$KOSMOS_TEST_UNSET_PASSWORD is not set"):
        await server.start()
    await server.stop(0)


async def test_a_maildir_delivery_found_pending_on_a_retry_is_not_delivered_twice(tmp_path: Path) -> None:
    # The state a crash between the delivery and the mark leaves (the file there, the entry pending),
    # made by undoing the mark: the moment itself cannot be hit from outside without a hook in Hermes.
    message_id, state = new_message_id(), tmp_path / "hermes"
    async with hermes(state) as client:
        first = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
    with contextlib.closing(sqlite3.connect(state / "outbox.sqlite3")) as db, db:
        db.execute("UPDATE outbox SET state = 'pending', result = NULL WHERE message_id = ?", (message_id,))
    async with hermes(state) as client:
        again = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
    assert again == {**first, "duplicate": True}
    assert len(mailbox.Maildir(state / "Maildir", create=False)) == 1
    assert outbox_state(state, message_id) == "sent"
