"""TGI's `decoder_input_details` and `best_of`, and DJL's `n`, on the portable engine with the tiny model over real
HTTP: the prompt's log-probabilities are transformers' own forward pass's, each of several sequences is a row of its
own (sequence i draws what a lone request with seed + i draws), answered in DJL newest's shape to an LMI body and to
`huggingface_hub`'s client (option.tgi_compat); what cannot be answered that way is a 400 naming the parameter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import huggingface_hub.constants
import pytest
from huggingface_hub import InferenceClient
from inprocess_endpoint import post, served
from lmikit.embedded_model import ensure_tiny_model
from reference import ReferenceModel

pytestmark = pytest.mark.integration

PROMPT = "The quick brown fox"
SAMPLED = {"max_new_tokens": 5, "temperature": 0.9}


@pytest.fixture(scope="module")
def reference() -> ReferenceModel:
    return ReferenceModel(ensure_tiny_model())


@pytest.fixture(scope="module")
def lmi() -> Iterator[Any]:
    with served("newest", output_formatter=None, enable_streaming="true") as (endpoint, _):
        yield endpoint


def _answer(endpoint: Any, parameters: dict, stream: bool = False) -> tuple[int, Any]:
    response = post(endpoint, {"inputs": PROMPT, "parameters": parameters, "stream": stream})
    return response.status, json.loads(response.read())


def _check_prefill(prefill: list[dict], reference: ReferenceModel, key: str) -> None:
    expected = reference.prompt_log_probs(PROMPT)
    assert [(token["id"], token["text"]) for token in prefill] == [
        (i, reference.tokenizer.decode([i])) for i, _ in expected
    ]
    assert prefill[0][key] is None
    assert [token[key] for token in prefill[1:]] == pytest.approx([lp for _, lp in expected[1:]], abs=1e-4)


def test_decoder_input_details_are_the_prompts_log_probabilities_under_the_model(
    lmi: Any, reference: ReferenceModel
) -> None:
    status, body = _answer(lmi, {"max_new_tokens": 3, "decoder_input_details": True})
    assert status == 200 and body["generated_text"] == reference(PROMPT, 3).text
    details = body["details"]  # decoder_input_details implies details, as on TGI
    assert list(details) == ["finish_reason", "generated_tokens", "inputs", "prefill"]
    _check_prefill(details["prefill"], reference, "log_prob")


def test_n_answers_each_sequence_as_a_lone_request_with_seed_plus_i_draws_it(lmi: Any) -> None:
    status, body = _answer(lmi, {**SAMPLED, "n": 3, "seed": 5})
    lone = [_answer(lmi, {**SAMPLED, "seed": seed})[1]["generated_text"] for seed in (5, 6, 7)]
    assert status == 200 and body["generated_text"] == lone[0]
    details = body["details"]
    assert list(details) == ["inputs", "finish_reason", "generated_tokens", "tokens", "best_of_sequences"]
    assert "".join(token["text"] for token in details["tokens"]) == lone[0]
    assert [other["generated_text"] for other in details["best_of_sequences"]] == lone[1:]
    assert list(details["best_of_sequences"][0]) == [
        "finish_reason",
        "generated_tokens",
        "tokens",
        "generated_text",
    ]


def test_best_of_through_huggingface_hubs_client_answers_the_likeliest_sequence(
    reference: ReferenceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TGI's `best_of` and `decoder_input_details` with option.tgi_compat, read by huggingface_hub's own parser: the
    answer is the sequence of highest total log-probability, the other is in best_of_sequences, both with the
    prompt's tokens."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # it refuses local URLs offline too
    with served("newest", output_formatter=None, enable_streaming="true", tgi_compat="true") as (endpoint, _):
        tgi = InferenceClient(endpoint.url + "/invocations")
        out = tgi.text_generation(
            PROMPT, max_new_tokens=5, temperature=0.9, best_of=2, details=True, decoder_input_details=True
        )
        status, raw = _answer(endpoint, {**SAMPLED, "best_of": 2, "seed": 1})
    (other,) = out.details.best_of_sequences
    total = sum(token.logprob for token in out.details.tokens)
    assert total >= sum(token.logprob for token in other.tokens)
    assert out.generated_text == "".join(token.text for token in out.details.tokens)
    for prefill in (out.details.prefill, other.prefill):
        _check_prefill([dict(token) for token in prefill], reference, "logprob")
    assert status == 200 and isinstance(raw, list) and len(raw) == 1 and "best_of_sequences" in raw[0]["details"]


@pytest.mark.parametrize(
    "parameters,stream,field,fragment",
    [
        ({"n": 2}, True, "parameters.n", "not streamed"),
        ({"best_of": 2}, False, "parameters.best_of", "needs sampling"),
        ({"decoder_input_details": True}, True, "parameters.decoder_input_details", "not when streaming tokens"),
    ],
)
def test_what_cannot_be_answered_is_refused_by_name(
    lmi: Any, parameters: dict, stream: bool, field: str, fragment: str
) -> None:
    status, body = _answer(lmi, {"max_new_tokens": 2, **parameters}, stream)
    assert status == 400 and field in json.dumps(body) and fragment in json.dumps(body), body
