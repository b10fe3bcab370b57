"""One chat answer through real boto3 and the runtime API's wire format: LMI jsonlines and TGI SSE streams, and
every failure (missing endpoint, refused request, in-band error, cut stream, unreachable, read timeout) as one
readable line that keeps the partial text."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from functools import partial

import boto3
import pytest
from botocore.config import Config
from lmikit.chat.answer import Answer, readable_error
from lmikit.chat.conversation import ASSISTANT, PROMPT, USER, Message, Settings, ToolCall, build_request
from lmikit.client.runtime_client import runtime_client
from lmikit.launch import free_port
from lmikit.server.eventstream import exception_frame, payload_part
from runtime_support import FakeResponse, client_for

QUESTION = [Message(USER, "What is the capital of France?")]
REQUEST = build_request(QUESTION, Settings(temperature=0), PROMPT)
CHAT_REQUEST = build_request(QUESTION, Settings(temperature=0))
CHAT_CHUNKS = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":" Paris"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"."},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
]
TGI_EVENTS = [
    b'data:{"token": {"id": 1, "text": " Paris", "special": false}, "generated_text": null}\n\n',
    b'data:{"token": {"id": 2, "text": ".", "special": false}, "generated_text": null}\n\n',
    b'data:{"token": {"id": 0, "text": "<|im_end|>", "special": true}, "generated_text": " Paris."}\n\n',
]


def _read(answer: Answer) -> list[str]:
    return list(answer.pieces())


def test_a_jsonlines_answer_streams_its_pieces_and_records_its_timings(runtime_server) -> None:
    runtime_server.container.response = FakeResponse(
        [(0.0, b'{"outputs": [" Paris"]}\n'), (0.05, b'{"outputs": ["."]}\n')]
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", REQUEST)
    assert _read(answer) == [" Paris", "."]
    assert answer.message() == Message(ASSISTANT, "Paris.")
    assert answer.stats.tokens == 2 and answer.stats.time_to_first_token > 0 and answer.stats.tokens_per_second > 0
    [(_, body)] = runtime_server.container.requests
    assert json.loads(body) == {"inputs": REQUEST.prompt, "parameters": REQUEST.parameters, "stream": True}


def test_a_chat_answer_sends_messages_and_streams_the_deltas(runtime_server) -> None:
    runtime_server.container.response = FakeResponse(
        [(0.0, chunk) for chunk in CHAT_CHUNKS], headers={"Content-Type": "text/event-stream"}
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", CHAT_REQUEST)
    assert _read(answer) == [" Paris", "."] and answer.message() == Message(ASSISTANT, "Paris.")
    [(_, body)] = runtime_server.container.requests
    assert json.loads(body) == {
        "messages": [
            {"role": "system", "content": Settings().system_prompt},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 256,
        "temperature": 0,
        "stream": True,
    }


def test_a_streamed_tool_call_is_put_together_for_the_message(runtime_server) -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}
    deltas = [{"role": "assistant", "content": None}, {"tool_calls": [first]}]
    deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": 1}'}}]})
    chunks = [
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n" for delta in deltas
    ]
    chunks.append(CHAT_CHUNKS[-1].replace(b'"stop"', b'"tool_calls"'))
    runtime_server.container.response = FakeResponse(
        [(0.0, chunk) for chunk in chunks], headers={"Content-Type": "text/event-stream"}
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", CHAT_REQUEST)
    assert _read(answer) == []
    assert answer.message() == Message(ASSISTANT, "", None, (ToolCall("get_weather", '{"city": 1}'),))


def test_an_endpoint_that_refuses_chat_bodies_is_told_apart(runtime_server) -> None:
    refusal = b'{"code": 400, "error": "unknown top-level field \'messages\'; allowed: inputs, parameters, stream"}'
    runtime_server.container.response = FakeResponse(
        [(0.0, refusal)], status=400, headers={"Content-Type": "application/json"}
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", CHAT_REQUEST)
    assert _read(answer) == [] and answer.refused
    runtime_server.container.response = FakeResponse(
        [(0.0, b'{"code": 424, "error": "engine broke"}\n')], status=424, headers={"Content-Type": "application/json"}
    )
    failed = Answer(partial(client_for, runtime_server.url), "local", CHAT_REQUEST)
    assert _read(failed) == [] and failed.error and not failed.refused, "a 424 is a failure, not a refusal"


def test_a_tgi_sse_answer_is_read_from_its_content_type(runtime_server) -> None:
    runtime_server.container.response = FakeResponse(
        [(0.0, event) for event in TGI_EVENTS], headers={"Content-Type": "text/event-stream"}
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", REQUEST)
    assert _read(answer) == [" Paris", "."], "the special end token is not shown"
    assert answer.error is None and answer.message().content == "Paris."


def test_an_unknown_endpoint_is_a_readable_error(runtime_server) -> None:
    answer = Answer(partial(client_for, runtime_server.url), "no-such-endpoint", REQUEST)
    assert _read(answer) == []
    assert answer.error.startswith("The endpoint refused the request (ValidationError): ")
    assert "no-such-endpoint" in answer.error and answer.stats is None
    assert answer.message() == Message(ASSISTANT, "", answer.error)


def test_a_request_the_model_refuses_shows_its_status_and_message(runtime_server) -> None:
    refusal = b'{"code": 400, "error": "parameters.top_p must be in (0, 1], got 7"}'
    runtime_server.container.response = FakeResponse(
        [(0.0, refusal)], status=400, headers={"Content-Type": "application/json"}
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", REQUEST)
    _read(answer)
    assert answer.error.startswith("The model refused the request (HTTP 400): ")
    assert "parameters.top_p must be in (0, 1], got 7" in answer.error


def test_an_in_band_error_keeps_the_text_before_it(runtime_server) -> None:
    runtime_server.container.response = FakeResponse(
        [(0.0, b'{"outputs": [" Par"]}\n'), (0.0, b'{"code": 424, "error": "CUDA out of memory"}\n')]
    )
    answer = Answer(partial(client_for, runtime_server.url), "local", REQUEST)
    assert _read(answer) == [" Par"]
    assert answer.message() == Message(ASSISTANT, "Par", "The model failed while answering: CUDA out of memory")


def test_a_stream_the_endpoint_cuts_short_names_the_reason(frame_server) -> None:
    frame_server.chunks = [
        payload_part(b'{"outputs": [" Paris"]}\n'),
        exception_frame(
            "ModelStreamError", "Your model stream exceeded the allotted time.", "ModelInvocationTimeExceeded"
        ),
    ]
    answer = Answer(partial(client_for, frame_server.url), "local", REQUEST)
    assert _read(answer) == [" Paris"]
    # botocore's EventStreamError carries the frame's type and message, not its ErrorCode
    assert answer.error == (
        "The endpoint cut the answer short (ModelStreamError): Your model stream exceeded the allotted time."
    )
    assert answer.stats.tokens == 1


def test_an_endpoint_that_is_not_running_is_a_readable_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    answer = Answer(partial(client_for, url), "local", REQUEST)
    assert _read(answer) == []
    route = f"{url}/endpoints/local/invocations-response-stream"
    assert answer.error == f"Cannot reach the endpoint at {route}: is it running?"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener completes connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield listener.getsockname()[1]


def test_an_endpoint_that_does_not_answer_in_time_is_a_readable_error(silent_port: int) -> None:
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=f"http://127.0.0.1:{silent_port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, read_timeout=0.3),
    )
    answer = Answer(lambda: client, "local", REQUEST)
    assert _read(answer) == []
    assert answer.error == "The endpoint did not answer in time (read timeout); try again or ask for fewer tokens."


def test_a_client_that_cannot_be_made_is_a_readable_error(aws_env) -> None:
    answer = Answer(runtime_client, "my-endpoint", REQUEST)  # SageMaker, with no AWS region configured
    assert _read(answer) == []
    assert answer.error == "You must specify a region."


def test_errors_are_one_line() -> None:
    assert readable_error(ValueError("first line\n  second line")) == "first line second line"
