"""Golden bytes of the OpenAI chat output (chunks and one completion) and of each API's error body."""

from __future__ import annotations

import json

import pytest
from fakes import EOS, ByteTokenizer
from lmistream.chat_output import ChatCompletion, ChatCompletionChunks
from lmistream.engine import EngineUpdate
from lmistream.errors import InvalidRequest, error_body
from lmistream.generation import Generation
from lmistream.params import ChatOptions, GenerationParams, GenerationRequest

TOK = ByteTokenizer()
TOKENS = [72, 0xC3, 0xA9, EOS]  # "H", "é" in two bytes, then EOS
ENVELOPE = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"tiny"'


def run(shape, options=None, tokens=TOKENS, max_new_tokens=10, fail_at=None, stream=True):
    options = ChatOptions() if options is None else options
    params = GenerationParams(max_new_tokens=max_new_tokens, logprobs=options.logprobs)
    request = GenerationRequest("prompt", params, stream=stream, api="chat", chat=options)
    generation = Generation("r", request, TOK, shape("chatcmpl-1", 1700000000, "tiny", 5, options), buffered=not stream)
    outs = []
    for index, token in enumerate(tokens):
        if index == fail_at:
            outs.append(generation.absorb([EngineUpdate("r", error="engine broke", code=424)]))
            break
        last = index == len(tokens) - 1
        outs.append(generation.absorb([EngineUpdate("r", (token,), (-0.25,), finished=last)]))
    return outs


def test_chunks_send_the_role_then_content_deltas_then_the_finish_reason_then_done() -> None:
    outs = run(ChatCompletionChunks)
    assert outs == [
        (
            f'data: {{{ENVELOPE},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,'
            '"finish_reason":null}]}\n\n'
            f'data: {{{ENVELOPE},"choices":[{{"index":0,"delta":{{"content":"H"}},"logprobs":null,"finish_reason":null}}]}}'
            "\n\n"
        ),
        "",  # half a character is held back
        (
            f'data: {{{ENVELOPE},"choices":[{{"index":0,"delta":{{"content":"é"}},"logprobs":null,"finish_reason":null}}]}}'
            "\n\n"
        ),
        (
            f'data: {{{ENVELOPE},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}\n\n'
            "data: [DONE]\n\n"
        ),
    ]


def test_usage_chunk_comes_last_when_asked_for_and_other_chunks_carry_null_usage() -> None:
    outs = run(ChatCompletionChunks, ChatOptions(include_usage=True), tokens=[72, 73], max_new_tokens=2)
    events = [line[len("data: ") :] for line in "".join(outs).split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1] == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "tiny",
        "choices": [],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_one_completion_when_not_streaming_with_logprobs_of_each_token() -> None:
    outs = run(ChatCompletion, ChatOptions(logprobs=True, model="asked-name"), stream=False)
    assert outs[:-1] == ["", "", ""]
    assert json.loads(outs[-1]) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "asked-name",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hé"},
                "logprobs": {
                    "content": [
                        {"token": "H", "logprob": -0.25, "bytes": [72], "top_logprobs": []},
                        {"token": "", "logprob": -0.25, "bytes": [], "top_logprobs": []},
                        {"token": "é", "logprob": -0.25, "bytes": [195, 169], "top_logprobs": []},
                    ]
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 4,
            "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    outs = run(ChatCompletionChunks, fail_at=2)
    assert outs[-1] == (
        'data: {"error": {"message": "engine broke", "type": "server_error", "param": null, '
        '"code": 424}, "code": 424}\n\ndata: [DONE]\n\n'
    )


def test_a_failed_completion_is_the_error_object_alone() -> None:
    outs = run(ChatCompletion, fail_at=2, stream=False)
    assert json.loads(outs[-1]) == {
        "error": {"message": "engine broke", "type": "server_error", "param": None, "code": 424},
        "code": 424,
    }


@pytest.mark.parametrize(
    "api,expected",
    [
        ("lmi", '{"code": 400, "error": "temperature must be in [0, 2], got 5"}'),
        ("tgi", '{"error":"temperature must be in [0, 2], got 5","error_type":"validation","code":400}'),
        (
            "chat",
            (
                '{"error": {"message": "temperature must be in [0, 2], got 5", "type": "invalid_request_error", '
                '"param": "temperature", "code": 400}, "code": 400}'
            ),
        ),
    ],
)
def test_each_api_has_its_own_error_shape(api, expected) -> None:
    error = InvalidRequest("temperature must be in [0, 2], got 5", param="temperature")
    error.api = api
    assert error.body() == expected == error_body(api, error.message, 400, "temperature")


def test_usage_and_the_log_line_report_the_prompt_tokens_the_engine_had_cached() -> None:
    options = ChatOptions()
    request = GenerationRequest("prompt", GenerationParams(max_new_tokens=2), stream=False, api="chat", chat=options)
    formatter = ChatCompletion("chatcmpl-1", 1700000000, "tiny", 40, options)
    generation = Generation("r", request, TOK, formatter, buffered=True, prompt_tokens=40)
    assert generation.absorb([EngineUpdate("r", (72,), cached_tokens=32)]) == ""
    body = json.loads(generation.absorb([EngineUpdate("r", (73,), finished=True, cached_tokens=32)]))
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert "prompt_tokens=40 cached_tokens=32 " in generation.summary()
