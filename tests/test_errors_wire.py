"""Every error of the mesh raised in a handler reaches the caller as the same class and code, one hop or two."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import kosmos_grpc
from agents.zeus import Zeus
from kosmos_grpc import Agent, Context, InvalidEnvelope, KosmosError, SagaFailed, action
from kosmos_grpc.errors import from_rpc_error, to_status

from .conftest import Mesh

# Every error the package exports, by name: each one must cross the wire as itself.
ERRORS: dict[str, type[KosmosError]] = {
    name: value
    for name in kosmos_grpc.__all__
    if isinstance(value := getattr(kosmos_grpc, name), type) and issubclass(value, KosmosError)
}


def _make(cls: type[KosmosError]) -> KosmosError:
    if cls is InvalidEnvelope:
        return InvalidEnvelope("payload.name", "raised on purpose")
    return cls(f"{cls.__name__} raised on purpose")


class Raiser(Agent):
    """Raises the error named in its payload."""

    name = "raiser"

    @action
    async def fail(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """Raise ``payload.error``."""
        raise _make(ERRORS[payload["error"]])


def test_every_exported_error_is_tested() -> None:
    expected = {
        "ActionFailed", "ActionNotFound", "AgentNotFound", "AgentUnavailable", "Cancelled", "CircuitOpen",
        "ConfigError", "DeadlineExceeded", "DelegationLoop", "DependencyUnavailable", "DuplicateMessage",
        "InvalidEnvelope", "KosmosError", "NotFound", "PermissionDenied", "PayloadTooLarge", "ResourceExhausted",
        "SagaFailed", "SlowConsumer", "StreamBroken", "WrongCallKind",
    }  # fmt: skip
    assert set(ERRORS) == expected


@pytest.mark.parametrize("through", ["one hop", "zeus"])
@pytest.mark.parametrize("name", sorted(ERRORS))
async def test_an_error_raised_in_a_handler_reaches_the_caller_as_itself(mesh: Mesh, name: str, through: str) -> None:
    cls = ERRORS[name]
    await mesh.serve(Raiser())
    await mesh.serve(Zeus())
    if through == "zeus":
        agent, action_name, payload = (
            "zeus",
            "delegate",
            {"agent": "raiser", "action": "fail", "payload": {"error": name}},
        )
    else:
        agent, action_name, payload = "raiser", "fail", {"error": name}
    async with mesh.client() as client:
        with pytest.raises(KosmosError) as raised:
            await client.delegate(agent, action_name, payload, timeout_ms=10_000)
    assert type(raised.value) is cls
    assert raised.value.code == _make(cls).code
    assert raised.value.origin == "raiser"  # blamed on the agent that raised it, not on Zeus


def test_a_saga_failure_keeps_its_step_code_across_the_wire() -> None:
    cause = kosmos_grpc.AgentUnavailable("athena is down", metadata={"origin": "athena"})
    failed = SagaFailed("saga s failed at step athena", metadata={"saga_id": "s"}, cause=cause)

    class Carried(grpc.RpcError):
        def __init__(self, status: grpc.Status) -> None:
            self._status = status

        def code(self) -> grpc.StatusCode:
            return self._status.code

        def details(self) -> str:
            return self._status.details

        def trailing_metadata(self) -> Any:
            return self._status.trailing_metadata

    rebuilt = from_rpc_error(Carried(to_status(failed)))
    assert type(rebuilt) is SagaFailed
    assert rebuilt.code == grpc.StatusCode.UNAVAILABLE
    assert (rebuilt.saga_id, rebuilt.origin) == ("s", "athena")
