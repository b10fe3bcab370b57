"""Structured-output fields of the three body kinds read into one `Constraint`; every malformed one is refused naming
its field (pure: no model)."""

from __future__ import annotations

import json

import pytest
from lmistream.errors import InvalidRequest
from lmistream.params import parse_parameters
from lmistream.structured import ANY_JSON_OBJECT, Constraint, from_response_format

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _constraint(parameters: dict) -> Constraint | None:
    return parse_parameters(parameters, 16).constraint


def test_lmi_response_format_json_schema() -> None:
    raw = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
    constraint = _constraint({"response_format": raw})
    assert constraint == Constraint("json", json.dumps(SCHEMA), "parameters.response_format.json_schema.schema")


@pytest.mark.parametrize(
    ("structured", "kind", "spec"),
    [
        ({"json": SCHEMA}, "json", json.dumps(SCHEMA)),
        ({"json": json.dumps(SCHEMA)}, "json", json.dumps(SCHEMA)),
        ({"json_object": True}, "json", ANY_JSON_OBJECT),
        ({"regex": "[0-9]+"}, "regex", "[0-9]+"),
        ({"choice": ["yes", "no"]}, "choice", '["yes", "no"]'),
        ({"grammar": 'start: "a"+'}, "grammar", 'start: "a"+'),
    ],
)
def test_vllm_structured_outputs(structured: dict, kind: str, spec: str) -> None:
    constraint = _constraint({"structured_outputs": structured})
    assert constraint is not None and (constraint.kind, constraint.spec) == (kind, spec)


def test_tgi_grammar_json_and_regex() -> None:
    assert _constraint({"grammar": {"type": "json", "value": SCHEMA}}) == Constraint(
        "json", json.dumps(SCHEMA), "parameters.grammar.value"
    )
    assert _constraint({"grammar": {"type": "regex", "value": "a+"}}) == Constraint(
        "regex", "a+", "parameters.grammar.value"
    )


def test_text_response_format_and_absent_fields_constrain_nothing() -> None:
    assert _constraint({"response_format": {"type": "text"}}) is None
    assert _constraint({}) is None
    assert from_response_format({"type": "json_object"}) == Constraint("json", ANY_JSON_OBJECT, "response_format")


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"response_format": {"type": "yaml"}}, "parameters.response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "parameters.response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "parameters.response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
            "parameters.response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{"}}},
            "parameters.response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "parameters.structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "parameters.structured_outputs.choice"),
        ({"structured_outputs": {"regex": 5}}, "parameters.structured_outputs.regex"),
        ({"structured_outputs": {"structural_tag": "x"}}, "parameters.structured_outputs.structural_tag"),
        ({"grammar": {"type": "ebnf", "value": "x"}}, "parameters.grammar"),
        ({"grammar": {"type": "regex", "value": ""}}, "parameters.grammar.value"),
        (
            {"grammar": {"type": "regex", "value": "a"}, "structured_outputs": {"regex": "b"}},
            "parameters.grammar.value",
        ),
    ],
)
def test_malformed_fields_are_refused_by_name(parameters: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_parameters(parameters, 16)
    assert raised.value.param == field, raised.value.message
    assert field in raised.value.message
