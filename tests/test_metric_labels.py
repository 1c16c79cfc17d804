"""Metric labels from request strings stay bounded: random action names through Zeus cannot make series without end."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from agents.zeus import Zeus
from kosmos_grpc import Coordinator, KosmosError
from kosmos_grpc.telemetry.labels import GUESSED_LIMIT, OTHER_LABEL, UNKNOWN_LABEL, DelegationLabels
from tests.helpers.toys import Athena

from .conftest import Mesh


def _actions(source: str, target: str, metric: str = "agent_delegation_total") -> set[str]:
    """The action labels of ``source``'s series of ``metric`` to ``target``."""
    return {
        sample.labels["action"]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == metric and sample.labels.get("source") == source and sample.labels.get("target") == target
    }


async def test_two_hundred_random_action_names_through_zeus_make_a_bounded_number_of_series(mesh: Mesh) -> None:
    # Athena takes payloads of 64 bytes at most: every call below is refused before its action is looked
    # up (neither NOT_FOUND nor UNIMPLEMENTED, which were counted under one label already).
    await mesh.serve(Athena(), payload_limit=64)
    await mesh.serve(Zeus())
    prefix = f"attack-{uuid.uuid4().hex[:8]}-"
    names = [prefix + uuid.uuid4().hex for _ in range(150)] + [prefix + "x" * 4000 + str(i) for i in range(50)]
    before = _actions("zeus", "athena")
    async with Coordinator(mesh.registry, resilience=False) as client:
        ask = {"agent": "athena", "action": "answer", "payload": {"topic": "grpc"}}
        assert (await client.delegate("zeus", "delegate", ask)).result["agent"] == "athena"
        for name in names:
            payload = {"agent": "athena", "action": name, "payload": {"padding": "p" * 200}}
            with pytest.raises(KosmosError) as refused:
                await client.delegate("zeus", "delegate", payload)
            assert refused.value.code.name in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "UNIMPLEMENTED"), refused.value
    added = _actions("zeus", "athena") - before
    attack = {name for name in added if name.startswith(prefix)}
    assert len(attack) <= GUESSED_LIMIT
    assert all(len(name) <= 64 for name in attack)
    assert added - attack <= {OTHER_LABEL, UNKNOWN_LABEL, "answer"}
    assert OTHER_LABEL in _actions("zeus", "athena", "agent_delegation_errors_total")


def test_an_action_is_its_own_label_once_answered_and_unknown_agents_are_other() -> None:
    labels = DelegationLabels(known={"athena"})
    assert labels.agent("athena") == "athena"
    assert labels.agent("mallory") == OTHER_LABEL
    for index in range(GUESSED_LIMIT):
        assert labels.action("athena", f"guess{index}", "UNAVAILABLE") == f"guess{index}"
    assert labels.action("athena", "one-too-many", "UNAVAILABLE") == OTHER_LABEL
    assert labels.action("athena", "answer", "UNAVAILABLE") == OTHER_LABEL  # the guesses are used up ...
    assert labels.action("athena", "answer", "OK") == "answer"  # ... but an action answered is one for good
    assert labels.action("athena", "answer", "DEADLINE_EXCEEDED") == "answer"
    assert labels.action("athena", UNKNOWN_LABEL, "UNIMPLEMENTED") == UNKNOWN_LABEL
