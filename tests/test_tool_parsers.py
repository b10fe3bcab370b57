"""tool_choice "auto", pure: the `hermes` and `llama3_json` parsers on fixed answers, whole and streamed in pieces of
every size (content released as soon as it cannot start a call; a hermes call written as its models write it named
first, then its arguments in pieces; any other call whole), what is not a call kept as content, and the chat answer's
`tool_calls` in both shapes."""

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
from lmistream.tool_calls import CallDelta
from lmistream.tool_parsers import ParsedCall, ToolTextStream, parse

WEATHER_CALL = '{"name": "get_weather", "arguments": {"city": "Pa\\"ris</tool_call>"}}'
HERMES = f"Let me check.\n<tool_call>\n{WEATHER_CALL}\n</tool_call>\n<tool_call>\n" + (
    '{"name": "get_time", "arguments": "{}"}\n</tool_call>'
)
CALLS = [
    ParsedCall("get_weather", json.dumps({"city": 'Pa"ris</tool_call>'})),
    ParsedCall("get_time", "{}"),
]
LLAMA = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}'
USER = [{"role": "user", "content": "Weather in Paris?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _streamed(parser: str, text: str, size: int) -> tuple[list[str], list[ParsedCall], list[CallDelta]]:
    """The content pieces, the calls the deltas add up to (a name once, arguments joined), and the deltas."""
    stream, contents, deltas = ToolTextStream(parser), [], []
    for start in range(0, len(text), size):
        content, more = stream.feed(text[start : start + size])
        contents.append(content)
        deltas += more
    content, more = stream.finish()
    contents.append(content)
    deltas += more
    named = [d for d in deltas if d.name is not None]
    assert [d.index for d in named] == list(range(len(named)))  # each call named once, in order
    calls = [ParsedCall(d.name or "", "".join(p.arguments for p in deltas if p.index == d.index)) for d in named]
    return contents, calls, deltas


def test_hermes_reads_each_tagged_call_and_keeps_the_text_around_them_as_content() -> None:
    assert parse("hermes", HERMES) == ("Let me check.\n", CALLS)
    assert parse("hermes", "No call: <tool_ca") == ("No call: <tool_ca", [])
    bad = "<tool_call>{not json}</tool_call> and <tool_call>{}</tool_call>"
    assert parse("hermes", bad) == (bad, [])
    assert parse("hermes", f"<tool_call>{WEATHER_CALL}") == ("", CALLS[:1])  # unclosed at the answer's end
    # named and cut off inside its arguments: it stays a call, with the arguments as far as they went
    assert parse("hermes", '<tool_call>{"name": "f", "arguments": {"a": "x') == ("", [ParsedCall("f", '{"a": "x')])


@pytest.mark.parametrize("size", [1, 2, 5, len(HERMES)])
def test_hermes_streams_content_at_once_holds_a_possible_tag_and_streams_each_call(size: int) -> None:
    contents, calls, deltas = _streamed("hermes", HERMES, size)
    assert "".join(contents) == "Let me check.\n" and calls == CALLS
    weather = [d.arguments for d in deltas if d.index == 0 and d.name is None]
    time = [d for d in deltas if d.index == 1]
    # the arguments object streams as written, in as many pieces as it arrived in (the tag in its string ends
    # nothing); the call whose arguments are a JSON string comes whole, name and arguments in one delta
    assert "".join(weather) == CALLS[0].arguments and len(weather) >= len(CALLS[0].arguments) // size
    assert [(d.name, d.arguments) for d in time] == [("get_time", "{}")]
    stream = ToolTextStream("hermes")
    assert stream.feed("Hi <tool") == ("Hi ", [])  # "<tool" may still become <tool_call>
    assert stream.feed("s are") == ("<tools are", [])


def test_llama3_json_reads_an_answer_of_calls_and_streams_any_other_answer_as_content() -> None:
    assert parse("llama3_json", "  " + LLAMA) == (
        "",
        [ParsedCall("get_weather", '{"city": "Paris"}'), ParsedCall("get_time", "{}")],
    )
    for text in ('{"answer": 42}', '{"name": "f", "parameters": {}} and then text', "It is sunny."):
        assert parse("llama3_json", text) == (text, [])
    for size in (1, 4):
        contents, calls, _ = _streamed("llama3_json", "It is {sunny}.", size)
        assert contents[0] == "It is {sunny}."[:size] and "".join(contents) == "It is {sunny}." and calls == []
        contents, calls, _ = _streamed("llama3_json", LLAMA, size)
        assert "".join(contents) == "" and [c.name for c in calls] == ["get_weather", "get_time"]


def test_auto_needs_a_tool_template_and_a_parser_each_refusal_naming_tool_choice() -> None:
    for renders, parser, fragment in (
        (False, "hermes", "set option.chat_template"),
        (True, None, "needs option.tool_call_parser"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            chat_request({"messages": USER, "tools": [TOOL]}, 30, renders, parser)
        assert refused.value.param == "tool_choice" and fragment in refused.value.message
        assert 'tool_choice "required"' in refused.value.message
    auto = chat_request({"messages": USER, "tools": [TOOL], "tool_choice": "auto"}, 30, True, "hermes")
    assert auto.params.constraint is None and auto.tools == (TOOL,)
    assert auto.chat is not None and auto.chat.tool_parser == "hermes" and not auto.chat.tool_calls


TOK = ByteTokenizer()


def _answer(shape: type, text: str) -> list[str]:
    options = ChatOptions(tool_parser="hermes")
    stream = shape is ChatCompletionChunks
    request = GenerationRequest("p", GenerationParams(max_new_tokens=500), stream=stream, api="chat", chat=options)
    formatter = shape("chatcmpl-0123456789abcdef", 1700000000, "tiny", 5, options)
    generation = Generation("r", request, TOK, formatter, buffered=not stream)
    tokens = [*TOK.ids(text), EOS]
    return [generation.absorb([EngineUpdate("r", (t,), finished=i == len(tokens) - 1)]) for i, t in enumerate(tokens)]


def test_an_auto_answer_with_calls_gives_content_and_tool_calls_and_one_without_is_text() -> None:
    choice = json.loads("".join(_answer(ChatCompletion, HERMES)))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    calls = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]
    assert [call[1:] for call in calls] == [(c.name, c.arguments) for c in CALLS] and calls[0][0] != calls[1][0]
    plain = json.loads("".join(_answer(ChatCompletion, "Sunny.")))["choices"][0]
    assert plain["finish_reason"] == "stop" and plain["message"] == {"role": "assistant", "content": "Sunny."}


def test_auto_chunks_stream_the_content_then_each_call_with_its_id_and_name_once_and_its_arguments_in_pieces() -> None:
    events = [line[6:] for out in _answer(ChatCompletionChunks, HERMES) for line in out.split("\n\n") if line]
    chunks = [json.loads(event)["choices"][0] for event in events[:-1]]
    content = "".join(c["delta"].get("content") or "" for c in chunks)
    pieces = [call for c in chunks for call in c["delta"].get("tool_calls", [])]
    assert content == "Let me check.\n" and chunks[-1]["finish_reason"] == "tool_calls"
    heads = [piece for piece in pieces if "id" in piece]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "get_weather"), (1, "get_time")]
    assert all(h["id"].startswith("call_") and h["type"] == "function" for h in heads)
    assert heads[0]["id"] != heads[1]["id"] and all("name" not in p["function"] for p in pieces if "id" not in p)
    joined = ["".join(p["function"]["arguments"] for p in pieces if p["index"] == index) for index in (0, 1)]
    assert joined == [call.arguments for call in CALLS]
    assert sum(p["index"] == 0 for p in pieces) > 2  # the first call's arguments came in pieces
