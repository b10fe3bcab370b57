"""tool_choice "auto" end to end with a model that really calls a tool: the tiny model taught (`taught_model_support`)
to answer one conversation with a `hermes` tool call and another with text, served with a tool-aware chat template
and option.tool_call_parser=hermes, through the official `openai` client. The call comes back as `tool_calls`
(streamed and not), the text as content, and the tool's result sent back is rendered into the next prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from inprocess_endpoint import Instruments, served
from taught_model_support import teach
from test_chat_template import TOOL_TEMPLATE
from test_openai_structured import WEATHER

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREET = [{"role": "user", "content": "Say hello."}]
ARGUMENTS = {"city": "Paris"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
HELLO = "Hello! How can I help you?"
RESULT = '{"sky": "sunny", "celsius": 21}'
SUNNY = "It is sunny in Paris, 21 degrees."


def _follow_up(call_id: str) -> list[dict[str, Any]]:
    """The asking conversation, the assistant's call and the tool's result."""
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGUMENTS)}}
    return [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]


LESSONS = [
    ({"messages": ASK, "tools": [WEATHER]}, CALL),
    ({"messages": GREET, "tools": [WEATHER]}, HELLO),
    ({"messages": _follow_up("call_0"), "tools": [WEATHER]}, SUNNY),  # ids are not rendered: any id reads the same
]


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return teach(LESSONS, TOOL_TEMPLATE, "hermes", tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture(scope="module")
def endpoint(taught: Path) -> Iterator[tuple[openai.OpenAI, Instruments]]:
    with served(
        "newest",
        model_id=str(taught),
        output_formatter=None,
        enable_streaming="true",
        chat_template=TOOL_TEMPLATE,
        tool_call_parser="hermes",
    ) as (endpoint, instruments):
        api = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield api, instruments


def _request(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": messages,
        "max_tokens": 60,
        "temperature": 0,
        "tools": [WEATHER],
        "tool_choice": "auto",
    }


def test_the_models_call_comes_back_as_tool_calls(endpoint: tuple[openai.OpenAI, Instruments]) -> None:
    api, _ = endpoint
    choice = api.chat.completions.create(**_request(ASK)).choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGUMENTS


def test_a_streamed_call_comes_under_index_0_with_its_id_and_name_once_then_its_arguments_in_pieces(
    endpoint: tuple[openai.OpenAI, Instruments],
) -> None:
    api, _ = endpoint
    chunks = [chunk for chunk in api.chat.completions.create(**_request(ASK), stream=True) if chunk.choices]
    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert deltas and {delta.index for delta in deltas} == {0}
    assert len([d.id for d in deltas if d.id]) == 1 and [d.function.name for d in deltas if d.function.name] == [
        "get_weather"
    ]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == ARGUMENTS
    assert len([d for d in deltas if d.function.arguments]) > 2  # as the model wrote them, token by token
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with api.chat.completions.stream(**_request(ASK)) as stream:
        [call] = stream.get_final_completion().choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGUMENTS


def test_a_conversation_the_model_answers_in_text_comes_back_as_content(
    endpoint: tuple[openai.OpenAI, Instruments],
) -> None:
    api, _ = endpoint
    choice = api.chat.completions.create(**_request(GREET)).choices[0]
    streamed = list(api.chat.completions.create(**_request(GREET), stream=True))
    assert choice.finish_reason == "stop" and choice.message.content == HELLO and choice.message.tool_calls is None
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == HELLO
    assert not any(chunk.choices[0].delta.tool_calls for chunk in streamed if chunk.choices)


def test_the_tools_result_sent_back_is_rendered_and_answered(endpoint: tuple[openai.OpenAI, Instruments]) -> None:
    api, instruments = endpoint
    [call] = api.chat.completions.create(**_request(ASK)).choices[0].message.tool_calls
    choice = api.chat.completions.create(**_request(_follow_up(call.id))).choices[0]
    prompt = list(instruments.prompts.values())[-1]
    assert f"<|im_start|>tool\n{RESULT}<|im_end|>" in prompt
    written_back = prompt.split("<|im_start|>assistant\n<tool_call>\n")[1].split("\n</tool_call><|im_end|>")[0]
    assert json.loads(written_back) == {"name": "get_weather", "arguments": ARGUMENTS}
    assert choice.finish_reason == "stop" and choice.message.content == SUNNY and choice.message.tool_calls is None
