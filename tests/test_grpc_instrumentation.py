"""opentelemetry-instrumentation-grpc's aio interceptors on the mesh's servers and channels: one trace.

Each scenario runs in a process of its own (tests/helpers/instrumented.py), which sets a tracer
provider recording into an in-memory exporter: a provider is set once per process, and this
one keeps none. Real agents on port 0, real channels, the library's real interceptors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.conftest import run_tool

SERVICE = "kosmos.v1.AgentService"
# The shortcuts tracing.py takes, as configure_tracing sets them: in an exporting process, and
# (none) under an application's own provider.
SHORTCUTS = {
    "kosmos": {"w3c": True, "children": True, "roots": False, "nothing_recorded": False},
    "application": {"w3c": False, "children": False, "roots": False, "nothing_recorded": False},
}
SETUPS = pytest.mark.parametrize("setup", list(SHORTCUTS))


async def scenario(name: str, setup: str) -> dict[str, Any]:
    """What tests/helpers/instrumented.py recorded for scenario ``name`` under ``setup``."""
    code, out, err = await run_tool(sys.executable, "-m", "tests.helpers.instrumented", name, setup, limit=60)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result.pop("shortcuts") == SHORTCUTS[setup]
    return result


def chain(spans: list[dict[str, Any]], leaf: str) -> list[tuple[str, str]]:
    """``leaf``'s span and its ancestors, up to the trace's root, as (name, kind); every one recorded."""
    by_id = {span["span_id"]: span for span in spans}
    [span] = [span for span in spans if span["name"] == leaf]
    found = [(span["name"], span["kind"])]
    while span["parent_id"]:
        assert span["parent_id"] in by_id, f"the parent of {span['name']} was not recorded"
        span = by_id[span["parent_id"]]
        found.append((span["name"], span["kind"]))
    return found


def one_trace(call: dict[str, Any]) -> str:
    """The one trace every span of ``call`` is in; the handler saw it as the envelope's trace_id."""
    traces: set[str] = {span["trace_id"] for span in call["spans"]}
    assert len(traces) == 1, call["spans"]
    return traces.pop()


def named(call: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    spans: list[dict[str, Any]] = [span for span in call["spans"] if span["name"] == name and span["kind"] == kind]
    [span] = spans
    return span


@SETUPS
async def test_a_plain_channel_with_the_librarys_interceptors_is_the_parent_of_the_agents_span(setup: str) -> None:
    call = (await scenario("plain", setup))["execute"]
    trace_id = one_trace(call)
    assert call["answer"]["trace_id"] == trace_id
    assert len(call["spans"]) == 2, call["spans"]
    assert chain(call["spans"], "execute.echo.whoami") == [
        ("execute.echo.whoami", "SERVER"),
        (f"/{SERVICE}/Execute", "CLIENT"),
    ]
    client = named(call, f"/{SERVICE}/Execute", "CLIENT")
    assert client["attributes"]["rpc.service"] == SERVICE
    assert client["attributes"]["rpc.method"] == "Execute"
    assert client["attributes"]["rpc.grpc.status_code"] == 0


@SETUPS
async def test_with_the_switch_on_an_execute_nests_the_librarys_spans_between_the_meshs(setup: str) -> None:
    call = (await scenario("switch", setup))["execute"]
    trace_id = one_trace(call)
    assert call["answer"]["trace_id"] == trace_id
    assert len(call["spans"]) == 4, call["spans"]
    assert chain(call["spans"], "execute.echo.whoami") == [
        ("execute.echo.whoami", "SERVER"),
        (f"/{SERVICE}/Execute", "SERVER"),
        (f"/{SERVICE}/Execute", "CLIENT"),
        ("delegate.echo.whoami", "CLIENT"),
    ]
    for kind in ("SERVER", "CLIENT"):
        assert named(call, f"/{SERVICE}/Execute", kind)["attributes"]["rpc.grpc.status_code"] == 0
    assert named(call, "execute.echo.whoami", "SERVER")["attributes"]["agent.response.status"] == "OK"


@SETUPS
async def test_with_the_switch_on_a_stream_nests_the_librarys_spans_between_the_meshs(setup: str) -> None:
    call = (await scenario("switch", setup))["stream"]
    one_trace(call)
    assert call["answer"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert len(call["spans"]) == 4, call["spans"]
    assert chain(call["spans"], "stream.echo.count") == [
        ("stream.echo.count", "SERVER"),
        (f"/{SERVICE}/Stream", "SERVER"),
        (f"/{SERVICE}/Stream", "CLIENT"),
        ("delegate.echo.count", "CLIENT"),
    ]
    # The library's CLIENT span ends with the call (read to its end), within the delegation's.
    client, delegation = named(call, f"/{SERVICE}/Stream", "CLIENT"), named(call, "delegate.echo.count", "CLIENT")
    assert client["attributes"]["rpc.grpc.status_code"] == 0
    assert delegation["start"] <= client["start"] <= client["end"] <= delegation["end"]
    for name, kind in (("stream.echo.count", "SERVER"), ("delegate.echo.count", "CLIENT")):
        assert named(call, name, kind)["attributes"]["agent.response.status"] == "OK"


@SETUPS
async def test_a_caller_without_trace_context_gets_one_trace_begun_by_the_librarys_server_span(setup: str) -> None:
    call = (await scenario("untraced", setup))["execute"]
    assert call["answer"]["trace_id"] == one_trace(call)
    assert len(call["spans"]) == 2, call["spans"]
    assert chain(call["spans"], "execute.echo.whoami") == [
        ("execute.echo.whoami", "SERVER"),
        (f"/{SERVICE}/Execute", "SERVER"),
    ]


@SETUPS
async def test_a_span_that_is_current_by_chance_is_not_taken_for_an_interceptors(setup: str) -> None:
    # An interceptor that makes no span, on a server started inside a span of the application's:
    # its calls run with that span current, yet the call's span continues the caller's...
    result = await scenario("bystander", setup)
    call = result["execute"]
    assert call["answer"]["trace_id"] == one_trace(call)
    assert len(call["spans"]) == 3, call["spans"]
    assert chain(call["spans"], "execute.echo.whoami") == [
        ("execute.echo.whoami", "SERVER"),
        (f"/{SERVICE}/Execute", "CLIENT"),
        ("delegate.echo.whoami", "CLIENT"),
    ]
    assert named(call, "execute.echo.whoami", "SERVER")["parent_id"] != result["started_in"]
    # ... and, when the caller passed none on, begins a trace of its own.
    untraced = result["untraced"]
    assert len(untraced["spans"]) == 1, untraced["spans"]
    assert chain(untraced["spans"], "execute.echo.whoami") == [("execute.echo.whoami", "SERVER")]
    assert untraced["answer"]["trace_id"] == one_trace(untraced)
