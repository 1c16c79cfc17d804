"""What Hermes sends, checked and built: strict address checks, and the email with a Message-ID from the message_id.

An address is refused unless the standard library parses it back to itself (``email.headerregistry``,
``email.utils``), it is ASCII with exactly one ``@`` and no space or control character, its local
part a plain dot-atom and its domain host names with a dot (or ``localhost``): what passes cannot
carry a second recipient, a display name or a header of its own.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from kosmos_grpc import InvalidEnvelope
from kosmos_grpc.quoting import echo

__all__ = [
    "MAX_ADDRESS",
    "MAX_BODY",
    "MAX_RECIPIENTS",
    "MAX_SUBJECT",
    "Email",
    "build_email",
    "check_address",
    "check_message_reference",
    "check_subject",
    "email_message_id",
    "recipients",
]

#: RFC 3696's longest address (64 + 1 + 255), the most recipients of one email, the longest subject
#: (RFC 5322's line), the longest body in characters.
MAX_ADDRESS, MAX_RECIPIENTS, MAX_SUBJECT, MAX_BODY = 320, 20, 998, 1_000_000
_MAX_LOCAL = 64
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A dot-atom local part (RFC 5322 atext, no quoted strings): what every mail server takes.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What may not be in a header line: control characters (C0 and C1), and what Python's email package
# reads as a line's end (str.splitlines: NEL, LINE and PARAGRAPH SEPARATOR besides CR and LF).
_NOT_IN_A_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# A Message-ID as In-Reply-To takes it: <left@right>, printable ASCII without space, brackets or a second @.
_MESSAGE_REFERENCE = re.compile(r"<[!-;=?A-~]{1,400}@[!-;=?A-~]{1,400}>")


def email_message_id(message_id: str) -> str:
    """The Message-ID header of the email sent for the envelope ``message_id`` (a uuid4): the same on every retry."""
    return f"<{message_id}@kosmos>"


def check_address(value: Any, field: str) -> str:
    """``value`` if it is one plain email address, else InvalidEnvelope naming ``field``."""
    if not isinstance(value, str):
        raise InvalidEnvelope(field, f"{field} must be an email address (a string)")
    if len(value) > MAX_ADDRESS:
        raise InvalidEnvelope(field, f"{field}: {echo(value)} is longer than {MAX_ADDRESS} characters")
    if not value.isascii() or _CONTROL.search(value) or " " in value:
        raise InvalidEnvelope(field, f"{field}: {echo(value)} must be ASCII without spaces or control characters")
    local, at, domain = value.rpartition("@")
    if value.count("@") != 1 or not at:
        raise InvalidEnvelope(field, f"{field}: {echo(value)} must hold exactly one '@'")
    if not local or len(local) > _MAX_LOCAL or _LOCAL.fullmatch(local) is None:
        raise InvalidEnvelope(field, f"{field}: {echo(value)} has no plain local part before its '@'")
    if len(domain) > 253 or _DOMAIN.fullmatch(domain) is None or ("." not in domain and domain.lower() != "localhost"):
        raise InvalidEnvelope(field, f"{field}: {echo(value)} has no domain with a dot (or localhost) after its '@'")
    try:  # the standard library must read it back as itself, and as one address without a display name
        parsed = Address(addr_spec=value).addr_spec
    except Exception:  # its parser raises several kinds (HeaderParseError, IndexError, ...)
        parsed = ""
    if parsed != value or email.utils.parseaddr(value) != ("", value):
        raise InvalidEnvelope(field, f"{field}: {echo(value)} is not a plain email address")
    return value


def recipients(value: Any, field: str = "payload.to") -> list[str]:
    """The checked addresses of ``to`` (one, or a list of 1..20), each once in their order."""
    if isinstance(value, str):
        return [check_address(value, field)]
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RECIPIENTS:
        raise InvalidEnvelope(field, f"{field} must be an address or a list of 1 to {MAX_RECIPIENTS} addresses")
    checked = [check_address(item, f"{field}.{index}") for index, item in enumerate(value)]
    return list(dict.fromkeys(checked))


def check_subject(value: Any, field: str = "payload.subject") -> str:
    """``value`` if it is a subject line: 1..998 characters, no CR, LF, other line break or control character."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SUBJECT:
        raise InvalidEnvelope(field, f"{field} must be a string of 1 to {MAX_SUBJECT} characters")
    if _NOT_IN_A_LINE.search(value):
        raise InvalidEnvelope(
            field, f"{field} must not hold CR, LF, other line breaks or control characters (header injection)"
        )
    return value


def check_message_reference(value: Any, field: str = "payload.in_reply_to") -> str:
    """``value`` if it is a Message-ID to reply to, ``<left@right>``."""
    if not isinstance(value, str) or _MESSAGE_REFERENCE.fullmatch(value) is None:
        shown = echo(value) if isinstance(value, str) else type(value).__name__
        raise InvalidEnvelope(field, f"{field}: {shown} is not a Message-ID like '<id@host>'")
    return value


class Email:
    """A built email: its bytes as SMTP sends them (CRLF line ends), its Message-ID, sender and recipients."""

    __slots__ = ("data", "message_id", "recipients", "sender", "subject")

    def __init__(self, data: bytes, message_id: str, sender: str, recipients: list[str], subject: str) -> None:
        self.data = data
        self.message_id = message_id
        self.sender = sender
        self.recipients = recipients
        self.subject = subject


def build_email(
    message_id: str,
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    *,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
) -> Email:
    """The email for envelope ``message_id``: plain UTF-8 text, its Message-ID derived from ``message_id``."""
    message = EmailMessage(policy=email.policy.SMTP)
    header = email_message_id(message_id)
    message["Message-ID"] = header
    message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    if reply_to is not None:
        message["Reply-To"] = reply_to
    if in_reply_to is not None:  # a retraction threads with the email it retracts
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body)  # text/plain; utf-8, its transfer encoding chosen for its lines
    return Email(message.as_bytes(), header, sender, to, subject)
