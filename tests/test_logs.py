"""Structured logs: every line a handler logs names its agent, action, correlation_id and trace."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kosmos_grpc import Coordinator
from kosmos_grpc.commands import UsageError, _log_format
from kosmos_grpc.config import load_config
from kosmos_grpc.telemetry import JsonFormatter, TextFormatter, configure_logging
from kosmos_grpc.telemetry.bursts import BurstLog
from tests.helpers.agents import Narrator

from .conftest import ManualClock, Mesh, Processes, kosmos_serve, tool

NARRATOR = '[agents.narrator]\nobject = "tests.helpers.agents:Narrator"\naddress = "127.0.0.1:0"\n'


def _remove_ours() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "kosmos"]:
        root.removeHandler(handler)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What configure_logging("json") writes, into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    configure_logging("json", stream=buffer)
    try:
        yield buffer
    finally:
        _remove_ours()
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_line_logged_in_a_call_names_the_agent_action_and_correlation_id(
    mesh: Mesh, json_lines: io.StringIO
) -> None:
    await mesh.serve(Narrator())
    async with mesh.client() as client:
        with Narrator.tracer.start_as_current_span("caller") as caller:
            response = await client.delegate("narrator", "note", {"text": "hello"}, correlation_id="corr-42")
    logging.getLogger("tests.narrator").info("between calls")
    inside, outside = (line for line in lines(json_lines) if line["logger"] == "tests.narrator")
    assert inside["message"] == "noted hello"
    assert inside["level"] == "INFO"
    assert inside["agent"] == "narrator"
    assert inside["action"] == "note"
    assert inside["correlation_id"] == "corr-42"
    assert inside["message_id"] == response.request_message_id
    # The caller's trace, continued by the server's span (or, with no span there, sent in the envelope).
    assert inside["trace_id"] == format(caller.get_span_context().trace_id, "032x") == response.result["trace_id"]
    assert inside.get("span_id") == response.result.get("span_id")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", inside["time"])
    assert outside["message"] == "between calls"
    assert not {"agent", "action", "correlation_id", "message_id", "trace_id"} & outside.keys()


async def test_a_line_logged_in_a_call_names_it_with_telemetry_off_too(mesh: Mesh, json_lines: io.StringIO) -> None:
    await mesh.serve(Narrator(), telemetry=False)
    async with mesh.client(telemetry=False) as client:
        response = await client.delegate("narrator", "note", {"text": "quiet"}, correlation_id="corr-7")
    [inside] = (line for line in lines(json_lines) if line["logger"] == "tests.narrator")
    assert (inside["agent"], inside["action"], inside["correlation_id"]) == ("narrator", "note", "corr-7")
    assert inside["message_id"] == response.request_message_id


async def test_the_trace_of_a_line_is_the_span_current_when_it_is_logged(mesh: Mesh, json_lines: io.StringIO) -> None:
    await mesh.serve(Narrator())
    async with mesh.client() as client:
        response = await client.delegate("narrator", "note_in_span", {"text": "deep"})
    (line,) = (line for line in lines(json_lines) if line["logger"] == "tests.narrator")
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    assert (line["trace_id"], line["span_id"]) == (response.result["trace_id"], response.result["span_id"])


async def test_lines_logged_while_streaming_name_their_call(mesh: Mesh, json_lines: io.StringIO) -> None:
    await mesh.serve(Narrator())
    async with mesh.client() as client:
        chunks = [c.data async for c in client.stream("narrator", "recount", {"n": 2}, correlation_id="s-1")]
    assert chunks == [{"i": 0}, {"i": 1}]
    found = [line for line in lines(json_lines) if line["logger"] == "tests.narrator"]
    assert [line["message"] for line in found] == ["chunk 0", "chunk 1"]
    assert {(line["agent"], line["action"], line["correlation_id"]) for line in found} == {
        ("narrator", "recount", "s-1")
    }


async def test_concurrent_calls_each_tag_their_own_lines(mesh: Mesh, json_lines: io.StringIO) -> None:
    await mesh.serve(Narrator())
    async with mesh.client() as client:
        await asyncio.gather(
            *(client.delegate("narrator", "note", {"text": str(i)}, correlation_id=f"c-{i}") for i in range(10))
        )
    found = [line for line in lines(json_lines) if line["logger"] == "tests.narrator"]
    assert sorted((line["message"], line["correlation_id"]) for line in found) == sorted(
        (f"noted {i}", f"c-{i}") for i in range(10)
    )


def test_an_exception_is_one_json_line_with_its_traceback(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("tests.narrator").exception("it failed")
    (line,) = lines(json_lines)
    assert line["level"] == "ERROR"
    assert line["message"] == "it failed"
    assert line["exception"].startswith("Traceback")
    assert "ValueError: bad value" in line["exception"]


async def test_text_lines_of_a_call_end_with_the_call(mesh: Mesh) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(TextFormatter())
    narrator = logging.getLogger("tests.narrator")
    narrator.addHandler(handler)
    narrator.setLevel(logging.INFO)
    try:
        await mesh.serve(Narrator())
        async with mesh.client() as client:
            await client.delegate("narrator", "note", {"text": "hi"}, correlation_id="corr-7")
        narrator.info("between calls")
    finally:
        narrator.removeHandler(handler)
        narrator.setLevel(logging.NOTSET)
    inside, outside = buffer.getvalue().splitlines()
    assert re.search(r" INFO tests\.narrator: noted hi \[narrator\.note corr=corr-7( trace=[0-9a-f]{32})?\]$", inside)
    assert outside.endswith(" INFO tests.narrator: between calls")


def test_configure_logging_twice_leaves_one_handler() -> None:
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging("text", stream=io.StringIO())
        configure_logging("json", level=logging.DEBUG, stream=io.StringIO())
        ours = [h for h in root.handlers if h.get_name() == "kosmos"]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        with pytest.raises(ValueError, match="'xml' is not one of text, json"):
            configure_logging("xml")
    finally:
        _remove_ours()
        root.setLevel(level)


def test_the_flag_beats_the_environment_which_beats_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(f'[mesh]\nlog_format = "json"\n{NARRATOR}')
    config = load_config(path)
    monkeypatch.delenv("KOSMOS_LOG_FORMAT", raising=False)
    assert _log_format(None, config) == "json"
    monkeypatch.setenv("KOSMOS_LOG_FORMAT", "text")
    assert _log_format(None, config) == "text"
    assert _log_format("json", config) == "json"
    monkeypatch.setenv("KOSMOS_LOG_FORMAT", "xml")
    with pytest.raises(UsageError, match="KOSMOS_LOG_FORMAT='xml' should be 'text' or 'json'"):
        _log_format(None, config)
    monkeypatch.delenv("KOSMOS_LOG_FORMAT")
    path.write_text(NARRATOR)
    assert _log_format(None, load_config(path)) == "text"


async def test_serve_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(NARRATOR)
    process = await kosmos_serve(config, "narrator", "--log-format", "json")
    try:
        assert process.stderr is not None
        serving = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert serving["level"] == "INFO"
        assert serving["message"].startswith("narrator serving on ")
        assert "agent" not in serving
        address = serving["message"].rsplit(" ", 1)[1]
        async with Coordinator({"narrator": address}) as client:
            await client.delegate("narrator", "note", {"text": "from afar"}, correlation_id="cli-1")
        noted = json.loads(await asyncio.wait_for(process.stderr.readline(), 30))
        assert (noted["message"], noted["agent"], noted["action"], noted["correlation_id"]) == (
            "noted from afar",
            "narrator",
            "note",
            "cli-1",
        )
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode().splitlines()
        assert rest
        assert all(json.loads(line)["level"] for line in rest)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_up_passes_the_log_format_to_its_children(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "kosmos.toml"
    config.write_text(NARRATOR)
    up = processes.start(tool("kosmos"), "--config", str(config), "--log-format", "json", "up")
    assert up.stdout is not None
    assert up.stderr is not None
    for line in up.stdout:
        if line.startswith("narrator "):
            processes.adopt(int(line.split()[3]))
        if line.startswith("mesh up"):
            break
    else:
        pytest.fail(f"kosmos up did not start: {up.stderr.read()}")
    up.send_signal(signal.SIGTERM)
    assert up.wait(20) == 0
    logged = [json.loads(line) for line in up.stderr.read().splitlines()]
    assert any(line["message"].startswith("narrator serving on ") for line in logged)


def test_a_burst_is_one_line_and_the_next_one_says_how_many_it_held(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    burst = BurstLog(logging.getLogger("kosmos_grpc.test_burst"), window=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kosmos_grpc.test_burst"):
        for _ in range(100):
            burst("refused %s", "garbage")
        clock.advance(59)
        burst("refused %s", "garbage")
        clock.advance(1)
        burst("refused %s", "more")
    assert [r.getMessage() for r in caplog.records] == [
        "refused garbage",
        "refused more (and 100 more in the 60 s before)",
    ]
    assert not any(r.exc_info for r in caplog.records)
