"""`lmi invoke` against the runtime API test server, through the real boto3 client."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from lmikit.cli import main
from lmikit.launch import free_port
from runtime_support import REGION, FakeResponse, RuntimeServer

pytestmark = pytest.mark.usefixtures("per_test_timeout")

LINES = [b'{"outputs": [" one"]}\n', b'{"outputs": [" two"]}\n', b'{"outputs": [" three"]}\n']


@pytest.fixture
def server(runtime_server: RuntimeServer, aws_env: None) -> RuntimeServer:
    return runtime_server


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["invoke", *args])


def test_streams_tokens_and_prints_a_summary(server: RuntimeServer) -> None:
    server.container.response = FakeResponse([(0.0, LINES[0]), (0.05, LINES[1]), (0.05, LINES[2])])
    result = invoke("Hello", "--endpoint-url", server.url, "--max-new-tokens", "3", "--temperature", "0.5")
    assert result.exit_code == 0, result.output
    assert result.stdout == " one two three\n"
    assert result.stderr.startswith("TTFT ") and ", 3 tokens, " in result.stderr
    headers, body = server.container.requests[0]
    assert json.loads(body) == {
        "inputs": "Hello",
        "parameters": {"max_new_tokens": 3, "temperature": 0.5},
        "stream": True,
    }
    assert headers["Content-Type"] == "application/json"


def test_forced_format(server: RuntimeServer) -> None:
    server.container.response = FakeResponse([(0.0, b'data:{"token": {"text": " hi"}}\n\n')], headers={})
    result = invoke("Hello", "--endpoint-url", server.url, "--format", "sse")
    assert (result.exit_code, result.stdout) == (0, " hi\n")


def test_no_stream_prints_the_generated_text(server: RuntimeServer) -> None:
    server.container.response = FakeResponse(
        [(0.0, b'{"generated_text": " whole answer"}')], headers={"Content-Type": "application/json"}
    )
    result = invoke("Hello", "--endpoint-url", server.url, "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == " whole answer\n"
    assert "stream" not in json.loads(server.container.requests[0][1])


def test_unknown_endpoint_is_a_one_line_error(server: RuntimeServer) -> None:
    result = invoke("Hello", "--endpoint-url", server.url, "--endpoint", "missing")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "(ValidationError)" in result.stderr and "Endpoint missing of account" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_model_error(server: RuntimeServer) -> None:
    server.container.response = FakeResponse([(0.0, b"bad request")], status=400)
    result = invoke("Hello", "--endpoint-url", server.url)
    assert result.exit_code == 1
    assert "(ModelError)" in result.stderr and "Received client error (400)" in result.stderr


def test_broken_stream_keeps_the_tokens_and_fails(server: RuntimeServer) -> None:
    server.container.response = FakeResponse([(0.0, LINES[0]), (0.0, RuntimeError("died"))])
    result = invoke("Hello", "--endpoint-url", server.url)
    assert result.exit_code == 1
    assert result.stdout == " one\n"
    assert "ModelStreamError: " in result.stderr


def test_unreachable_endpoint(aws_env: None) -> None:
    result = invoke("Hello", "--endpoint-url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "Could not connect to the endpoint URL" in result.stderr


def test_standard_aws_chain_with_endpoint_env(server: RuntimeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = invoke("Hello")
    assert (result.exit_code, result.stdout) == (0, "Hi\n")


CHUNKS = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":" Paris"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
]


def test_chat_sends_an_openai_chat_body_and_prints_its_deltas(server: RuntimeServer) -> None:
    server.container.response = FakeResponse(
        [(0.0, chunk) for chunk in CHUNKS], headers={"Content-Type": "text/event-stream"}
    )
    result = invoke(
        "Capital of France?",
        "--endpoint-url",
        server.url,
        "--chat",
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == " Paris\n" and ", 1 tokens, " in result.stderr
    _, body = server.container.requests[0]
    assert json.loads(body) == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": True,
    }


def test_chat_without_streaming_prints_the_completions_message(server: RuntimeServer) -> None:
    completion = {
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Paris."}}],
    }
    server.container.response = FakeResponse(
        [(0.0, json.dumps(completion).encode())], headers={"Content-Type": "application/json"}
    )
    result = invoke("Capital of France?", "--endpoint-url", server.url, "--chat", "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Paris.\n"
    assert json.loads(server.container.requests[0][1]) == {
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 256,
    }


def test_system_needs_chat(server: RuntimeServer) -> None:
    result = invoke("Hi", "--endpoint-url", server.url, "--system", "Be brief.")
    assert result.exit_code == 2 and "--system needs --chat" in result.output
