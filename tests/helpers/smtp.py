"""A real SMTP server for tests: aiosmtpd's protocol on a loopback port of the test's loop, keeping what it gets."""

from __future__ import annotations

import asyncio
import email
import email.policy
import warnings
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class SmtpSink:
    """Accepts every email on a loopback port (0: a free one) and keeps it parsed in ``messages``.

    Recipients in ``refuse`` are refused for good (550). While ``hold`` is clear, an email that
    arrived is kept but not answered: the client waits for its 250, as after a server's last write.
    With ``login`` (user, password), a client must log in first (over plain text: loopback only).
    """

    def __init__(
        self, port: int = 0, refuse: frozenset[str] = frozenset(), login: tuple[str, str] | None = None
    ) -> None:
        self.port = port
        self.refuse = refuse
        self.login = login
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []  # (MAIL FROM, RCPT TOs) of each
        self.hold = asyncio.Event()
        self.hold.set()
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        auth: dict[str, Any] = {}
        if self.login is not None:
            auth = {"auth_required": True, "auth_require_tls": False, "authenticator": self._authenticate}

        def protocol() -> SMTP:
            with warnings.catch_warnings():  # it warns of a login without TLS, which this loopback test means
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
                return SMTP(self, hostname="sink.localhost", loop=loop, **auth)

        self._server = await loop.create_server(protocol, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.hold.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, seconds: float = 5) -> list[EmailMessage]:
        """Until ``count`` emails have arrived (bounded); them."""
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) >= count)
        return self.messages

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert self.login is not None
        user, password = self.login
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user.encode(), password.encode())
        return AuthResult(success=ok, handled=False)

    async def handle_RCPT(  # aiosmtpd's names for its hooks
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # As a mail reader stores it: line ends of this system.
        message = email.message_from_bytes(envelope.content.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        async with self._arrived:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._arrived.notify_all()
        await self.hold.wait()
        return "250 2.0.0 queued"
