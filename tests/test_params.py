"""Request validation at the door: each bad field gets a 400 naming the field and its range."""

import json

import pytest
from lmistream.errors import InvalidRequest
from lmistream.params import parse_request


def parse(payload, content_type="application/json"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_request(body, content_type, default_max_new_tokens=30)


def test_defaults_and_normalisation():
    req = parse({"inputs": ["hi"], "parameters": {"stop_sequences": "###", "max_new_tokens": 5.0}, "stream": True})
    assert req.inputs == "hi" and req.stream is True
    assert req.params.max_new_tokens == 5 and req.params.stop_sequences == ("###",)
    assert parse({"inputs": "x"}).params.max_new_tokens == 30


def test_text_plain_body_is_the_prompt():
    assert parse(b"What is 2+2?", "text/plain; charset=utf-8").inputs == "What is 2+2?"


@pytest.mark.parametrize(
    "payload,field",
    [
        (b"{not json", "JSON"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": 3}, "inputs"),
        ({"prompt": "x"}, "prompt"),
        ({"inputs": "x", "stream": "yes"}, "stream"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": "5"}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"temperature": 0, "do_sample": True}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"temperature": -1}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"min_p": 1.5}}, "parameters.min_p"),
        ({"inputs": "x", "parameters": {"frequency_penalty": 3}}, "parameters.frequency_penalty"),
        ({"inputs": "x", "parameters": {"presence_penalty": "1"}}, "parameters.presence_penalty"),
        ({"inputs": "x", "parameters": {"stop_token_ids": 2}}, "parameters.stop_token_ids"),
        ({"inputs": "x", "parameters": {"stop_token_ids": [-1]}}, "parameters.stop_token_ids"),
        ({"inputs": "x", "parameters": {"stop_token_ids": [True]}}, "parameters.stop_token_ids"),
        ({"inputs": "x", "parameters": {"ignore_eos": 1}}, "parameters.ignore_eos"),
        ({"inputs": "x", "parameters": {"ignore_eos": True, "ignore_eos_token": True}}, "parameters.ignore_eos"),
        ({"inputs": "x", "parameters": {"truncate": 0}}, "parameters.truncate"),
        ({"inputs": "x", "parameters": {"temperature": float("nan")}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"top_p": 1.5}}, "parameters.top_p"),
        ({"inputs": "x", "parameters": {"top_k": -1}}, "parameters.top_k"),
        ({"inputs": "x", "parameters": {"do_sample": "true"}}, "parameters.do_sample"),
        ({"inputs": "x", "parameters": {"stop_sequences": [""]}}, "parameters.stop_sequences"),
        ({"inputs": "x", "parameters": {"stop_sequences": ["a"] * 17}}, "parameters.stop_sequences"),
        ({"inputs": "x", "parameters": {"repetition_penalty": 0}}, "parameters.repetition_penalty"),
        ({"inputs": "x", "parameters": {"seed": -1, "do_sample": True}}, "parameters.seed"),
        ({"inputs": "x", "parameters": {"num_beams": 2}}, "num_beams"),
    ],
)
def test_bad_fields_are_named(payload, field):
    with pytest.raises(InvalidRequest) as info:
        parse(payload)
    assert field in info.value.message and info.value.status == 400


def test_range_is_in_the_message():
    with pytest.raises(InvalidRequest, match=r"parameters.top_p must be in \(0, 1\], got 1.5"):
        parse({"inputs": "x", "parameters": {"top_p": 1.5}})


@pytest.mark.parametrize(
    "parameters,sampled",
    [
        ({}, False),
        ({"temperature": 0.7}, True),
        ({"top_p": 0.9}, True),
        ({"top_k": 5}, True),
        ({"min_p": 0.1}, True),
        ({"temperature": 0}, False),
        ({"temperature": 0.7, "do_sample": False}, False),
        ({"do_sample": True}, True),
        ({"repetition_penalty": 1.2, "seed": 3}, False),
    ],
)
def test_sampling_parameters_without_do_sample_sample_as_on_djl(parameters, sampled):
    params = parse({"inputs": "x", "parameters": parameters}).params
    assert params.do_sample is sampled and params.temperature > 0


def test_vllm_and_tgi_parameters_are_read():
    params = parse(
        {
            "inputs": "x",
            "parameters": {
                "min_p": 0.05,
                "frequency_penalty": 0.5,
                "presence_penalty": -0.25,
                "stop_token_ids": [2, 7],
                "ignore_eos_token": True,
                "truncate": 12,
            },
        }
    ).params
    assert (params.min_p, params.frequency_penalty, params.presence_penalty) == (0.05, 0.5, -0.25)
    assert params.stop_token_ids == (2, 7) and params.ignore_eos and params.truncate == 12
    assert parse({"inputs": "x", "parameters": {"ignore_eos": True}}).params.ignore_eos


def test_tgis_best_of_and_decoder_input_details_and_djls_n_are_read():
    params = parse({"inputs": "x", "parameters": {"decoder_input_details": True, "best_of": 3, "temperature": 0.7}})
    assert params.params.prompt_logprobs and params.params.best_of == 3 and params.params.do_sample
    assert parse({"inputs": "x", "parameters": {"n": 4}}).params.n == 4


@pytest.mark.parametrize(
    "parameters,field,fragment",
    [
        ({"best_of": 2}, "parameters.best_of", "needs sampling"),
        ({"best_of": 2, "n": 2, "do_sample": True}, "parameters.best_of", "not both"),
        ({"n": 17}, "parameters.n", "between 1 and 16"),
        ({"best_of": 0, "do_sample": True}, "parameters.best_of", "between 1 and 16"),
    ],
)
def test_several_sequences_follow_tgis_rules(parameters, field, fragment):
    with pytest.raises(InvalidRequest) as caught:
        parse({"inputs": "x", "parameters": parameters})
    assert caught.value.param == field and fragment in caught.value.message, caught.value.message
