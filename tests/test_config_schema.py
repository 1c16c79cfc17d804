"""The published JSON Schema of kosmos.toml: current, agreeing with the loader, met by every config the docs show."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from kosmos_grpc.config import (
    AgentConfig,
    BusConfig,
    Idempotency,
    InterceptorsConfig,
    MeshConfig,
    MeshLimits,
    TelemetryConfig,
    load_config,
)
from kosmos_grpc.config_schema import AGENT, CONFIG, Table, json_schema, schema_text
from kosmos_grpc.resilience import BreakerPolicy, RetryPolicy

from .test_config import UNKNOWN_KEYS, WRONG_SHAPES

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "kosmos.schema.json"
_AGENT = "[agents.a]\nobject='m:C'\naddress='h:1'\n"
_TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _blocks() -> list[Any]:
    """Every ```toml block of README.md and docs/, by file and line."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = doc.read_text()
        for match in _TOML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(match.group(1), id=f"{doc.relative_to(ROOT)}:{line}"))
    return found


def test_the_published_schema_is_the_one_the_loader_describes() -> None:
    assert SCHEMA.read_text() == schema_text(), "kosmos.schema.json is stale: run 'make schema'"
    assert json.loads(SCHEMA.read_text()) == json_schema()


def test_the_shipped_config_names_the_schema_for_editors_and_meets_it() -> None:
    text = (ROOT / "kosmos.toml").read_text()
    assert text.startswith("#:schema ./kosmos.schema.json\n"), "Taplo reads a #:schema directive at the top"
    errors = [error.message for error in _validator().iter_errors(tomllib.loads(text))]
    assert errors == []


@pytest.mark.parametrize("block", _blocks())
def test_every_toml_block_of_the_docs_meets_the_schema_and_loads(tmp_path: Path, block: str) -> None:
    data = tomllib.loads(block)
    if "agents" not in data:  # a fragment: completed with one agent, as a config needs
        block += "\n" + _AGENT
        data = tomllib.loads(block)
    errors = [error.message for error in _validator().iter_errors(data)]
    assert errors == []
    path = tmp_path / "kosmos.toml"
    path.write_text(block)
    load_config(path)


def test_the_docs_have_toml_blocks_to_check() -> None:
    assert len(_blocks()) >= 3


@pytest.mark.parametrize(("text", "message"), UNKNOWN_KEYS + WRONG_SHAPES)
def test_what_the_loader_refuses_the_schema_refuses(text: str, message: str) -> None:
    assert not _validator().is_valid(tomllib.loads(text)), message


def test_the_schema_means_the_same_to_a_draft_7_validator_as_taplo_runs() -> None:
    """Taplo's validator knows drafts up to 7 and reads a 2020-12 schema as one: the keywords used mean the same."""
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    shipped = tomllib.loads((ROOT / "kosmos.toml").read_text())
    assert Draft7Validator(schema).is_valid(shipped)
    for text, _ in UNKNOWN_KEYS + WRONG_SHAPES:
        assert not Draft7Validator(schema).is_valid(tomllib.loads(text)), text
    assert set(_keywords(schema)) <= {
        "$schema",
        "title",
        "description",
        "type",
        "properties",
        "additionalProperties",
        "required",
        "minProperties",
        "items",
        "enum",
        "pattern",
        "minimum",
        "exclusiveMinimum",
        "maximum",
    }


def _keywords(schema: Any) -> list[str]:
    """Every keyword of a schema and its subschemas (not the names under properties)."""
    found: list[str] = []
    if isinstance(schema, dict):
        for word, value in schema.items():
            found.append(word)
            subschemas = value.values() if word == "properties" else [value]
            for sub in subschemas:
                found += _keywords(sub)
    return found


def _homes(table: Table) -> tuple[type, ...]:
    """The dataclasses the loader builds from ``table``'s keys."""
    homes: dict[int, tuple[type, ...]] = {
        id(CONFIG.tables["mesh"]): (MeshLimits, TelemetryConfig, Idempotency, MeshConfig),
        id(CONFIG.tables["bus"]): (BusConfig,),
        id(CONFIG.tables["telemetry"]): (TelemetryConfig,),
        id(CONFIG.tables["interceptors"]): (InterceptorsConfig,),
        id(CONFIG.tables["retry"]): (RetryPolicy,),
        id(CONFIG.tables["breaker"]): (BreakerPolicy,),
        id(AGENT): (AgentConfig,),
        id(AGENT.tables["retry"]): (RetryPolicy,),
        id(AGENT.tables["breaker"]): (BreakerPolicy,),
    }
    return homes[id(table)]


@pytest.mark.parametrize(
    "where",
    ["mesh", "bus", "telemetry", "interceptors", "retry", "breaker", "agents.*", "agents.*.retry", "agents.*.breaker"],
)
def test_every_described_key_has_a_field_to_go_to(where: str) -> None:
    table = CONFIG
    for part in where.split("."):
        table = AGENT if part == "*" else table.tables[part]
        if table.each is not None:
            table = table.each
    fields = {item.name for home in _homes(table) for item in dataclasses.fields(home)}
    for name, key in table.keys.items():
        attr = (key.attr or name).removeprefix("idempotency_")
        assert attr in fields, f"[{where}] {name}: add a field {attr!r} to {_homes(table)[0].__name__}"
