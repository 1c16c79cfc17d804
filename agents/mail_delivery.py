"""Where Hermes's emails go: an SMTP server (aiosmtplib), or a Maildir under the agent's folder when none is configured.

Each delivery says what happened in the mesh's terms: the server down, refusing the connection or
too slow is DependencyUnavailable naming ``host:port`` (retryable: nothing was accepted); a
permanent (5xx) refusal of the recipients or of the content is InvalidEnvelope naming the field,
with the server's reply clipped; a refused login or sender is ConfigError. The SMTP password is
read from the environment variable the config names and appears in no message.

The Maildir delivery names its file after the message_id (``new/<message_id>``), so whether an
email went out is a look at the folder: a retry after a crash finds it and delivers nothing twice.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiosmtplib

from kosmos_grpc import ConfigError, DependencyUnavailable, InvalidEnvelope
from kosmos_grpc.errors import ADDRESS, CAUSE
from kosmos_grpc.quoting import clip

if TYPE_CHECKING:
    from pathlib import Path

    from agents.mail_message import Email

__all__ = ["Delivered", "Delivery", "MaildirDelivery", "SmtpDelivery"]

#: How much of a server's reply an error quotes.
_REPLY_BYTES = 200


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a delivery did: how, to whom, where (a Maildir file), and which recipients the server refused."""

    via: str
    recipients: list[str]
    path: str | None = None
    refused: dict[str, str] = field(default_factory=dict)


class Delivery(Protocol):
    """A way to deliver an email."""

    #: "smtp" or "maildir", and where to: host:port, or the Maildir's folder.
    via: str
    where: str

    async def deliver(self, message_id: str, email: Email, seconds: float) -> Delivered:
        """Deliver ``email`` (of envelope ``message_id``) within ``seconds``."""
        ...

    async def find(self, message_id: str, email: Email) -> Delivered | None:
        """What an earlier delivery of ``email`` left, if it can be seen (None: not delivered, or unknowable)."""
        ...


class MaildirDelivery:
    """Delivers into the Maildir at ``root`` (made if missing), each email in a file named by its message_id."""

    via = "maildir"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        mailbox.Maildir(root, create=True)  # new/, cur/ and tmp/

    async def deliver(self, message_id: str, email: Email, seconds: float) -> Delivered:
        try:
            return await asyncio.to_thread(self._write, message_id, email)
        except OSError as exc:  # a full disk, a folder taken away: the email stays pending for a retry
            raise DependencyUnavailable(
                f"the Maildir at {self.root} cannot be written: {exc.strerror or exc}; the email stays in the outbox,"
                " and a retry with the same message_id delivers it",
                metadata={ADDRESS: str(self.root), CAUSE: clip(str(exc.strerror or exc), _REPLY_BYTES)},
            ) from None

    async def find(self, message_id: str, email: Email) -> Delivered | None:
        return await asyncio.to_thread(self._find, message_id, email)

    def _find(self, message_id: str, email: Email) -> Delivered | None:
        # In new/, or in cur/ once a mail reader took it (its name then ends in ':2,' and flags).
        cur = self.root / "cur"
        found = [self.root / "new" / message_id, cur / message_id, *cur.glob(f"{message_id}:*")]
        path = next((p for p in found if p.exists()), None)
        return None if path is None else Delivered(self.via, email.recipients, str(path))

    def _write(self, message_id: str, email: Email) -> Delivered:
        # Written in tmp/ and synced, then linked into new/: a reader never sees half an email, and the
        # link fails if the name is taken (delivered before), so a second delivery cannot happen.
        tmp = self.root / "tmp" / f"{message_id}.{os.getpid()}"
        final = self.root / "new" / message_id
        with open(tmp, "wb") as out:
            out.write(email.data.replace(b"\r\n", b"\n"))  # a Maildir file has the system's line ends
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            pass  # delivered before this call (a retry after a crash): the file there is the same email
        finally:
            tmp.unlink()
        folder = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new name is on disk before the outbox says sent
        finally:
            os.close(folder)
        return Delivered(self.via, email.recipients, str(final))


class SmtpDelivery:
    """Delivers through the SMTP server at ``host:port``, with STARTTLS and a login if configured."""

    via = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        local_hostname: str = "localhost",
    ) -> None:
        self.host, self.port = host, port
        self.where = f"{host}:{port}"
        self.starttls = starttls
        self.username = username
        self._password = password
        # Given, so that EHLO does not wait on a reverse DNS lookup of this machine (socket.getfqdn).
        self.local_hostname = local_hostname

    async def find(self, message_id: str, email: Email) -> Delivered | None:
        return None  # what a server accepted cannot be asked: a retry resends, with the same Message-ID

    async def deliver(self, message_id: str, email: Email, seconds: float) -> Delivered:
        try:
            async with asyncio.timeout(seconds):  # aiosmtplib's own timeout is per operation
                errors, _ = await aiosmtplib.send(
                    email.data,
                    sender=email.sender,
                    recipients=email.recipients,
                    hostname=self.host,
                    port=self.port,
                    username=self.username,
                    password=self._password,
                    local_hostname=self.local_hostname,
                    start_tls=self.starttls,
                    timeout=seconds,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise self._refused(exc) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ConfigError(
                f"the SMTP server at {self.where} refused the login of {self.username!r}: {_reply(exc)}"
            ) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            if exc.code >= 500:
                raise ConfigError(
                    f"the SMTP server at {self.where} refused the sender {exc.sender!r}: {_reply(exc)}"
                ) from None
            raise self._unavailable(_reply(exc)) from None
        except aiosmtplib.SMTPDataError as exc:
            if exc.code >= 500:
                raise InvalidEnvelope(
                    "payload.body", f"the SMTP server at {self.where} refused the email: {_reply(exc)}"
                ) from None
            raise self._unavailable(_reply(exc)) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise ConfigError(
                f"the SMTP server at {self.where} does not support {clip(str(exc), _REPLY_BYTES)}"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise ConfigError(f"the SMTP server at {self.where} refused: {_reply(exc)}") from None
            raise self._unavailable(_reply(exc)) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise self._unavailable(_cause(exc, seconds)) from None
        refused = {address: f"{reply.code} {clip(reply.message, _REPLY_BYTES)}" for address, reply in errors.items()}
        return Delivered(self.via, [a for a in email.recipients if a not in refused], refused=refused)

    def _refused(self, exc: aiosmtplib.SMTPRecipientsRefused) -> InvalidEnvelope | DependencyUnavailable:
        """Every recipient refused: for good (5xx), the caller's to fix; else (4xx) try again later."""
        replies = [f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients]
        text = clip("; ".join(replies), _REPLY_BYTES)
        if all(r.code >= 500 for r in exc.recipients):
            return InvalidEnvelope("payload.to", f"payload.to: the SMTP server at {self.where} refused {text}")
        return self._unavailable(f"it refused for now {text}")

    def _unavailable(self, cause: str) -> DependencyUnavailable:
        return DependencyUnavailable(
            f"the SMTP server at {self.where} is unavailable: {cause}; the email stays in the outbox,"
            " and a retry with the same message_id sends it",
            metadata={ADDRESS: self.where, CAUSE: clip(cause, _REPLY_BYTES)},
        )


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {clip(exc.message, _REPLY_BYTES)}"


def _cause(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused"
    return clip(str(exc) or type(exc).__name__, _REPLY_BYTES)
