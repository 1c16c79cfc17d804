"""An action's input schema, compiled once: a payload checked against it before its handler runs.

fastjsonschema turns a JSON Schema into Python code at start, so a check costs well under a
microsecond for a small schema (jsonschema's interpreter takes about 16 µs); the first error
becomes INVALID_ARGUMENT naming its JSON path (``payload.k: must be smaller than or equal to
50``). Defaults the schema gives are filled into the payload the handler sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fastjsonschema

from kosmos_grpc.errors import InvalidEnvelope
from kosmos_grpc.quoting import clip

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["compile_payload_check"]


def compile_payload_check(
    schema: Mapping[str, Any], where: str, root: str = "payload"
) -> Callable[[dict[str, Any]], None]:
    """The check of payloads against ``schema``; TypeError naming ``where`` (the action) when it is no schema.

    Errors name their field under ``root`` (``payload.k``; ``agents.athena.settings.k`` for an agent's settings).
    """
    try:
        validate = fastjsonschema.compile(dict(schema), use_default=True)
    except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError) as exc:
        raise TypeError(f"{where}: its input schema is not a valid JSON Schema: {exc}") from None

    def check(payload: dict[str, Any]) -> None:
        try:
            validate(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _refusal(exc, payload, root) from None

    return check


def _refusal(exc: fastjsonschema.JsonSchemaValueException, payload: dict[str, Any], root: str) -> InvalidEnvelope:
    """The first error as the caller reads it: its path under ``root`` and what is wrong there."""
    path = [root, *(str(part) for part in (exc.path or ["data"])[1:])]
    message = str(exc.message)
    if exc.rule == "required" and isinstance(exc.rule_definition, list):
        # fastjsonschema names the whole list: name the first member missing, as its own field.
        holder = _at(payload, path[1:])
        missing = [key for key in exc.rule_definition if not isinstance(holder, dict) or key not in holder]
        if missing:
            path.append(str(missing[0]))
            return InvalidEnvelope(clip(".".join(path), 256), clip(f"{'.'.join(path)} is required"))
    field = clip(".".join(path), 256)
    # Its message starts with its own name for the place ("data.k must be ..."): ours instead.
    name = str(exc.name or "data")
    detail = message[len(name) :].strip() if message.startswith(name) else message
    return InvalidEnvelope(field, clip(f"{field}: {detail}"))


def _at(payload: Any, path: list[str]) -> Any:
    """What ``payload`` holds at ``path`` (keys and list indexes), None when it holds nothing there."""
    here = payload
    for part in path:
        if isinstance(here, dict):
            here = here.get(part)
        elif isinstance(here, list) and part.isdigit() and int(part) < len(here):
            here = here[int(part)]
        else:
            return None
    return here
