"""Golden bytes of every formatter for one scripted token sequence with multi-byte text and a stop sequence."""

import pytest
from fakes import EOS, ByteTokenizer
from lmistream.engine import EngineUpdate
from lmistream.formatters import REGISTRY, Custom, StreamEvent
from lmistream.generation import Generation
from lmistream.params import GenerationParams, GenerationRequest

TOK = ByteTokenizer()
# " é" then "!" then EOS: "é" is two bytes, so it arrives as two tokens
TOKENS = [32, 0xC3, 0xA9, 33, EOS]


def run(fmt, tokens=TOKENS, **params):
    request = GenerationRequest("Hi", GenerationParams(max_new_tokens=10, **params))
    generation = Generation("r", request, TOK, fmt)
    outs = []
    for i, token in enumerate(tokens):
        outs.append(generation.absorb([EngineUpdate("r", (token,), (-0.5,), finished=i == len(tokens) - 1)]))
    return outs


def test_lmi_023_jsonlines():
    outs = run(REGISTRY[("jsonlines", "0.23")]())
    assert outs == ['{"outputs": [" "]}\n', "", '{"outputs": ["\\u00e9"]}\n', '{"outputs": ["!"]}\n', ""]


def test_lmi_023_json_is_one_object_in_pieces():
    outs = run(REGISTRY[("json", "0.23")]())
    assert outs == ['{"generated_text": " ', "", "\\u00e9", "!", '"}']
    assert "".join(outs) == '{"generated_text": " \\u00e9!"}'


def test_newest_jsonlines_with_details():
    outs = run(REGISTRY[("jsonlines", "newest")](), details=True)
    assert outs == [
        '{"token": {"id": 32, "text": " ", "log_prob": -0.5}}\n',
        '{"token": {"id": 195, "text": "", "log_prob": -0.5}}\n',
        '{"token": {"id": 169, "text": "é", "log_prob": -0.5}}\n',
        '{"token": {"id": 33, "text": "!", "log_prob": -0.5}}\n',
        (
            '{"token": {"id": 256, "text": "", "log_prob": -0.5, "special_token": true}, "generated_text": " é!", '
            '"details": {"finish_reason": "eos_token", "generated_tokens": 5, "inputs": "Hi"}}\n'
        ),
    ]


def test_newest_json_only_at_the_end():
    outs = run(REGISTRY[("json", "newest")](), return_full_text=True)
    assert outs == ["", "", "", "", '{"generated_text": "Hi é!"}']


def test_tgi_sse():
    outs = run(REGISTRY[("sse", "newest")]())
    assert (
        outs[0]
        == 'data:{"token":{"id":32,"text":" ","logprob":-0.5,"special":false},"generated_text":null,"details":null}\n\n'
    )
    assert (
        outs[-1]
        == 'data:{"token":{"id":256,"text":"","logprob":-0.5,"special":true},"generated_text":" é!","details":null}\n\n'
    )


def test_none_is_raw_text():
    assert "".join(run(REGISTRY[("none", "newest")]())) == " é!"


def test_stop_sequence_is_held_back_and_ends_with_its_reason():
    tokens = TOK.ids("ab##cd") + [EOS]
    outs = run(REGISTRY[("jsonlines", "newest")](), tokens=tokens, stop_sequences=("##",), details=True)
    # one character (len("##") - 1) is always held back until the next token shows it is no stop
    assert [line[:40] for line in outs[:3]] == [
        '{"token": {"id": 97, "text": "", "log_pr',
        '{"token": {"id": 98, "text": "a", "log_p',
        '{"token": {"id": 35, "text": "b", "log_p',
    ]
    assert outs[3].endswith(
        '"generated_text": "ab", "details": {"finish_reason": "stop_sequence", '
        '"generated_tokens": 4, "inputs": "Hi"}}\n'
    )
    assert outs[4:] == ["", "", ""]


def test_length_finish_reason():
    outs = run(REGISTRY[("sse", "newest")](), tokens=TOK.ids("abc"), details=True)
    assert outs[-1].endswith(
        '"generated_text":"abc","details":{"finish_reason":"length","generated_tokens":3,"seed":null}}\n\n'
    )


def test_custom_formatter_sees_each_event():
    def shout(event: StreamEvent) -> str:
        return event.text.upper() + ("|END" if event.last else "")

    assert "".join(run(Custom(shout))) == " É!|END"


@pytest.mark.parametrize(
    "name,dialect,expected",
    [
        ("jsonlines", "0.23", '{"code": 424, "error": "boom"}\n'),
        ("sse", "newest", 'data:{"error":"boom","error_type":"generation","code":424}\n\n'),
        (
            "jsonlines",
            "newest",
            '{"token": null, "error_msg": "boom", "code": 424, "details": {"finish_reason": "error"}}\n',
        ),
    ],
)
def test_mid_stream_errors_are_in_band(name, dialect, expected):
    request = GenerationRequest("Hi", GenerationParams(max_new_tokens=10))
    generation = Generation("r", request, TOK, REGISTRY[(name, dialect)]())
    generation.absorb([EngineUpdate("r", (97,))])
    assert generation.absorb([EngineUpdate("r", finished=True, error="boom")]) == expected
    assert generation.finished
