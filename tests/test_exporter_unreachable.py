"""An OTLP endpoint that is set but cannot be reached is said once per process, and never retried at length."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest

from kosmos_grpc.telemetry.exporting import EXPORTER_LOGGERS, ExportTrouble
from tests.conftest import ROOT, environment, free_port, run_tool, tool

SAID = "cannot export spans to"
# What the OTLP exporter logs (at debug level, which -v shows) each time an export meets UNAVAILABLE.
EXPORT_FAILED = "Reinitializing gRPC channel for traces exporter due to UNAVAILABLE error"
# The exporter's own lines, which no longer reach the log.
EXPORTERS_OWN = ("Failed to export", "Transient error", "retrying in")


async def test_an_unreachable_endpoint_is_said_once_by_the_agent_and_at_most_once_by_each_command(
    tmp_path: Path,
) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(f'[agents.echo]\nobject = "tests.helpers.agents:Echo"\naddress = "127.0.0.1:{free_port()}"\n')
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: each call's spans leave at once, one batch per call
    }
    agent = await asyncio.create_subprocess_exec(
        tool("kosmos"),
        "--config",
        str(config),
        "-v",
        "serve",
        "echo",
        cwd=ROOT,
        env=environment(otel),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    lines: list[str] = []
    try:
        assert agent.stderr is not None
        stderr = agent.stderr

        async def until(predicate: str, count: int = 1) -> None:
            async with asyncio.timeout(60):
                while sum(predicate in line for line in lines) < count:
                    line = (await stderr.readline()).decode()
                    assert line, f"the agent exited: {lines[-20:]}"
                    lines.append(line)

        await until("echo serving on")
        for number in range(3):
            code, out, err = await run_tool(
                tool("kosmos"), "--config", str(config), "call", "echo", "echo", f'{{"n": {number}}}', env=otel
            )
            assert code == 0, err
            assert out.strip() == f'{{"n": {number}}}'
            about_it = [line for line in err.splitlines() if "span" in line or "export" in line.lower()]
            assert len(about_it) <= 1, err
            assert not any(own in err for own in EXPORTERS_OWN), err
            await until(EXPORT_FAILED, number + 1)  # this call's spans failed to leave the agent too
    finally:
        if agent.returncode is None:
            agent.terminate()
        with contextlib.suppress(TimeoutError):
            rest = await asyncio.wait_for(agent.communicate(), 30)
            lines.extend(rest[1].decode().splitlines())
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
    said = [line for line in lines if SAID in line]
    assert len(said) == 1, said  # three exports failed, one line said so
    assert "(connection refused): spans are being dropped" in said[0]
    assert ": echo: cannot export spans to" in said[0], "the line names the process that says it"
    assert not any(own in line for line in lines for own in EXPORTERS_OWN)


def test_the_exporters_first_warning_becomes_one_line_naming_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = logging.getLogger(EXPORTER_LOGGERS[0])
    trouble = ExportTrouble("http://127.0.0.1:4317")
    exporter.addFilter(trouble)
    try:
        for _ in range(5):
            exporter.error("Failed to export traces to 127.0.0.1:4317, error code: StatusCode.DEADLINE_EXCEEDED")
        exporter.debug("a debug line goes through")
    finally:
        exporter.removeFilter(trouble)
    assert [r.getMessage() for r in caplog.records] == [
        "cannot export spans to http://127.0.0.1:4317 (no answer): spans are being dropped,"
        " further exporter errors are not logged; start the collector, or unset OTEL_EXPORTER_OTLP_ENDPOINT",
        "a debug line goes through",
    ]
    assert trouble.count == 5


def test_a_commands_exports_are_bounded_by_the_timeout_it_asks_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``kosmos`` command exits after at most half a second of waiting on a collector that never answers."""
    from kosmos_grpc.commands import CLI_EXPORT_SECONDS
    from kosmos_grpc.telemetry.exporting import EXPORT_TIMEOUT, otlp_span_processor

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TIMEOUT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    # The processor keeps its exporter, and the exporter its timeout, in private attributes.
    command: Any = otlp_span_processor(CLI_EXPORT_SECONDS)
    agent: Any = otlp_span_processor()
    try:
        assert command._batch_processor._exporter._timeout == CLI_EXPORT_SECONDS < EXPORT_TIMEOUT
        assert agent._batch_processor._exporter._timeout == EXPORT_TIMEOUT
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")  # the user's word wins
        asked: Any = otlp_span_processor(CLI_EXPORT_SECONDS)
        assert asked._batch_processor._exporter._timeout == 7
        asked.shutdown()
    finally:
        command.shutdown()
        agent.shutdown()
