"""Hermes, the notifications agent: sends an email per envelope message_id, exactly once, over SMTP or into a Maildir.

Once per message_id, even across a crash, through the outbox (``agents/outbox.py``): the email is
recorded ``pending`` before it leaves and marked ``sent``, with the answer, after. A call whose
message_id is marked answers what was recorded, ``duplicate: true``, and sends nothing.

The one window left: a crash after the email left and before the mark (the entry is still
``pending`` on the retry). Into the Maildir nothing is sent twice even then: the file is named by
the message_id and the retry finds it. Over SMTP nothing can ask the server what it accepted, so
the retry sends again, with the SAME Message-ID header (``<message_id@kosmos>``), by which a
receiver (or its MTA) may drop the second copy. Calls of one message_id arriving together share
one send, and a send outlives a caller that gave up (bounded by ``smtp_timeout_seconds``), so
only a crash opens that window. A pending entry is resent only when its caller retries (within
the envelope's TTL); entries are pruned after ``outbox_days``.

``kosmos.events.notifications.sent`` follows the mark, best-effort (a bus down is logged, the
send stands); an email marked but not yet announced is announced by the next call of its message_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from agents.mail_delivery import Delivered, Delivery, MaildirDelivery, SmtpDelivery
from agents.mail_message import (
    MAX_ADDRESS,
    MAX_BODY,
    MAX_RECIPIENTS,
    MAX_SUBJECT,
    Email,
    build_email,
    check_address,
    check_message_reference,
    check_subject,
    recipients,
)
from agents.outbox import FAILED, SENT, Entry, Outbox
from kosmos_grpc import Agent, ConfigError, Context, DependencyUnavailable, InvalidEnvelope, action
from kosmos_grpc.errors import CAUSE
from kosmos_grpc.subjects import NOTIFICATIONS_SENT
from kosmos_grpc.telemetry.bursts import BurstLog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["Hermes"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_log = logging.getLogger(__name__)
_DAY = 86_400.0
#: How long publishing the ``notifications.sent`` event may take before it is given up (the send stands).
_PUBLISH_SECONDS = 2.0

_ADDRESS: dict[str, Any] = {"type": "string", "minLength": 3, "maxLength": MAX_ADDRESS}
_SEND_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "to": {
            # One type's keywords apply to it alone: a string is one address, an array a list of them.
            "type": ["string", "array"],
            "description": f"an address, or a list of 1 to {MAX_RECIPIENTS}",
            "minLength": 3,
            "maxLength": MAX_ADDRESS,
            "items": _ADDRESS,
            "minItems": 1,
            "maxItems": MAX_RECIPIENTS,
        },
        "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT, "description": "one line"},
        "body": {"type": "string", "maxLength": MAX_BODY, "description": "plain text"},
        "reply_to": {**_ADDRESS, "description": "the address replies go to"},
        "in_reply_to": {
            "type": "string",
            "maxLength": 802,
            "description": "the Message-ID this email answers (a retraction's original): In-Reply-To and References",
        },
    },
    "required": ["to", "subject", "body"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class _Request:
    """A checked ``send_email`` payload."""

    to: list[str]
    subject: str
    body: str
    reply_to: str | None
    in_reply_to: str | None

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> _Request:
        reply_to, in_reply_to = payload.get("reply_to"), payload.get("in_reply_to")
        return cls(
            to=recipients(payload.get("to")),
            subject=check_subject(payload.get("subject")),
            body=str(payload.get("body", "")),
            reply_to=None if reply_to is None else check_address(reply_to, "payload.reply_to"),
            in_reply_to=None if in_reply_to is None else check_message_reference(in_reply_to),
        )

    def digest(self) -> str:
        """What tells this email from another sent under the same message_id."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


class Hermes(Agent):
    """Notifications: emails, each sent once per message_id, over SMTP or into a Maildir."""

    name = "hermes"
    settings_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "smtp_host": {"type": "string", "minLength": 1, "maxLength": 253, "description": "none: the Maildir"},
            "smtp_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 25},
            "smtp_starttls": {"type": "boolean", "default": False},
            "smtp_username": {"type": "string", "minLength": 1, "maxLength": 256},
            "smtp_password_env": {
                "type": "string",
                "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$",
                "description": "the NAME of the environment variable holding the SMTP password",
            },
            "smtp_timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 10},
            "from_address": {"type": "string", "maxLength": MAX_ADDRESS, "default": "hermes@kosmos.localhost"},
            "outbox_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650, "default": 7},
        },
    }

    def __init__(self) -> None:
        self._outbox: Outbox | None = None
        self._delivery: Delivery | None = None
        # message_id -> its send in progress: a second call of it waits for that one.
        self._sending: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._pruning: asyncio.Task[None] | None = None
        self._bursts = BurstLog(_log)
        self.sender = ""  # from_address, checked at start

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise ConfigError("hermes has not started: its outbox is not open")
        return self._outbox

    @property
    def delivery(self) -> Delivery:
        if self._delivery is None:
            raise ConfigError("hermes has not started: it has no delivery")
        return self._delivery

    async def on_start(self) -> None:
        settings = self.host.settings
        try:
            self.sender = check_address(settings["from_address"], "agents.hermes.settings.from_address")
        except InvalidEnvelope as exc:
            raise ConfigError(exc.message) from None
        self._delivery = await asyncio.to_thread(self._make_delivery, settings)
        path = self.host.state_dir / "outbox.sqlite3"
        try:
            self._outbox = await asyncio.to_thread(Outbox, path)
        except sqlite3.Error as exc:
            raise ConfigError(f"hermes cannot open its outbox {path}: {exc}") from None
        await self._prune()

    async def on_ready(self) -> None:
        delivery = self.delivery
        _log.info("hermes delivers emails by %s to %s (outbox %s)", delivery.via, delivery.where, self.outbox.path)
        self._pruning = asyncio.create_task(self._prune_daily())

    async def on_stop(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
        if self._sending:  # sends that outlived their callers: bounded by the SMTP timeout
            await asyncio.wait(list(self._sending.values()), timeout=self.host.settings["smtp_timeout_seconds"] + 1)
        if self._outbox is not None:
            await asyncio.to_thread(self._outbox.close)

    @action(schema=_SEND_SCHEMA)
    async def send_email(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Send an email, once per message_id: its Message-ID, recipients, how (and where) it went, if a duplicate."""
        request = _Request.of(payload)
        message_id = ctx.envelope.message_id
        task = self._sending.get(message_id)
        if task is None:
            task = asyncio.create_task(self._send(message_id, request, ctx.correlation_id))
            self._sending[message_id] = task
            task.add_done_callback(lambda done: self._settled(message_id, done))
        # Shielded: a caller who gives up (its deadline, a cut connection) does not stop a send half done.
        return await asyncio.shield(task)

    def _settled(self, message_id: str, task: asyncio.Task[dict[str, Any]]) -> None:
        self._sending.pop(message_id, None)
        if not task.cancelled():
            task.exception()  # retrieved: a caller who left may not have

    async def _send(self, message_id: str, request: _Request, correlation_id: str) -> dict[str, Any]:
        outbox = self.outbox
        digest = await asyncio.to_thread(request.digest)  # a body of up to a million characters: off the loop
        entry = await self._db(outbox.get, message_id)
        fresh = entry is None
        if entry is None:
            built = await asyncio.to_thread(
                build_email,
                message_id,
                self.sender,
                request.to,
                request.subject,
                request.body,
                reply_to=request.reply_to,
                in_reply_to=request.in_reply_to,
            )
            entry = await self._db(outbox.record, message_id, digest, built)  # on disk before it leaves
        if entry.digest != digest:
            raise InvalidEnvelope(
                "message_id",
                f"message_id {message_id} was used for another email: a new email needs a new message_id",
            )
        if entry.state == SENT:
            assert entry.result is not None
            if not entry.announced:
                await self._announce(entry, entry.result, correlation_id)
            return {**entry.result, "duplicate": True}
        if entry.state == FAILED:
            assert entry.result is not None
            raise InvalidEnvelope(entry.result["field"], entry.result["message"])
        email = Email(entry.email, entry.email_message_id, entry.sender, entry.recipients, entry.subject)
        # Pending, not recorded by this call: an earlier one may have sent it and crashed before the mark.
        delivered = None if fresh else await self.delivery.find(message_id, email)
        duplicate = delivered is not None
        if delivered is None:
            try:
                delivered = await self.delivery.deliver(message_id, email, self.host.settings["smtp_timeout_seconds"])
            except InvalidEnvelope as exc:  # refused for good: a retry gets the same answer
                await self._db(outbox.mark_failed, message_id, exc.field, exc.message)
                raise
        result = _result(message_id, entry, delivered)
        await self._db(outbox.mark_sent, message_id, result)  # on disk before the answer leaves
        await self._announce(entry, result, correlation_id)
        return {**result, "duplicate": duplicate}

    async def _db(self, method: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """An outbox call in a worker thread; a database that fails is UNAVAILABLE (the send is retried)."""
        try:
            return await asyncio.to_thread(method, *args, **kwargs)
        except sqlite3.Error as exc:
            raise DependencyUnavailable(
                f"hermes's outbox {self.outbox.path} failed: {exc}; retry with the same message_id",
                metadata={CAUSE: str(exc)[:200]},
            ) from None

    async def _announce(self, entry: Entry, result: Mapping[str, Any], correlation_id: str) -> None:
        """Publish ``kosmos.events.notifications.sent``, best-effort: a bus that fails is logged, the send stands."""
        bus = self.host.bus
        if bus is None:
            return
        event = {
            "message_id": entry.message_id,
            "email_message_id": entry.email_message_id,
            "recipients": result["recipients"],
            "subject": entry.subject,
            "delivered_via": result["delivered_via"],
        }
        try:
            async with asyncio.timeout(_PUBLISH_SECONDS):
                await bus.publish(
                    NOTIFICATIONS_SENT, event, correlation_id=correlation_id, timeout_ms=_PUBLISH_SECONDS * 1000
                )
            await asyncio.to_thread(self.outbox.mark_announced, entry.message_id)
        except Exception as exc:  # whatever the bus raises, the email went out
            self._bursts.warn("publish", "hermes could not publish %s: %s", NOTIFICATIONS_SENT, exc)

    def _make_delivery(self, settings: Mapping[str, Any]) -> Delivery:
        host = settings.get("smtp_host")
        if host is None:
            return MaildirDelivery(self.host.state_dir / "Maildir")
        username, variable = settings.get("smtp_username"), settings.get("smtp_password_env")
        if (username is None) != (variable is None):
            raise ConfigError("[agents.hermes.settings]: smtp_username and smtp_password_env go together")
        password = None
        if variable is not None:
            password = os.environ.get(variable)
            if password is None:  # the variable's name, never a value
                raise ConfigError(f"[agents.hermes.settings] smtp_password_env: ${variable} is not set")
        return SmtpDelivery(
            host,
            settings["smtp_port"],
            starttls=settings["smtp_starttls"],
            username=username,
            password=password,
            local_hostname=self.sender.rpartition("@")[2],
        )

    async def _prune(self) -> None:
        pruned = await asyncio.to_thread(self.outbox.prune, self.host.settings["outbox_days"] * _DAY)
        if pruned:
            _log.info("hermes pruned %d outbox entries older than %g days", pruned, self.host.settings["outbox_days"])

    async def _prune_daily(self) -> None:
        while True:
            await asyncio.sleep(_DAY)  # a schedule: the outbox keeps outbox_days, give or take one
            try:
                await self._prune()
            except Exception as exc:  # a failed prune is tried again tomorrow
                self._bursts.warn("prune", "hermes could not prune its outbox: %s", exc)


def _result(message_id: str, entry: Entry, delivered: Delivered) -> dict[str, Any]:
    result: dict[str, Any] = {
        "message_id": message_id,
        "email_message_id": entry.email_message_id,
        "recipients": delivered.recipients,
        "delivered_via": delivered.via,
    }
    if delivered.path is not None:
        result["path"] = delivered.path
    if delivered.refused:  # some recipients refused, the others took it
        result["refused"] = delivered.refused
    return result
