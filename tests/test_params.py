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
        ({"inputs": "x", "parameters": {"temperature": 0}}, "parameters.temperature"),
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
