"""One OpenTelemetry trace across processes: Zeus -> planner -> scribe, and an event the planner publishes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kosmos_grpc import AGENT_SERVICE, Coordinator, new_message
from kosmos_grpc._proto.kosmos.v1 import agent_pb2
from kosmos_grpc.envelope import struct_to_dict
from tests.conftest import Processes, free_port, run_tool, tool
from tests.helpers.otlp import OtlpReceiver, ReceivedSpan
from tests.test_cli import Lines

MESH = """
[mesh]
grace_seconds = 2

[bus]
address = "127.0.0.1:{bus}"
delegation_events = false

[agents.zeus]
object = "agents.zeus:Zeus"
address = "127.0.0.1:{zeus}"

[agents.planner]
object = "tests.helpers.trace_agents:Planner"
address = "127.0.0.1:{planner}"

[agents.scribe]
object = "tests.helpers.trace_agents:Scribe"
address = "127.0.0.1:{scribe}"
"""

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's span kinds


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.stop()


async def test_one_trace_spans_every_process_hop_and_event(
    processes: Processes, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    ports = {name: free_port() for name in ("bus", "zeus", "planner", "scribe")}
    config = tmp_path / "kosmos.toml"
    config.write_text(MESH.format(**ports))
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the spans leave soon after they end
    }
    up = processes.start(tool("kosmos"), "--config", str(config), "up", env=env)
    output = Lines(up)
    lines = output.until("mesh up")
    for line in lines[lines.index(next(x for x in lines if x.startswith("AGENT"))) + 1 : -1]:
        processes.adopt(int(line.split()[3]))

    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items() if name != "bus"}
    async with Coordinator(addresses, telemetry=False) as client:
        await client.delegate("scribe", "listen")

    # The caller's own span, as a client in another language would send it: W3C traceparent.
    trace_id, root = os.urandom(16).hex(), os.urandom(8).hex()
    failed_trace = os.urandom(16).hex()
    async with grpc.aio.insecure_channel(addresses["zeus"]) as channel:
        execute = channel.unary_unary(
            f"/{AGENT_SERVICE}/Execute",
            request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
            response_deserializer=agent_pb2.ExecuteResponse.FromString,
        )

        async def via_zeus(action: str, trace: str) -> agent_pb2.ExecuteResponse:
            payload = {"agent": "planner", "action": action, "payload": {"topic": "otel"}}
            request = agent_pb2.ExecuteRequest(message=new_message("delegate", payload))
            metadata = (("traceparent", f"00-{trace}-{root}-01"),)
            reply: agent_pb2.ExecuteResponse = await execute(request, timeout=20, metadata=metadata)
            return reply

        reply = await via_zeus("plan", trace_id)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await via_zeus("no_such_action", failed_trace)
        # A stream relayed through Zeus: the same chain, on Stream.
        streamed_trace = os.urandom(16).hex()
        relay = channel.unary_stream(
            f"/{AGENT_SERVICE}/Stream",
            request_serializer=agent_pb2.StreamRequest.SerializeToString,
            response_deserializer=agent_pb2.StreamResponse.FromString,
        )
        payload = {"agent": "scribe", "action": "recite"}
        chunks = [
            struct_to_dict(reply.chunk.data)
            async for reply in relay(
                agent_pb2.StreamRequest(message=new_message("relay", payload)),
                timeout=20,
                metadata=(("traceparent", f"00-{streamed_trace}-{root}-01"),),
            )
            if not reply.chunk.final
        ]
    assert [chunk["trace_id"] for chunk in chunks] == [streamed_trace] * 3
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    answer = struct_to_dict(reply.response.result)
    # The envelope's trace_id is the OpenTelemetry trace id, on every hop.
    assert answer["result"]["trace_id"] == trace_id
    assert answer["result"]["scribe"]["trace_id"] == trace_id

    names = {
        "execute.zeus.delegate",
        "delegate.planner.plan",
        "execute.planner.plan",
        "delegate.scribe.write",
        "execute.scribe.write",
        "publish kosmos.events.user.action",
        "process kosmos.events.user.action",
    }
    received = await receiver.wait_for(names | {"delegate.planner._unknown"})
    spans = [s for s in received if s.trace_id == trace_id]
    by_name: dict[str, ReceivedSpan] = {}
    for span in spans:
        assert span.name not in by_name, f"{span.name} twice in the trace"
        by_name[span.name] = span
    assert set(by_name) == names

    def parent(child: str, of: str | None) -> None:
        expected = root if of is None else by_name[of].span_id
        assert by_name[child].parent_span_id == expected, f"{child} is not a child of {of or 'the caller'}"

    parent("execute.zeus.delegate", None)
    parent("delegate.planner.plan", "execute.zeus.delegate")
    parent("execute.planner.plan", "delegate.planner.plan")
    parent("delegate.scribe.write", "execute.planner.plan")
    parent("execute.scribe.write", "delegate.scribe.write")
    parent("publish kosmos.events.user.action", "execute.planner.plan")
    parent("process kosmos.events.user.action", "publish kosmos.events.user.action")

    kinds = {name: span.kind for name, span in by_name.items()}
    assert kinds["execute.zeus.delegate"] == SERVER
    assert kinds["delegate.planner.plan"] == CLIENT
    assert kinds["publish kosmos.events.user.action"] == PRODUCER
    assert kinds["process kosmos.events.user.action"] == CONSUMER
    services = {name: span.service for name, span in by_name.items()}
    assert services["execute.zeus.delegate"] == services["delegate.planner.plan"] == "zeus"
    assert services["execute.planner.plan"] == services["publish kosmos.events.user.action"] == "planner"
    assert services["execute.scribe.write"] == services["process kosmos.events.user.action"] == "scribe"
    delegation = by_name["delegate.scribe.write"].attributes
    assert delegation["agent.name"] == "scribe"
    assert delegation["agent.action"] == "write"
    assert delegation["agent.response.status"] == "OK"

    streamed = {
        s.name: s
        for s in await receiver.wait_until(lambda spans: len([s for s in spans if s.trace_id == streamed_trace]) >= 3)
        if s.trace_id == streamed_trace
    }
    assert set(streamed) == {"stream.zeus.relay", "delegate.scribe.recite", "stream.scribe.recite"}
    assert streamed["stream.zeus.relay"].parent_span_id == root
    assert streamed["delegate.scribe.recite"].parent_span_id == streamed["stream.zeus.relay"].span_id
    assert streamed["stream.scribe.recite"].parent_span_id == streamed["delegate.scribe.recite"].span_id
    assert streamed["stream.scribe.recite"].attributes["agent.response.status"] == "OK"

    # A failed delegation: its span says how it ended, is an error, and records the exception.
    # Named, as in the metrics, _unknown: the agent has no such action.
    failure = next(s for s in received if s.name == "delegate.planner._unknown")
    assert failure.trace_id == failed_trace
    assert failure.attributes["agent.response.status"] == "UNIMPLEMENTED"
    assert failure.attributes["agent.action"] == "_unknown"
    assert failure.status_code == 2
    assert "exception" in failure.events
    served = next(s for s in received if s.trace_id == failed_trace and s.name == "execute.zeus.delegate")
    assert served.status_code == 2  # zeus passed the failure on

    # `kosmos call` where spans are exported starts the trace itself.
    code, _, err = await run_tool(
        tool("kosmos"),
        "--config",
        str(config),
        "call",
        "zeus",
        "delegate",
        '{"agent": "scribe", "action": "write", "payload": {"topic": "cli"}}',
        env=env,
    )
    assert code == 0, err

    def from_the_cli(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        roots = [s for s in spans if s.name == "delegate.zeus.delegate"]
        return [s for s in spans if roots and s.trace_id == roots[0].trace_id]

    spans = from_the_cli(await receiver.wait_until(lambda spans: len(from_the_cli(spans)) >= 4))
    cli = next(s for s in spans if s.name == "delegate.zeus.delegate")
    assert cli.service == "kosmos-cli"
    assert cli.parent_span_id == ""  # the root
    zeus = next(s for s in spans if s.name == "execute.zeus.delegate")
    assert zeus.parent_span_id == cli.span_id
    assert {s.name for s in spans} == {
        "delegate.zeus.delegate",
        "execute.zeus.delegate",
        "delegate.scribe.write",
        "execute.scribe.write",
    }


LEAN_MESH = """
[agents.zeus]
object = "agents.zeus:Zeus"
address = "127.0.0.1:{zeus}"

[agents.scribe]
object = "tests.helpers.trace_agents:Scribe"
address = "127.0.0.1:{scribe}"
"""


async def test_without_an_exporter_every_hop_still_carries_the_callers_trace(
    processes: Processes, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in ("zeus", "scribe")}
    config = tmp_path / "kosmos.toml"
    config.write_text(LEAN_MESH.format(**ports))
    up = processes.start(tool("kosmos"), "--config", str(config), "up")  # no OTEL_* set: nothing exported
    lines = Lines(up).until("mesh up")
    for line in lines[lines.index(next(x for x in lines if x.startswith("AGENT"))) + 1 : -1]:
        processes.adopt(int(line.split()[3]))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['zeus']}") as channel:
        execute = channel.unary_unary(
            f"/{AGENT_SERVICE}/Execute",
            request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
            response_deserializer=agent_pb2.ExecuteResponse.FromString,
        )

        async def scribes_trace(metadata: tuple[tuple[str, str], ...] | None) -> str:
            payload = {"agent": "scribe", "action": "write", "payload": {"topic": "w3c"}}
            request = agent_pb2.ExecuteRequest(message=new_message("delegate", payload))
            reply = await execute(request, timeout=20, metadata=metadata)
            trace_id: str = struct_to_dict(reply.response.result)["result"]["trace_id"]
            return trace_id

        caller = os.urandom(16).hex()
        # An unsampled caller: nothing is recorded anywhere, and its trace still reaches the scribe.
        assert await scribes_trace((("traceparent", f"00-{caller}-{os.urandom(8).hex()}-00"),)) == caller
        # A caller with no trace context: Zeus starts a trace, a new one for each call.
        first, second = await scribes_trace(None), await scribes_trace(None)
    assert len(first) == 32
    assert int(first, 16) != 0
    assert first != second
    assert caller not in (first, second)


async def test_the_grpc_instrumentation_switch_puts_the_librarys_spans_into_every_process(
    processes: Processes, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    ports = {name: free_port() for name in ("bus", "zeus", "planner", "scribe")}
    config = tmp_path / "kosmos.toml"
    config.write_text(MESH.format(**ports) + "\n[telemetry]\ngrpc_instrumentation = true\n")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    up = processes.start(tool("kosmos"), "--config", str(config), "up", env=env)
    lines = Lines(up).until("mesh up")
    for line in lines[lines.index(next(x for x in lines if x.startswith("AGENT"))) + 1 : -1]:
        processes.adopt(int(line.split()[3]))

    trace_id, root = os.urandom(16).hex(), os.urandom(8).hex()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['zeus']}") as channel:
        execute = channel.unary_unary(
            f"/{AGENT_SERVICE}/Execute",
            request_serializer=agent_pb2.ExecuteRequest.SerializeToString,
            response_deserializer=agent_pb2.ExecuteResponse.FromString,
        )
        payload = {"agent": "planner", "action": "plan", "payload": {"topic": "otel"}}
        request = agent_pb2.ExecuteRequest(message=new_message("delegate", payload))
        await execute(request, timeout=20, metadata=(("traceparent", f"00-{trace_id}-{root}-01"),))

    library = f"/{AGENT_SERVICE}/Execute"

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        return {"execute.zeus.delegate", "execute.scribe.write"} <= {s.name for s in ours} and sum(
            s.name == library for s in ours
        ) >= 5

    spans = [s for s in await receiver.wait_until(complete) if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in spans}

    def parent_of(span: ReceivedSpan) -> ReceivedSpan | None:
        return by_id.get(span.parent_span_id)

    # Each hop: the mesh's delegation span, the library's CLIENT span, its SERVER span, the mesh's served span.
    zeus = next(s for s in spans if s.name == "execute.zeus.delegate")
    zeus_library = parent_of(zeus)
    assert zeus_library is not None
    assert (zeus_library.name, zeus_library.kind, zeus_library.service) == (library, SERVER, "zeus")
    served = next(s for s in spans if s.name == "execute.planner.plan")
    chain = [served]
    while (up_one := parent_of(chain[-1])) is not None and up_one is not zeus:
        chain.append(up_one)
    assert [(s.name, s.kind, s.service) for s in chain] == [
        ("execute.planner.plan", SERVER, "planner"),
        (library, SERVER, "planner"),
        (library, CLIENT, "zeus"),
        ("delegate.planner.plan", CLIENT, "zeus"),
    ]


async def _recorded(scenario: str) -> list[dict[str, Any]]:
    """The spans tests/helpers/recorded_spans.py recorded for ``scenario``."""
    code, out, err = await run_tool(sys.executable, "-m", "tests.helpers.recorded_spans", scenario, limit=60)
    assert code == 0, err
    spans: list[dict[str, Any]] = json.loads(out)
    return spans


async def test_a_fallback_ends_the_targets_span_with_its_failure_and_has_a_span_of_its_own() -> None:
    spans = await _recorded("fallback")
    caller = next(s for s in spans if s["name"] == "caller")
    alone = {s["name"]: s for s in spans if s["trace_id"] != caller["trace_id"]}
    inside = {s["name"]: s for s in spans if s["trace_id"] == caller["trace_id"]}
    for by_name in (alone, inside):
        target, fallback = by_name["delegate.athena.echo"], by_name["delegate.dionysus.echo"]
        assert target["attributes"]["agent.response.status"] == "UNAVAILABLE"
        assert target["status"] == "ERROR"
        assert fallback["attributes"]["agent.name"] == "dionysus"
        assert fallback["attributes"]["kosmos.fallback_for"] == "athena"
        assert fallback["attributes"]["agent.response.status"] == "OK"
        assert by_name["execute.dionysus.echo"]["parent_id"] == fallback["span_id"]
    # Inside the caller's span, the fallback's span is a sibling of its target's; a delegation
    # that began its trace has no parent to share, and its fallback's span is the failed one's child.
    assert (
        inside["delegate.athena.echo"]["parent_id"]
        == inside["delegate.dionysus.echo"]["parent_id"]
        == caller["span_id"]
    )
    assert alone["delegate.athena.echo"]["parent_id"] == ""
    assert alone["delegate.dionysus.echo"]["parent_id"] == alone["delegate.athena.echo"]["span_id"]


async def test_an_unknown_actions_span_is_named_as_its_metrics_label_it() -> None:
    (span,) = await _recorded("unknown")
    assert span["name"] == "delegate.echo._unknown"
    assert span["attributes"]["agent.action"] == "_unknown"
    assert span["attributes"]["agent.name"] == "echo"
    assert span["attributes"]["agent.response.status"] == "UNIMPLEMENTED"
