"""OpenAI chat bodies at the door: what each field becomes, and a 400 naming the field for each thing refused."""

from __future__ import annotations

import pytest
from lmistream.chat import chat_request, is_chat
from lmistream.errors import InvalidRequest
from lmistream.params import parse_parameters

USER = [{"role": "user", "content": "Hi"}]


def chat(**fields):
    return chat_request({"messages": USER, **fields}, default_max_new_tokens=30)


def test_openai_defaults_sample_at_temperature_one_and_zero_is_greedy() -> None:
    request = chat()
    assert request.api == "chat" and request.stream is False and request.inputs == ""
    assert request.params.do_sample and request.params.temperature == 1.0 and request.params.max_new_tokens == 30
    greedy = chat(temperature=0).params
    assert not greedy.do_sample and greedy.temperature == 1.0


def test_fields_map_onto_generation_parameters() -> None:
    request = chat(
        model="m",
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        stop="###",
        seed=3,
        n=1,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
        user="u",
        frequency_penalty=0.5,
        presence_penalty=-1,
    )
    params = request.params
    assert (params.max_new_tokens, params.temperature, params.top_p, params.stop_sequences, params.seed) == (
        7,
        0.5,
        0.9,
        ("###",),
        3,
    )
    assert (params.frequency_penalty, params.presence_penalty) == (0.5, -1.0)
    assert params.logprobs and request.chat.logprobs and request.chat.include_usage and request.chat.model == "m"
    assert chat(max_tokens=7, max_completion_tokens=9).params.max_new_tokens == 9  # the newer name wins


def test_messages_keep_their_order_and_text_parts_are_joined() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}]},
        {"role": "assistant", "content": "Hi.", "name": "bot"},
    ]
    request = chat_request({"messages": messages}, 30)
    assert request.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, you"},
        {"role": "assistant", "content": "Hi."},
    )
    assert is_chat({"messages": []}) and not is_chat({"inputs": "x"})


@pytest.mark.parametrize(
    "fields,param,fragment",
    [
        ({"messages": []}, "messages", "messages must be a non-empty list"),
        ({"messages": "hi"}, "messages", "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of system"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "must be a string or a list"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
            "reads text only",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            "on an assistant message",
        ),
        ({"messages": [{"role": "user", "content": "a\ud800"}]}, "messages[0].content", "lone surrogate"),
        ({"temperature": 2.5}, "temperature", "temperature must be in [0, 2], got 2.5"),
        ({"temperature": "hot"}, "temperature", "temperature must be a number"),
        ({"top_p": 0}, "top_p", "top_p must be in (0, 1]"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be between 1 and 1000000"),
        ({"max_completion_tokens": True}, "max_completion_tokens", "must be an integer"),
        ({"n": 2, "stream": True}, "n", "n > 1 is answered in one body, not streamed"),
        ({"n": 0}, "n", "between 1 and 16"),
        ({"top_logprobs": 5}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "between 0 and 20"),
        ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be in [-2, 2], got 2.5"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop holds 5 entries; at most 4"),
        ({"stream": "yes"}, "stream", "stream must be true or false"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream is true"),
        ({"stream": True, "stream_options": {"usage": True}}, "stream_options", "include_usage"),
        ({"tools": []}, "tools", "tools must be a non-empty list"),
        ({"tool_choice": "required"}, "tool_choice", "tool_choice needs tools"),
        ({"model": 3}, "model", "model must be a string"),
    ],
)
def test_each_refusal_names_its_field(fields, param, fragment) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request({"messages": USER, **fields}, 30)
    assert caught.value.param == param and fragment in caught.value.message, caught.value.message
    assert caught.value.status == 400


def test_tgi_parameter_names_and_neutral_values_are_accepted() -> None:
    params = parse_parameters(
        {
            "stop": ["\n\n"],
            "watermark": False,
            "decoder_input_details": False,
            "best_of": 1,
            "top_n_tokens": 0,
            "typical_p": 1.0,
            "details": True,
        },
        30,
    )
    assert params.stop_sequences == ("\n\n",) and params.details


@pytest.mark.parametrize(
    "raw,param",
    [
        ({"watermark": True}, "parameters.watermark"),
        ({"top_n_tokens": 21}, "parameters.top_n_tokens"),
        ({"best_of": 2}, "parameters.best_of"),
        ({"decoder_input_details": 0}, "parameters.decoder_input_details"),
        ({"stop": "a", "stop_sequences": ["b"]}, "parameters.stop"),
    ],
)
def test_tgi_settings_this_handler_cannot_honour_are_refused(raw, param) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_parameters(raw, 30)
    assert caught.value.param == param, caught.value.message
