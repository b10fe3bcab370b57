"""OpenAI tool calling, pure: `tools` + `tool_choice` read into the calls' schema (each bad definition refused naming
its field), the call array read back as it streams, and the chat answer's `tool_calls` in both shapes."""

from __future__ import annotations

import json

import pytest
from fakes import EOS, ByteTokenizer
from lmistream.chat import chat_request
from lmistream.chat_output import ChatCompletion, ChatCompletionChunks
from lmistream.engine import EngineUpdate
from lmistream.errors import InvalidRequest
from lmistream.generation import Generation
from lmistream.params import ChatOptions, GenerationParams, GenerationRequest
from lmistream.tool_calls import CallScanner, calls_schema

USER = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ANSWER = '[{"name": "get_weather", "arguments": {"city": "Pa\\"ris}"}}, {"name": "get_time", "arguments": {}}]'


def _schema(**fields) -> dict:
    constraint = chat_request({"messages": USER, "tools": [WEATHER, TIME], **fields}, 30).params.constraint
    assert constraint is not None
    return json.loads(constraint.spec)


def test_required_allows_any_tool_and_a_named_choice_only_that_one() -> None:
    assert _schema(tool_choice="required") == calls_schema([WEATHER, TIME], single=False)
    assert _schema(tool_choice="required", parallel_tool_calls=False)["maxItems"] == 1
    named_choice = {"type": "function", "function": {"name": "get_time"}}
    named = _schema(tool_choice=named_choice)
    fields = [
        chat_request({"messages": USER, "tools": [WEATHER, TIME], "tool_choice": choice}, 30).params.constraint.field
        for choice in ("required", named_choice)
    ]
    assert fields == ["tools", "tools[1].function.parameters"]
    assert named == calls_schema([TIME], single=True)
    assert named["items"]["properties"]["name"] == {"const": "get_time"}
    assert named["items"]["properties"]["arguments"] == TIME["function"]["parameters"]


def test_none_decodes_text_and_the_answer_shape_follows_the_choice() -> None:
    none = chat_request({"messages": USER, "tools": [WEATHER], "tool_choice": "none"}, 30)
    forced = chat_request({"messages": USER, "tools": [WEATHER], "tool_choice": "required"}, 30)
    assert none.params.constraint is None and none.chat is not None and not none.chat.tool_calls
    assert forced.chat is not None and forced.chat.tool_calls
    assert forced.tools == ()  # a template without tool support is not given them
    assert chat_request({"messages": USER, "tools": [WEATHER], "tool_choice": "required"}, 30, True).tools == (WEATHER,)


def test_an_earlier_call_reaches_a_template_without_tool_support_as_the_content_the_model_wrote() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": "noon"})
    plain = chat_request({"messages": messages}, 30).messages
    assert plain[1] == {"role": "assistant", "content": '[{"name": "get_time", "arguments": {}}]'}
    assert plain[2] == {"role": "tool", "content": "noon", "tool_call_id": "call_1"}
    rendered = chat_request({"messages": messages}, 30, renders_tools=True).messages
    assert rendered[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": {}}}
    ]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"tools": [WEATHER]}, "tool_choice", "needs a chat template that renders tools"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "needs a chat template that renders tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", 'must be "none", "auto", "required"'),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            "not among tools",
        ),
        ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools[0]", '"type": "function"'),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}], "tool_choice": "required"},
            "tools[0].function.name",
            "letters, digits",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "a", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
            '"type": "object"',
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "a", "params": {}}}]},
            "tools[0].function.params",
            "not supported",
        ),
        ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools", "twice"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tools[0].function.parameters",
            "both constrain the answer",
        ),
        ({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": 1}, "parallel_tool_calls", "true or"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"function": {"name": "a", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "JSON text",
        ),
    ],
)
def test_each_bad_tool_field_is_refused_by_name(fields: dict, param: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request({"messages": USER, **fields}, 30)
    assert caught.value.param == param and fragment in caught.value.message, caught.value.message


def test_the_scanner_reads_names_whole_and_arguments_exactly_in_any_pieces() -> None:
    for size in (1, 3, len(ANSWER)):
        scanner, names, pieces = CallScanner(), [], {0: "", 1: ""}
        for start in range(0, len(ANSWER), size):
            for delta in scanner.feed(ANSWER[start : start + size]):
                names += [delta.name] if delta.name else []
                pieces[delta.index] += delta.arguments
        scanner.feed("<eos>}")
        assert scanner.complete and names == ["get_weather", "get_time"]
        assert pieces == {0: '{"city": "Pa\\"ris}"}', 1: "{}"}
        assert [json.loads(scanner.arguments(i)) for i in (0, 1)] == [{"city": 'Pa"ris}'}, {}]


def test_an_unfinished_array_is_not_complete() -> None:
    scanner = CallScanner()
    scanner.feed(ANSWER[:30])
    assert not scanner.complete


TOK = ByteTokenizer()


def _answer(shape: type, text: str, finished_by_eos: bool = True) -> list[str]:
    options = ChatOptions(tool_calls=True)
    request = GenerationRequest(
        "p", GenerationParams(max_new_tokens=500), stream=shape is ChatCompletionChunks, api="chat", chat=options
    )
    formatter = shape("chatcmpl-0123456789abcdef", 1700000000, "tiny", 5, options)
    generation = Generation("r", request, TOK, formatter, buffered=shape is ChatCompletion)
    tokens = TOK.ids(text) + ([EOS] if finished_by_eos else [])
    return [generation.absorb([EngineUpdate("r", (t,), finished=i == len(tokens) - 1)]) for i, t in enumerate(tokens)]


def test_a_completion_gives_the_calls_as_tool_calls() -> None:
    body = json.loads("".join(_answer(ChatCompletion, ANSWER)))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"]) for c in calls] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert calls[0]["function"]["arguments"] == '{"city": "Pa\\"ris}"}' and calls[0]["id"] != calls[1]["id"]


def test_a_cut_off_call_array_comes_back_as_text_with_finish_reason_length() -> None:
    body = json.loads("".join(_answer(ChatCompletion, ANSWER[:40], finished_by_eos=False)))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER[:40]}


def test_chunks_stream_each_calls_id_and_name_once_then_its_arguments_in_pieces() -> None:
    events = [line[6:] for out in _answer(ChatCompletionChunks, ANSWER) for line in out.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event)["choices"][0] for event in events[:-1]]
    assert chunks[0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-1]["finish_reason"] == "tool_calls"
    calls: dict[int, dict] = {}
    for chunk in chunks[1:-1]:
        (piece,) = chunk["delta"]["tool_calls"]
        call = calls.setdefault(piece["index"], {"arguments": ""})
        if "id" in piece:
            assert "id" not in call
            call.update(id=piece["id"], name=piece["function"]["name"])
        call["arguments"] += piece["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": 'Pa"ris}'}),
        ("get_time", {}),
    ]
