"""The chat page's pure parts: the chat messages or the prompt built from the history, their parameters, the target."""

from __future__ import annotations

import json

import pytest
from lmikit.chat.conversation import (
    ASSISTANT,
    PROMPT,
    STOP_SEQUENCE,
    USER,
    ChatRequest,
    Message,
    Settings,
    answered,
    build_request,
    finished_answer,
    json_setting,
    transcript,
)
from lmikit.chat.target import ENDPOINT_NAME_VARIABLE, ENDPOINT_URL_VARIABLE, LOCAL_URL, ChatTarget
from lmistream.adapters import AdapterRegistry, AdapterSpec, requested_adapter
from lmistream.chat import chat_request
from lmistream.params import parse_request

HISTORY = [
    Message(USER, "What is the capital of France?"),
    Message(ASSISTANT, "Paris."),
    Message(USER, "And of Italy?"),
]


def test_the_transcript_is_the_system_prompt_then_the_turns_ending_with_the_assistant_speaking() -> None:
    assert transcript(HISTORY, "Be brief.") == (
        "Be brief.\n\nUser: What is the capital of France?\nAssistant: Paris.\nUser: And of Italy?\nAssistant:"
    )
    assert transcript(HISTORY[:1], "  ") == "User: What is the capital of France?\nAssistant:"


def test_a_failed_answer_and_its_question_stay_out_of_later_prompts() -> None:
    history = [
        Message(USER, "Hello"),
        Message(ASSISTANT, "Hi there", error="The endpoint cut the answer short"),
        *HISTORY,
    ]
    assert answered(history) == HISTORY
    assert "Hello" not in build_request(history, Settings(), PROMPT).prompt
    assert all(message["content"] != "Hello" for message in build_request(history, Settings()).messages)


def test_chat_mode_sends_the_system_prompt_and_the_turns_as_messages() -> None:
    request = build_request(HISTORY, Settings(max_new_tokens=16, temperature=0, system_prompt=" Be brief. "))
    assert request == ChatRequest(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        {"max_tokens": 16, "temperature": 0},
    )
    assert build_request(HISTORY[:1], Settings(system_prompt="")).messages == [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    assert Settings(temperature=0.7, top_p=0.9).chat_options() == {"max_tokens": 256, "temperature": 0.7, "top_p": 0.9}


@pytest.mark.parametrize("settings", [Settings(temperature=0), Settings(temperature=1.3, top_p=0.8), Settings()])
def test_the_handler_accepts_the_chat_request_as_built(settings: Settings) -> None:
    request = build_request(HISTORY, settings)
    parsed = chat_request({"messages": request.messages, **request.options, "stream": True}, 256)
    assert [m["content"] for m in parsed.messages][-1] == "And of Italy?"
    assert parsed.params.do_sample is (settings.temperature > 0) and parsed.params.max_new_tokens == 256


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_the_sidebars_tools_and_json_schema_reach_the_handler_as_a_constraint() -> None:
    for settings, field in (
        (Settings(tools=[WEATHER], tool_choice="required"), "tools[0].function.parameters"),
        (Settings(json_schema={"type": "object"}), "response_format.json_schema.schema"),
    ):
        request = build_request(HISTORY, settings)
        parsed = chat_request({"messages": request.messages, **request.options, "stream": True}, 256)
        assert parsed.params.constraint is not None and parsed.params.constraint.field == field
    assert "tools" not in Settings(tool_choice="required").chat_options()
    assert json_setting("  ", list, "Tools") == (None, None)
    assert json_setting("[1]", list, "Tools") == ([1], None)
    assert json_setting("{", list, "Tools")[1].startswith("Tools is not JSON: ")
    assert json_setting("[]", dict, "The JSON schema") == (None, "The JSON schema must be a JSON object")


def test_greedy_settings_send_no_sampling_parameters() -> None:
    assert Settings(max_new_tokens=32, temperature=0, top_p=0.5).parameters() == {
        "max_new_tokens": 32,
        "stop": [STOP_SEQUENCE],
    }


@pytest.mark.parametrize(("top_p", "sent"), [(0.9, {"top_p": 0.9}), (1.0, {})])
def test_sampling_settings_send_temperature_and_a_top_p_below_one(top_p: float, sent: dict) -> None:
    parameters = Settings(max_new_tokens=8, temperature=0.7, top_p=top_p).parameters()
    assert parameters == {"max_new_tokens": 8, "stop": [STOP_SEQUENCE], "do_sample": True, "temperature": 0.7, **sent}


@pytest.mark.parametrize("settings", [Settings(temperature=0), Settings(temperature=1.3, top_p=0.8), Settings()])
def test_the_handler_accepts_the_request_as_built(settings: Settings) -> None:
    request = build_request(HISTORY, settings, PROMPT)
    body = json.dumps({"inputs": request.prompt, "parameters": request.parameters, "stream": True}).encode()
    parsed = parse_request(body, "application/json", 256)
    assert parsed.inputs == request.prompt
    assert parsed.params.stop_sequences == (STOP_SEQUENCE,)
    assert parsed.params.do_sample is (settings.temperature > 0)


@pytest.mark.parametrize(("mode", "adapter"), [("chat", "summarize"), (PROMPT, "summarize"), ("chat", None)])
def test_the_handler_serves_the_adapter_picked_in_either_mode(mode: str, adapter: str | None) -> None:
    registry = AdapterRegistry(True, [AdapterSpec("summarize", "/a", 4, 16.0, ("q_proj",))])
    request = build_request(HISTORY, Settings(adapter=adapter), mode)
    if isinstance(request, ChatRequest):
        body = {"messages": request.messages, **request.options}
    else:
        body = {"inputs": request.prompt, "parameters": request.parameters}
    assert requested_adapter(body, None, registry, chat=mode == "chat")[1] == adapter


def test_a_sagemaker_endpoint_or_a_url_that_does_not_answer_lists_no_models() -> None:
    assert ChatTarget("my-llm", None).models() == []
    assert ChatTarget("local", "http://127.0.0.1:9").models() == []


def test_an_echoed_stop_sequence_and_surrounding_space_leave_the_answer() -> None:
    assert finished_answer(" Rome.\nUser:") == "Rome."
    assert finished_answer(" Rome.\n") == "Rome."


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ((None, None), {}, ChatTarget("local", LOCAL_URL)),
        ((None, None), {ENDPOINT_NAME_VARIABLE: "my-llm"}, ChatTarget("my-llm", None)),
        (("other", None), {ENDPOINT_NAME_VARIABLE: "my-llm"}, ChatTarget("other", None)),
        ((None, "http://127.0.0.1:9000"), {}, ChatTarget("local", "http://127.0.0.1:9000")),
        (("named", "http://127.0.0.1:9000"), {}, ChatTarget("named", "http://127.0.0.1:9000")),
        ((None, None), {ENDPOINT_URL_VARIABLE: "http://127.0.0.1:9000"}, ChatTarget("local", "http://127.0.0.1:9000")),
    ],
)
def test_the_target_comes_from_the_flags_then_the_environment_then_the_local_default(
    flags: tuple, environ: dict, expected: ChatTarget
) -> None:
    target = ChatTarget.resolve(*flags, environ)
    assert target == expected
    assert ChatTarget.resolve(None, None, target.environment()) == target, "the page resolves the same target"
