"""Hermes as a real process killed by SIGKILL between sending and answering: the retried call sends nothing twice."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kosmos_grpc import Coordinator, KosmosError
from kosmos_grpc.envelope import new_message_id
from tests.helpers.hermes import EMAIL, outbox_state
from tests.helpers.proxy import Proxy
from tests.helpers.smtp import SmtpSink

from .conftest import Processes, free_port, kosmos_serve, until_serving


class HermesProcess:
    """``kosmos serve hermes`` at a fixed address with its folder under ``tmp``, restartable there."""

    def __init__(self, tmp: Path, settings: dict[str, Any], processes: Processes) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.state = tmp / "state" / "hermes"
        self.config = tmp / "kosmos.toml"
        lines = [f"{key} = {value!r}".replace("'", '"') for key, value in settings.items()]
        self.config.write_text(
            f'[mesh]\nstate_dir = "{tmp / "state"}"\n'
            f'[agents.hermes]\nobject = "agents.hermes:Hermes"\naddress = "{self.address}"\n'
            "[agents.hermes.settings]\n" + "\n".join(lines) + "\n"
        )
        self.processes = processes
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await kosmos_serve(self.config, "hermes")
        self.processes.adopt(self.process.pid)  # SIGKILLed at the end if the test left it running
        assert self.process.stderr is not None
        self._drain = asyncio.create_task(self._read(self.process.stderr))
        async with Coordinator({"hermes": self.address}) as client:
            await until_serving(client, "hermes")

    async def _read(self, stderr: asyncio.StreamReader) -> None:
        while await stderr.readline():
            pass

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)
        if self._drain is not None:
            await self._drain


async def until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):  # bounded
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_hermes_killed_after_sending_before_answering_sends_nothing_twice(
    tmp_path: Path, processes: Processes
) -> None:
    message_id = new_message_id()
    async with SmtpSink() as sink:
        served = HermesProcess(tmp_path, {"smtp_host": "127.0.0.1", "smtp_port": sink.port}, processes)
        await served.start()
        proxy = Proxy(served.address)
        await proxy.start()
        try:
            async with Coordinator({"hermes": proxy.address}, resilience=False) as through:
                await through.health("hermes")  # the connection is up before its replies are swallowed
                proxy.swallow_replies()
                call = asyncio.create_task(
                    through.delegate("hermes", "send_email", EMAIL, message_id=message_id, timeout_ms=20_000)
                )
                await sink.wait_for(1)
                await until(lambda: outbox_state(served.state, message_id) == "sent", "the outbox marks it sent")
                await served.kill()  # sent and marked, its answer never arrived
                with pytest.raises(KosmosError):
                    await asyncio.wait_for(call, 10)
        finally:
            await proxy.stop()
        await served.start()  # the same address, the same folder; its memory of calls gone with the process
        async with Coordinator({"hermes": served.address}, resilience=False) as client:
            answer = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
        await served.kill()
    assert len(sink.messages) == 1
    assert answer["duplicate"] is True
    assert answer["email_message_id"] == sink.messages[0]["Message-ID"] == f"<{message_id}@kosmos>"


async def test_hermes_killed_while_the_server_takes_the_email_resends_it_with_the_same_message_id(
    tmp_path: Path, processes: Processes
) -> None:
    # The window the docstring owns up to: the server has the email, Hermes dies before its 250
    # arrives (the entry pending). The retry sends again, under the same Message-ID for receivers to drop.
    message_id = new_message_id()
    async with SmtpSink() as sink:
        served = HermesProcess(tmp_path, {"smtp_host": "127.0.0.1", "smtp_port": sink.port}, processes)
        await served.start()
        sink.hold.clear()
        async with Coordinator({"hermes": served.address}, resilience=False) as client:
            call = asyncio.create_task(client.delegate("hermes", "send_email", EMAIL, message_id=message_id))
            await sink.wait_for(1)
            await served.kill()
            sink.hold.set()
            with pytest.raises(KosmosError):
                await asyncio.wait_for(call, 10)
        assert outbox_state(served.state, message_id) == "pending"
        await served.start()
        async with Coordinator({"hermes": served.address}, resilience=False) as client:
            answer = (await client.delegate("hermes", "send_email", EMAIL, message_id=message_id)).result
        await served.kill()
    assert [m["Message-ID"] for m in sink.messages] == [f"<{message_id}@kosmos>"] * 2
    assert answer["duplicate"] is False
    assert outbox_state(served.state, message_id) == "sent"
