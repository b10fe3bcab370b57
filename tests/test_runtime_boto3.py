"""The runtime API as an unmodified boto3 client and the SageMaker SDK v2 see it, over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EventStreamError
from lmikit.client import invoke_stream
from runtime_support import ENDPOINT, REGION, FakeResponse, RuntimeServer, client_for

pytestmark = pytest.mark.usefixtures("per_test_timeout")

LINES = [b'{"outputs": [" one"]}\n', b'{"outputs": [" two"]}\n', b'{"outputs": [" three"]}\n']


def stream(client: Any, endpoint: str = ENDPOINT, **request: Any) -> dict[str, Any]:
    return client.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=b"{}", **request)


def parts(response: dict[str, Any]) -> list[bytes]:
    return [event["PayloadPart"]["Bytes"] for event in response["Body"]]


def test_payload_parts_arrive_as_the_container_produces_them(runtime_server: RuntimeServer) -> None:
    second, third = threading.Event(), threading.Event()
    runtime_server.container.response = FakeResponse([(0.0, LINES[0]), (second, LINES[1]), (third, LINES[2])])
    response = stream(client_for(runtime_server.url))
    events = iter(response["Body"])
    # each part reaches the client while the container still holds the next one back (a server that buffered the
    # body would block here until the per-test timeout)
    assert next(events)["PayloadPart"]["Bytes"] == LINES[0]
    second.set()
    assert next(events)["PayloadPart"]["Bytes"] == LINES[1]
    third.set()
    assert [event["PayloadPart"]["Bytes"] for event in events] == [LINES[2]]
    assert response["ContentType"] == "application/jsonlines"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["ResponseMetadata"]["RequestId"]


def test_request_headers_reach_the_container(runtime_server: RuntimeServer) -> None:
    runtime_server.container.response.headers["X-Amzn-SageMaker-Custom-Attributes"] = "seen=1"
    response = stream(
        client_for(runtime_server.url),
        ContentType="application/json",
        Accept="application/jsonlines",
        CustomAttributes="temperature=0.5",
    )
    assert parts(response) == [b'{"outputs": ["Hi"]}\n']
    assert response["CustomAttributes"] == "seen=1"
    headers, body = runtime_server.container.requests[0]
    assert headers == {
        "Content-Type": "application/json",
        "Accept": "application/jsonlines",
        "X-Amzn-SageMaker-Custom-Attributes": "temperature=0.5",
    }
    assert body == b"{}"


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"EndpointName": "missing"}, "Endpoint missing of account 123456789012 not found."),
        ({"Body": b"x" * (6 * 1024 * 1024 + 1)}, "Member must have length less than or equal to 6291456"),
        ({"CustomAttributes": "a" * 1025}, "at 'customAttributes' failed to satisfy constraint"),
        ({"EndpointName": "bad_name!"}, "at 'endpointName' failed to satisfy constraint"),
    ],
)
def test_invalid_requests_raise_validation_error(
    runtime_server: RuntimeServer, request_args: dict[str, Any], message: str
) -> None:
    client = client_for(runtime_server.url)
    with pytest.raises(client.exceptions.ValidationError) as caught:
        client.invoke_endpoint_with_response_stream(**({"EndpointName": ENDPOINT, "Body": b"{}"} | request_args))
    assert message in caught.value.response["Error"]["Message"]
    assert runtime_server.container.requests == []


@pytest.mark.parametrize(("status", "error_code"), [(400, "CLIENT_ERROR_FROM_MODEL"), (503, "SERVER_ERROR_FROM_MODEL")])
def test_container_error_raises_model_error(runtime_server: RuntimeServer, status: int, error_code: str) -> None:
    runtime_server.container.response = FakeResponse([(0.0, b'{"error": "bad input"}')], status=status)
    client = client_for(runtime_server.url)
    with pytest.raises(client.exceptions.ModelError) as caught:
        stream(client)
    error = caught.value.response
    assert error["OriginalStatusCode"] == status
    assert error["OriginalMessage"] == '{"error": "bad input"}'
    assert error["LogStreamArn"] == f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/sagemaker/Endpoints/{ENDPOINT}"
    assert error["Error"]["Message"].startswith(f"Received {'client' if status < 500 else 'server'} error ({status})")
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_container_failure_mid_stream_is_stream_broken(runtime_server: RuntimeServer) -> None:
    runtime_server.container.response = FakeResponse([(0.0, LINES[0]), (0.05, RuntimeError("engine died"))])
    received = []
    with pytest.raises(EventStreamError) as caught:
        for event in stream(client_for(runtime_server.url))["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [LINES[0]]
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"


def test_time_limit_ends_a_silent_stream_and_cancels_the_container(runtime_server: RuntimeServer) -> None:
    runtime_server.container.response = FakeResponse([(0.0, LINES[0]), (60.0, LINES[1])])
    started = time.monotonic()
    received = []
    with pytest.raises(EventStreamError) as caught:
        for event in stream(client_for(runtime_server.url))["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    # not before the server's stream_time_limit (2 s, counted from the request, so the client sees at least that)
    assert time.monotonic() - started >= 2.0
    assert received == [LINES[0]]
    assert caught.value.response["Error"] == {
        "Code": "ModelStreamError",
        "Message": "Your model primary did not complete sending the inference response in the allotted time.",
    }
    assert runtime_server.container.response.cancelled.is_set()


def test_invoke_endpoint_returns_the_container_body(runtime_server: RuntimeServer) -> None:
    runtime_server.container.response = FakeResponse(
        [(0.0, b'{"generated_text": '), (0.05, b'"Hi"}')], headers={"Content-Type": "application/json"}
    )
    client = client_for(runtime_server.url)
    response = client.invoke_endpoint(EndpointName=ENDPOINT, Body=b"{}", Accept="application/json")
    assert response["Body"].read() == b'{"generated_text": "Hi"}'
    assert response["ContentType"] == "application/json"
    assert runtime_server.container.requests[0][0] == {"Accept": "application/json"}
    with pytest.raises(client.exceptions.ValidationError):
        client.invoke_endpoint(EndpointName="missing", Body=b"{}")


def test_endpoint_url_from_the_environment(
    runtime_server: RuntimeServer,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime_server.url)
    assert parts(stream(client_for())) == [b'{"outputs": ["Hi"]}\n']


def test_lmikit_invoke_stream_reads_tokens(runtime_server: RuntimeServer) -> None:
    runtime_server.container.response = FakeResponse([(0.0, LINES[0][:9]), (0.0, LINES[0][9:] + LINES[1])])
    result = invoke_stream(client_for(runtime_server.url), ENDPOINT, "Hello", {"max_new_tokens": 2})
    assert result.text() == " one two"
    assert json.loads(runtime_server.container.requests[0][1])["stream"] is True


def test_sagemaker_sdk_v2_predict_stream(runtime_server: RuntimeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.iterators import LineIterator
    from sagemaker.predictor import Predictor
    from sagemaker.session import Session

    runtime_server.container.response = FakeResponse([(0.0, LINES[0]), (0.05, LINES[1])])
    boto_session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION)
    runtime = boto_session.client(
        "sagemaker-runtime", endpoint_url=runtime_server.url, config=Config(retries={"max_attempts": 1})
    )
    session = Session(boto_session=boto_session, sagemaker_runtime_client=runtime, default_bucket="unused")
    predictor = Predictor(ENDPOINT, sagemaker_session=session)
    lines = list(predictor.predict_stream(b'{"inputs": "Hi"}', iterator=LineIterator))
    assert lines == [line.rstrip(b"\n") for line in LINES[:2]]
