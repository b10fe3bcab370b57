"""Structured output inside the batched step, on the tiny trained model: every constrained answer matches its schema,
regex or choice list (greedy and seeded sampling), and the unconstrained rows of a mixed batch equal their solo runs
token for token. Runs on the portable engine on every stack (the LMI 0.23 tier too) and on the continuous engine
where transformers has it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from engine_support import Collector
from lmikit.embedded_model import ensure_tiny_model
from lmistream.config import HandlerConfig
from lmistream.engines import FACTORIES
from lmistream.errors import InvalidRequest
from lmistream.params import GenerationParams
from lmistream.structured import Constraint, json_constraint
from reference import ReferenceModel

pytestmark = pytest.mark.integration

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["Hello, my name is", "The quick brown fox", "1, 2, 3,", "Why?"]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> ReferenceModel:
    return ReferenceModel(tiny_dir)


@pytest.fixture(scope="module", params=["portable"])
def engine(request: pytest.FixtureRequest, tiny_dir: Path) -> Iterator[tuple[Any, Collector]]:
    config = {"model_id": str(tiny_dir), "dtype": "fp32", "max_rolling_batch_size": "8"}
    engine = FACTORIES[request.param](HandlerConfig.from_properties(config))
    collector = Collector()
    engine.start(collector)
    yield engine, collector
    engine.stop()


def _run(engine, collector: Collector, requests: dict[str, tuple[str, GenerationParams]]) -> dict[str, str]:
    for request_id, (prompt, params) in requests.items():
        engine.validate(params)
        engine.submit(request_id, engine.tokenizer.encode(prompt), params)
    collector.wait_finished(*requests)
    return {request_id: engine.tokenizer.decode(collector.tokens(request_id)) for request_id in requests}


def _done(text: str) -> str:
    """The answer without the eos token it must end on (the grammar allows nothing else once complete)."""
    assert text.endswith("<|im_end|>"), text
    return text[: -len("<|im_end|>")]


def _seed(engine: Any, index: int) -> int | None:
    """A seed where the engine honours one with sampling (the continuous engine samples from one shared generator)."""
    try:
        engine.validate(GenerationParams(max_new_tokens=1, do_sample=True, seed=index))
    except InvalidRequest:
        return None
    return index


def test_json_schema_answers_validate_greedy_and_seeded(engine) -> None:
    engine, collector = engine
    constraint = json_constraint(PERSON, "response_format.json_schema.schema")
    sampled = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}
    requests = {
        f"json-{index}": (
            prompt,
            GenerationParams(max_new_tokens=120, constraint=constraint, seed=_seed(engine, index), **sampled),
        )
        for index, prompt in enumerate(PROMPTS)
    }
    requests["json-greedy"] = (PROMPTS[0], GenerationParams(max_new_tokens=120, constraint=constraint))
    for text in _run(engine, collector, requests).values():
        jsonschema.validate(json.loads(_done(text)), PERSON)


def test_unconstrained_rows_of_a_mixed_batch_equal_their_solo_runs(engine, reference: ReferenceModel) -> None:
    engine, collector = engine
    constraint = json_constraint(PERSON, "response_format.json_schema.schema")
    requests = {}
    for index, prompt in enumerate(PROMPTS):
        requests[f"free-{index}"] = (prompt, GenerationParams(max_new_tokens=12))
        requests[f"held-{index}"] = (prompt, GenerationParams(max_new_tokens=40, constraint=constraint))
    _run(engine, collector, requests)
    for index, prompt in enumerate(PROMPTS):
        assert tuple(collector.tokens(f"free-{index}")) == reference(prompt, 12).token_ids, prompt


def test_regex_and_choice_answers_match(engine) -> None:
    engine, collector = engine
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    choices = ["red", "green", "blue"]
    requests = {
        "regex": (PROMPTS[2], GenerationParams(max_new_tokens=20, constraint=Constraint("regex", pattern, "regex"))),
        "choice": (
            PROMPTS[3],
            GenerationParams(max_new_tokens=20, constraint=Constraint("choice", json.dumps(choices), "choice")),
        ),
    }
    texts = _run(engine, collector, requests)
    assert re.fullmatch(pattern, _done(texts["regex"])), texts["regex"]
    assert _done(texts["choice"]) in choices


@pytest.mark.parametrize(
    ("constraint", "field"),
    [
        (Constraint("regex", "[a-", "parameters.grammar.value"), "parameters.grammar.value"),
        (
            json_constraint({"type": "nonsense"}, "response_format.json_schema.schema"),
            "response_format.json_schema.schema",
        ),
        (
            Constraint("grammar", "start: (", "parameters.structured_outputs.grammar"),
            "parameters.structured_outputs.grammar",
        ),
    ],
)
def test_a_constraint_that_does_not_compile_is_refused_naming_its_field(
    engine, constraint: Constraint, field: str
) -> None:
    engine, _ = engine
    with pytest.raises(InvalidRequest, match=re.escape(field)) as raised:
        engine.validate(GenerationParams(max_new_tokens=4, constraint=constraint))
    assert raised.value.param == field
