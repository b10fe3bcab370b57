"""Structured output and tool calls through official clients over real HTTP, on the tiny model and the portable
engine: the `openai` client's `response_format` (json_schema, strict, and `parse` with a Pydantic model; greedy and
seeded), its forced tool calls (required and named, streamed and not: the arguments always parse and match the tool's
schema), tool_choice "auto" through a tool-aware chat template, `huggingface_hub`'s `text_generation(grammar=...)` on `/invocations`, `lmi invoke --json-schema`, and a bad schema or tool refused with a
400 naming its field while a stream beside it goes on to exactly its reference tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import jsonschema
import openai
import pytest
from click.testing import CliRunner
from huggingface_hub import InferenceClient
from inprocess_endpoint import served
from lmikit.cli import main
from lmikit.embedded_model import ensure_tiny_model
from pydantic import BaseModel, Field
from reference import ReferenceModel
from test_chat_template import TOOL_TEMPLATE

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Tell me about a person."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _tool(name: str, properties: dict) -> dict:
    parameters = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


WEATHER = _tool("get_weather", {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "maximum": 9}})
TIME = _tool("get_time", {"zone": {"enum": ["utc", "cet"]}})
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, TIME)}


class Pet(BaseModel):
    name: str = Field(max_length=10)
    legs: int = Field(ge=0, le=8)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Any]:
    with served("newest", output_formatter=None, enable_streaming="true") as (endpoint, _):
        yield endpoint


@pytest.fixture(scope="module")
def api(endpoint: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _json_schema(schema: dict) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}, {"temperature": 1.0, "seed": 4}]
)
def test_json_schema_answers_validate(api: openai.OpenAI, sampling: dict) -> None:
    answer = api.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=60, response_format=_json_schema(PERSON), **sampling
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


def test_parse_with_a_pydantic_model(api: openai.OpenAI) -> None:
    parsed = api.chat.completions.parse(
        model="tiny", messages=QUESTION, max_tokens=60, temperature=0, response_format=Pet
    )
    assert isinstance(parsed.choices[0].message.parsed, Pet)


def _check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls and {call.function.name for call in calls} <= names
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_tool_calls_parse_and_match_their_schemas(api: openai.OpenAI) -> None:
    # one call: with parallel calls allowed, an array of calls can go on for as long as the (untrained) model likes
    required = api.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=80,
        temperature=0,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    named = api.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=80,
        temperature=1.0,
        seed=5,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    for answer, names in ((required, {"get_weather", "get_time"}), (named, {"get_time"})):
        assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
        _check_calls(answer.choices[0].message.tool_calls, names)
        assert len(answer.choices[0].message.tool_calls) == 1


def test_a_streamed_tool_call_comes_in_pieces_and_adds_up_to_the_whole_answer(api: openai.OpenAI) -> None:
    request = {
        "model": "tiny",
        "messages": QUESTION,
        "max_tokens": 80,
        "temperature": 0,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    whole = api.chat.completions.create(**request)
    chunks = list(api.chat.completions.create(**request, stream=True))
    with api.chat.completions.stream(**request) as stream:
        final = stream.get_final_completion()
    pieces = [call.function.arguments for c in chunks[1:-1] for call in c.choices[0].delta.tool_calls or []]
    assert len(pieces) > 2 and chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = whole.choices[0].message.tool_calls[0].function
    assert "".join(pieces) == expected.arguments
    streamed = final.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == [(expected.name, expected.arguments)]
    _check_calls(streamed, {"get_weather"})


def test_bad_schemas_and_tools_get_named_400s_while_a_stream_beside_them_goes_on(api: openai.OpenAI) -> None:
    reference = ReferenceModel(ensure_tiny_model())
    prompt = reference.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    expected = reference(prompt, 40)
    stream = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=40, temperature=0, stream=True)
    first = next(iter(stream))
    refused = {}
    for field, request in {
        "response_format.json_schema.schema": {"response_format": _json_schema({"type": "nonsense"})},
        "tools[0].function.name": {
            "tools": [{"type": "function", "function": {"name": "a b"}}],
            "tool_choice": "required",
        },
        "tools[0].function.parameters": {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "wrong"}}}},
                }
            ],
            "tool_choice": "required",
        },
        "tool_choice": {"tools": [WEATHER]},  # "auto", which the tiny model's template (no tools) cannot render
    }.items():
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, **request)
        refused[field] = caught.value
    rest = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert first.choices[0].delta.role == "assistant" and rest == expected.text
    for field, error in refused.items():
        assert error.status_code == 400 and field in error.message, error.message
    assert "set option.chat_template" in refused["tool_choice"].message


def test_auto_renders_the_tools_through_a_tool_aware_template_and_reads_a_text_answer_back_as_content() -> None:
    with served(
        "newest", output_formatter=None, enable_streaming="true", chat_template=TOOL_TEMPLATE, tool_call_parser="hermes"
    ) as (endpoint, instruments):
        tiny = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        request: dict[str, Any] = {"model": "tiny", "messages": QUESTION, "max_tokens": 6, "temperature": 0}
        answer = tiny.chat.completions.create(**request, tools=[WEATHER], tool_choice="auto")
        chunks = list(tiny.chat.completions.create(**request, tools=[WEATHER], stream=True))
        tokenizer = instruments.engine.tokenizer
    prompt = tokenizer.render_chat(QUESTION, [WEATHER])
    assert "get_weather" in prompt and "<tool_call></tool_call>" in prompt
    assert answer.usage is not None and answer.usage.prompt_tokens == len(tokenizer.encode(prompt, False))
    choice = answer.choices[0]  # the tiny model writes no call: its text is the content
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert choice.message.content and streamed == choice.message.content


@pytest.fixture
def hub_client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every URL, a local one too, in offline mode (set for the suite)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.usefixtures("hub_client_online")
def test_huggingface_hub_text_generation_follows_a_json_grammar_and_a_regex(endpoint: Any) -> None:
    tgi = InferenceClient(endpoint.url + "/invocations")
    person = "".join(
        tgi.text_generation("A person:", max_new_tokens=60, stream=True, grammar={"type": "json", "value": PERSON})
    )
    streamed = "".join(
        tgi.text_generation(
            "A date:", max_new_tokens=20, stream=True, grammar={"type": "regex", "value": r"[0-9]{4}-[0-9]{2}"}
        )
    )
    jsonschema.validate(json.loads(person), PERSON)
    assert len(streamed) == 7 and streamed[4] == "-" and (streamed[:4] + streamed[5:]).isdigit()


@pytest.mark.parametrize("mode", [[], ["--chat"], ["--no-stream"]])
def test_lmi_invoke_json_schema_answers_match_the_schema(endpoint: Any, tmp_path: Path, mode: list[str]) -> None:
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    args = ["invoke", "A person:", "--endpoint-url", endpoint.url, "--json-schema", str(schema_file), *mode]
    result = CliRunner().invoke(main, [*args, "--max-new-tokens", "60"])
    assert result.exit_code == 0, result.output
    jsonschema.validate(json.loads(result.stdout), PERSON)


def test_lmi_invoke_refuses_a_schema_file_that_is_not_json(tmp_path: Path) -> None:
    schema_file = tmp_path / "broken.json"
    schema_file.write_text("{")
    result = CliRunner().invoke(
        main, ["invoke", "x", "--endpoint-url", "http://127.0.0.1:9", "--json-schema", str(schema_file)]
    )
    assert result.exit_code == 2 and "--json-schema" in result.output and "is not JSON" in result.output
