"""OpenAI completions bodies: validation into a GenerationRequest, and the `text_completion` shapes (chunks and one
object) with legacy log-probabilities, echo and usage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from fakes import EOS, ByteTokenizer
from lmistream.chat_output import merge_choices
from lmistream.completion_output import Completion, CompletionChunks
from lmistream.completions import completion_request, is_completion
from lmistream.engine import EngineUpdate
from lmistream.errors import InvalidRequest
from lmistream.generation import Generation
from sse_decode import sse_payloads

TOK = ByteTokenizer()
TOKENS = [72, 105, EOS]  # "H", "i", then EOS


def run(body: dict, tokens: list[int] = TOKENS, fail_at: int | None = None) -> list[str]:
    request = completion_request(body)
    shape = CompletionChunks if request.stream else Completion
    assert request.chat is not None
    formatter = shape("cmpl-1", 1700000000, "tiny", 5, request.chat, request.inputs)
    generation = Generation("r", request, TOK, formatter, buffered=not request.stream)
    outs = []
    for index, token in enumerate(tokens):
        if index == fail_at:
            outs.append(generation.absorb([EngineUpdate("r", error="engine broke", code=424)]))
            break
        last = index == len(tokens) - 1
        outs.append(generation.absorb([EngineUpdate("r", (token,), (-0.25,), finished=last)]))
    return outs


def test_a_prompt_body_is_a_completion_with_openais_defaults() -> None:
    request = completion_request({"prompt": "Once", "model": "tiny"})
    assert is_completion({"prompt": "Once"}) and not is_completion({"inputs": "x", "prompt": "y"})
    assert request.api == "completion" and request.inputs == "Once" and request.stream is False
    params = request.params
    assert (params.max_new_tokens, params.do_sample, params.temperature, params.logprobs) == (16, True, 1.0, False)
    greedy = completion_request({"prompt": ["Once"], "temperature": 0, "max_tokens": 3, "stop": "x", "seed": 4})
    assert (greedy.inputs, greedy.params.do_sample, greedy.params.max_new_tokens) == ("Once", False, 3)
    assert (greedy.params.stop_sequences, greedy.params.seed) == (("x",), 4)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
        ({"prompt": [1, 2]}, "prompt", "token-id prompts are not supported"),
        ({"prompt": "a", "n": 2, "stream": True}, "n", "not streamed"),
        ({"prompt": "a", "n": 17}, "n", "between 1 and 16"),
        ({"prompt": "a", "best_of": 3}, "best_of", "only 1 (the default) is accepted"),
        ({"prompt": "a", "logprobs": 6}, "logprobs", "between 0 and 5"),
        ({"prompt": "a", "echo": True, "logprobs": 0}, "echo", "prompt's log-probabilities"),
        ({"prompt": "a", "suffix": "b"}, "suffix", "is not supported"),
        ({"prompt": "a", "logit_bias": {"1": 5}}, "logit_bias", "is not supported"),
        ({"prompt": "a", "temperature": 3}, "temperature", "in [0, 2]"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
        ({"prompt": "a", "parameters": {}}, "parameters", "unknown field"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(body: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        completion_request(body)
    assert caught.value.param == field and message in caught.value.message


def test_one_text_completion_carries_the_text_legacy_logprobs_and_usage() -> None:
    (*pending, last) = run({"prompt": "p", "logprobs": 0})
    body = json.loads(last)
    assert pending == ["", ""]
    assert body["object"] == "text_completion" and body["id"] == "cmpl-1" and body["model"] == "tiny"
    assert body["choices"] == [
        {
            "index": 0,
            "text": "Hi",
            "logprobs": {
                "tokens": ["H", "i"],
                "token_logprobs": [-0.25, -0.25],
                "top_logprobs": [{"H": -0.25}, {"i": -0.25}],
                "text_offset": [0, 1],
            },
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chunks_stream_the_echoed_prompt_then_each_token_then_the_finish_reason_usage_and_done() -> None:
    raw = "".join(run({"prompt": "p ", "echo": True, "stream": True, "stream_options": {"include_usage": True}}))
    chunks = sse_payloads(raw.encode())
    texts = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert texts == [("p ", None), ("H", None), ("i", None), ("", "stop")]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert raw.endswith("data: [DONE]\n\n")


def test_several_choices_merge_into_one_answer_in_order_with_their_usage_summed() -> None:
    request = completion_request({"prompt": "p", "n": 2})
    assert request.chat is not None and request.chat.n == 2
    answers = []
    for index, tokens in enumerate(([72, EOS], [105, 105, EOS])):
        options = replace(request.chat, index=index)
        formatter = Completion("cmpl-1", 1700000000, "tiny", 5, options, "p")
        generation = Generation("r", replace(request, chat=options), TOK, formatter, buffered=True)
        answers.append(generation.absorb([EngineUpdate("r", tuple(tokens), finished=True)]))
    merged = json.loads(merge_choices(answers))
    assert [(c["index"], c["text"]) for c in merged["choices"]] == [(0, "H"), (1, "ii")]
    assert merged["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_echo_puts_the_prompt_before_a_whole_completion() -> None:
    assert json.loads(run({"prompt": "p ", "echo": True, "max_tokens": 2})[-1])["choices"][0]["text"] == "p Hi"


def test_a_failure_is_openais_error_object_in_band_and_alone_in_a_whole_answer() -> None:
    streamed = run({"prompt": "p", "stream": True}, fail_at=1)
    whole = run({"prompt": "p"}, fail_at=1)
    error = sse_payloads(streamed[-1].encode())[-1]["error"]
    assert error["message"] == "engine broke" and streamed[-1].endswith("data: [DONE]\n\n")
    assert json.loads(whole[-1])["error"]["message"] == "engine broke"
