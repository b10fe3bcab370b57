"""Structured output requests: the fields that constrain an answer's text, read into one `Constraint`.

Pure (no torch, no I/O). Four request shapes name a constraint: OpenAI's `response_format` (`json_object`,
`json_schema`), vLLM's `structured_outputs` (`json`, `json_object`, `regex`, `choice`, `grammar`: the keys DJL's
newest handler passes through to vLLM), TGI's `grammar` (`{"type": "json" | "regex", "value": ...}`) and a tool
choice that forces a call (`tool_choice` "required" or a named function: the answer is decoded under a schema built
from the tools' parameters). This module checks their shape and names the field in every error; whether a schema,
regex or grammar compiles is the engine's check (`Engine.validate`), with the grammar library it decodes with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

KINDS = ("json", "regex", "choice", "grammar")
#: vLLM's structured-output keys this handler honours (one per request)
STRUCTURED_OUTPUT_KEYS = ("json", "json_object", "regex", "choice", "grammar")
MAX_SPEC_CHARS = 100_000


@dataclass(frozen=True)
class Constraint:
    """What the answer must match. `spec` is JSON text for `json` (a JSON schema) and `choice` (a list of strings),
    the pattern for `regex`, a Lark grammar for `grammar`; `field` is the request field errors name."""

    kind: str
    spec: str
    field: str

    @property
    def choices(self) -> list[str]:
        values: list[str] = json.loads(self.spec)
        return values


ANY_JSON_OBJECT = '{"type": "object"}'


def json_constraint(schema: Any, field: str) -> Constraint:
    """A JSON schema (an object, or its JSON text) as a constraint."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as error:
            raise InvalidRequest(f"{field} is not valid JSON: {error}", param=field) from None
    if not isinstance(schema, dict) and not isinstance(schema, bool):
        raise InvalidRequest(f"{field} must be a JSON schema object, got {_kind(schema)}", param=field)
    return Constraint("json", _bounded(json.dumps(schema), field), field)


def from_response_format(raw: Any, field: str = "response_format") -> Constraint | None:
    """OpenAI's `response_format`: `text` (none), `json_object` (any JSON object) or `json_schema`."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise InvalidRequest(
            f'{field} must be an object like {{"type": "json_schema", "json_schema": {{...}}}}', param=field
        )
    kind = raw["type"]
    _only(raw, {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"}}.get(kind), field)
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json", ANY_JSON_OBJECT, field)
    spec = raw.get("json_schema")
    where = f"{field}.json_schema"
    if not isinstance(spec, dict):
        raise InvalidRequest(f'{where} must be an object like {{"name": "...", "schema": {{...}}}}', param=where)
    _only(spec, {"name", "schema", "strict", "description"}, where)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise InvalidRequest(f"{where}.name must be a non-empty string", param=f"{where}.name")
    if spec.get("strict") not in (None, True, False):
        raise InvalidRequest(f"{where}.strict must be true or false", param=f"{where}.strict")
    return json_constraint(spec.get("schema", {}), f"{where}.schema")


def from_structured_outputs(raw: Any, field: str = "parameters.structured_outputs") -> Constraint | None:
    """vLLM's `structured_outputs`: exactly one of json, json_object, regex, choice, grammar."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(f'{field} must be an object like {{"json": {{...}}}}', param=field)
    _only(raw, set(STRUCTURED_OUTPUT_KEYS), field)
    given = [key for key in STRUCTURED_OUTPUT_KEYS if raw.get(key) not in (None, False)]
    if len(given) != 1:
        raise InvalidRequest(f"{field} must hold exactly one of {', '.join(STRUCTURED_OUTPUT_KEYS)}", param=field)
    key, value = given[0], raw[given[0]]
    where = f"{field}.{key}"
    if key == "json":
        return json_constraint(value, where)
    if key == "json_object":
        if value is not True:
            raise InvalidRequest(f"{where} must be true", param=where)
        return Constraint("json", ANY_JSON_OBJECT, where)
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise InvalidRequest(f"{where} must be a non-empty list of non-empty strings", param=where)
        return Constraint("choice", _bounded(json.dumps(value), where), where)
    return Constraint(key, _text(value, where), where)


def from_tgi_grammar(raw: Any, field: str = "parameters.grammar") -> Constraint | None:
    """TGI's `grammar`: `{"type": "json", "value": <schema>}` or `{"type": "regex", "value": "<pattern>"}`."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in ("json", "json_object", "regex") or "value" not in raw:
        raise InvalidRequest(f'{field} must be {{"type": "json" | "regex", "value": ...}}', param=field)
    _only(raw, {"type", "value"}, field)
    if raw["type"] == "regex":
        return Constraint("regex", _text(raw["value"], f"{field}.value"), f"{field}.value")
    return json_constraint(raw["value"], f"{field}.value")


def one_of(*constraints: Constraint | None) -> Constraint | None:
    """The request's constraint; two fields that each constrain the answer cannot both hold."""
    given = [c for c in constraints if c is not None]
    if len(given) > 1:
        raise InvalidRequest(
            f"{given[0].field} and {given[1].field} both constrain the answer; give one of them",
            param=given[1].field,
        )
    return given[0] if given else None


def _only(raw: Mapping[str, Any], allowed: set[str] | None, field: str) -> None:
    if allowed is None:
        raise InvalidRequest(
            f"{field}.type must be text, json_object or json_schema, got {raw.get('type')!r}", param=f"{field}.type"
        )
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{field}.{unknown[0]} is not supported; allowed: {', '.join(sorted(allowed))}",
            param=f"{field}.{unknown[0]}",
        )


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", param=field)
    return _bounded(value, field)


def _bounded(text: str, field: str) -> str:
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidRequest(f"{field} is {len(text)} characters; at most {MAX_SPEC_CHARS}", param=field)
    return text


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"
