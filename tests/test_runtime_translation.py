"""The runtime API without HTTP: paths, validation and header mapping (runtime_request), frames, time limits and
error answers (runtime)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from itertools import count
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import EventStreamError
from client_support import botocore_stream
from lmikit.server import runtime
from lmikit.server.eventstream import MAX_PAYLOAD_BYTES
from lmikit.server.runtime import (
    RuntimeConfig,
    answer_runtime_request,
    fault_response,
    model_error,
    stream_frames,
    stream_headers,
)
from lmikit.server.runtime_request import (
    INVOKE,
    STREAM,
    container_headers,
    input_members,
    parse_runtime_path,
    python_pattern,
    validate,
)
from runtime_support import FakeResponse

pytestmark = pytest.mark.usefixtures("per_test_timeout")

CONFIG = RuntimeConfig(endpoint_name="ep", region="eu-west-1", stream_time_limit=2.0, invoke_time_limit=2.0)


def decode(frames: list[bytes]) -> list[tuple[dict[str, Any], bytes]]:
    """(headers, payload) of each event-stream message, decoded by botocore."""
    buffer = EventStreamBuffer()
    for frame in frames:
        buffer.add_data(frame)
    return [(message.headers, message.payload) for message in buffer]


def ticks() -> Callable[[], float]:
    """A clock that advances one second per reading."""
    readings = count()
    return lambda: float(next(readings))


def submitting(response: Any) -> Callable[[dict[str, str], bytes], Any]:
    return lambda headers, body: response


def frames(response: FakeResponse, time_limit: float, clock: Callable[[], float] = time.monotonic) -> list[bytes]:
    """stream_frames read to the end on an event loop, with a deadline `time_limit` after the first `clock` reading."""

    async def read() -> list[bytes]:
        return [frame async for frame in stream_frames(response, clock() + time_limit, clock)]

    return asyncio.run(read())


def answer(
    method: str, path: str, submit: Callable[[dict[str, str], bytes], Any], config: RuntimeConfig = CONFIG
) -> tuple[runtime.RuntimeAnswer, list[bytes]]:
    """answer_runtime_request's answer and its body, read to the end on one event loop."""

    async def run() -> tuple[runtime.RuntimeAnswer, list[bytes]]:
        answered = await answer_runtime_request(method, path, {}, b"", submit, config)
        body = answered.body_iter
        return answered, [chunk async for chunk in body] if isinstance(body, AsyncIterator) else list(body)

    return asyncio.run(run())


def answer_json(body: list[bytes]) -> dict[str, Any]:
    return json.loads(b"".join(body))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/endpoints/ep/invocations-response-stream", ("ep", STREAM)),
        ("/endpoints/ep/invocations", ("ep", INVOKE)),
        ("/endpoints/bad_name%21/invocations?x=1", ("bad_name!", INVOKE)),
        ("/invocations", None),
        ("/endpoints/ep/async-invocations", None),
        ("/endpoints//invocations", None),
    ],
)
def test_parse_runtime_path(path: str, expected: tuple[str, str] | None) -> None:
    assert parse_runtime_path(path) == expected


@pytest.mark.parametrize(
    ("headers", "member"),
    [
        ({"Content-Type": "a" * 1025}, "contentType"),
        ({"X-Amzn-SageMaker-Accept": "a" * 1025}, "accept"),
        ({"X-Amzn-SageMaker-Custom-Attributes": "naïve=1"}, "customAttributes"),
        ({"X-Amzn-SageMaker-Target-Variant": "a" * 64}, "targetVariant"),
        ({"X-Amzn-SageMaker-Target-Variant": "-lead"}, "targetVariant"),
        ({"X-Amzn-SageMaker-Target-Container-Hostname": "under_score"}, "targetContainerHostname"),
        ({"X-Amzn-SageMaker-Inference-Id": ""}, "inferenceId"),
        ({"X-Amzn-SageMaker-Inference-Id": "i" * 65}, "inferenceId"),
        ({"X-Amzn-SageMaker-Inference-Component": "trailing-"}, "inferenceComponentName"),
        ({"X-Amzn-SageMaker-Session-Id": "NEW_SESSION"}, "sessionId"),
    ],
)
def test_validate_modeled_header_constraints(headers: dict[str, str], member: str) -> None:
    fault = validate("ep", "ep", headers, 10)
    assert fault is not None and (fault.status, fault.code) == (400, "ValidationError")
    assert re.match(r"\d validation errors? detected: Value", fault.body["message"])
    assert f"at '{member}' failed to satisfy constraint" in fault.body["message"]


def test_validate_accepts_valid_requests_and_lowercase_headers() -> None:
    headers = {
        "content-type": "application/json",
        "x-amzn-sagemaker-custom-attributes": "a=1;b=2",
        "x-amzn-sagemaker-target-variant": "AllTraffic",
        "x-amzn-sagemaker-inference-id": "req 1",
    }
    assert validate("ep", "ep", headers, 6291456) is None
    assert validate("ep", "ep", {"X-Amzn-SageMaker-Session-Id": "NEW_SESSION"}, 1, INVOKE) is None


def test_validate_reports_every_violation_without_echoing_sensitive_values() -> None:
    fault = validate("bad_name!", "ep", {"X-Amzn-SageMaker-Custom-Attributes": "s" * 1025}, 6291457)
    assert fault is not None
    message = fault.body["message"]
    assert message.startswith("3 validation errors detected: Value 'bad_name!' at 'endpointName'")
    assert (
        "Value at 'body' failed to satisfy constraint: Member must have length less than or equal to 6291456" in message
    )
    assert "Value at 'customAttributes'" in message and "sss" not in message


def test_validate_unknown_endpoint_after_constraints() -> None:
    fault = validate("other", "ep", {}, 1)
    assert fault is not None
    assert fault.body == {"message": "Endpoint other of account 123456789012 not found."}


def test_every_modeled_pattern_translates_to_a_python_regex_without_java_classes() -> None:
    translated = {
        python_pattern(shape.metadata["pattern"]).pattern
        for operation in (STREAM, INVOKE)
        for shape in input_members(operation).values()
        if "pattern" in shape.metadata
    }
    assert r"\A\S[\x20-\x7e]*\Z" in translated and r"[\x00-\x7f]*" in translated
    assert not any(re.search(r"\\p\{|\\z", pattern) for pattern in translated), translated


@pytest.mark.parametrize(
    ("headers", "valid"),
    [
        ({"X-Amzn-SageMaker-Inference-Id": "req 1~"}, True),  # \S then Java's \p{Print}: printable ASCII
        ({"X-Amzn-SageMaker-Inference-Id": "req\x7f"}, False),
        ({"X-Amzn-SageMaker-Inference-Id": "req\t1"}, False),
        ({"X-Amzn-SageMaker-Inference-Id": "req é"}, False),
        ({"X-Amzn-SageMaker-Inference-Id": " lead"}, False),
        ({"X-Amzn-SageMaker-Inference-Id": "end\n"}, False),
        ({"Content-Type": "text/plain\x7f"}, True),  # Java's \p{ASCII}: 0-127
        ({"Content-Type": "text/plé"}, False),
    ],
)
def test_translated_java_classes_accept_what_java_accepts(headers: dict[str, str], valid: bool) -> None:
    assert (validate("ep", "ep", headers, 1) is None) == valid


def test_container_headers_per_operation() -> None:
    headers = {
        "content-type": "application/json",
        "x-amzn-sagemaker-accept": "application/jsonlines",
        "Accept": "*/*",
        "X-Amzn-SageMaker-Custom-Attributes": "k=v",
        "Authorization": "AWS4 ...",
    }
    assert container_headers(headers, STREAM) == {
        "Content-Type": "application/json",
        "Accept": "application/jsonlines",
        "X-Amzn-SageMaker-Custom-Attributes": "k=v",
    }
    assert container_headers(headers, INVOKE)["Accept"] == "*/*"


def test_an_inference_component_naming_an_adapter_reaches_the_container_as_the_adapter_header() -> None:
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Inference-Component": "fr"}
    for operation in (STREAM, INVOKE):
        sent = container_headers(headers, operation, adapters=("de", "fr"))
        assert sent["X-Amzn-SageMaker-Inference-Component"] == "fr"
        assert sent["X-Amzn-SageMaker-Adapter-Identifier"] == "fr"
    base = {**headers, "X-Amzn-SageMaker-Inference-Component": "base"}
    assert "X-Amzn-SageMaker-Adapter-Identifier" not in container_headers(base, STREAM, adapters=("de", "fr"))


def test_stream_frames_one_payload_part_per_chunk() -> None:
    response = FakeResponse([(0.0, b"a"), (0.0, b""), (0.0, b"bc")])
    messages = decode(frames(response, 2.0))
    assert [payload for _, payload in messages] == [b"a", b"bc"]
    assert messages[0][0] == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert not response.cancelled.is_set()


def test_stream_frames_container_failure_is_stream_broken() -> None:
    response = FakeResponse([(0.0, b"a"), (0.0, RuntimeError("boom"))])
    (_, first), (headers, payload) = decode(frames(response, 2.0))
    assert first == b"a"
    assert headers[":exception-type"] == "ModelStreamError"
    assert json.loads(payload)["ErrorCode"] == "StreamBroken"


def test_stream_frames_carry_a_part_of_24_mib_whole() -> None:
    largest = b"x" * MAX_PAYLOAD_BYTES
    received = [event["PayloadPart"]["Bytes"] for event in botocore_stream(frames(FakeResponse([(0.0, largest)]), 25))]
    assert received == [largest]


def test_stream_frames_end_a_part_over_24_mib_with_internal_stream_failure() -> None:
    response = FakeResponse([(0.0, b"a"), (0.0, b"x" * (MAX_PAYLOAD_BYTES + 1)), (0.0, b"never")])
    received = []
    with pytest.raises(EventStreamError) as caught:
        for event in botocore_stream(frames(response, 25)):  # botocore's own parser of the operation's stream
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [b"a"]
    assert caught.value.response["Error"] == {
        "Code": "InternalStreamFailure",
        "Message": "a response part of 25165825 bytes exceeds the 24 MiB event-stream limit",
    }
    assert response.cancelled.is_set()


def test_stream_frames_time_limit_fires_while_the_container_is_silent() -> None:
    response = FakeResponse([(0.0, b"a"), (60.0, b"never")])  # silent far past the per-test timeout
    started = time.monotonic()
    messages = decode(frames(response, 0.3))
    assert time.monotonic() - started >= 0.3  # not before the limit; the silent container cannot end the stream
    assert response.cancelled.is_set()
    assert [payload for _, payload in messages[:-1]] == [b"a"]
    headers, payload = messages[-1]
    assert headers[":message-type"] == "exception"
    assert json.loads(payload) == {
        "Message": runtime.STREAM_TIMEOUT_MESSAGE,
        "ErrorCode": "ModelInvocationTimeExceeded",
    }
    assert response.cancelled.is_set()


def test_stream_frames_time_limit_counts_total_time_not_silence() -> None:
    response = FakeResponse([(0.0, b"x")] * 10)
    messages = decode(frames(response, 3.0, clock=ticks()))
    assert [payload for _, payload in messages[:-1]] == [b"x", b"x"]
    assert json.loads(messages[-1][1])["ErrorCode"] == "ModelInvocationTimeExceeded"


def test_closing_the_stream_early_cancels_the_container() -> None:
    response = FakeResponse([(0.0, b"a"), (30.0, b"b")])

    async def read_one() -> None:
        stream = stream_frames(response, time.monotonic() + 60.0)
        await anext(stream)
        await stream.aclose()

    asyncio.run(read_one())
    assert response.cancelled.is_set()


def test_stream_headers_pass_back_content_type_and_custom_attributes() -> None:
    returned = {"content-type": "text/event-stream", "X-Amzn-SageMaker-Custom-Attributes": "k=v"}
    response = FakeResponse([], headers=returned)
    assert stream_headers(response, "rid", "Variant1") == {
        "Content-Type": "application/vnd.amazon.eventstream",
        "x-Amzn-Invoked-Production-Variant": "Variant1",
        "x-amzn-RequestId": "rid",
        "X-Amzn-SageMaker-Content-Type": "text/event-stream",
        "X-Amzn-SageMaker-Custom-Attributes": "k=v",
    }
    assert "X-Amzn-SageMaker-Content-Type" not in stream_headers(FakeResponse([], headers={}), "rid")


def test_model_error_body() -> None:
    fault = model_error(404, "no such adapter", CONFIG)
    assert (fault.status, fault.code) == (424, "ModelError")
    assert fault.body["ErrorCode"] == "CLIENT_ERROR_FROM_MODEL"
    message = fault.body["Message"]
    assert message.startswith('Received client error (404) from primary with message "no such adapter". See ')
    assert fault.body["LogStreamArn"] == "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/Endpoints/ep"
    assert model_error(0, "timeout", CONFIG).body["ErrorCode"] == "SERVER_ERROR_FROM_MODEL"


def test_fault_response_headers() -> None:
    status, headers, body = fault_response(model_error(500, "x", CONFIG), "rid")
    assert status == 424
    assert headers == {
        "Content-Type": "application/json",
        "x-amzn-ErrorType": "ModelError",
        "x-amzn-RequestId": "rid",
        "Content-Length": str(len(body)),
    }


def test_answer_streams_a_good_response() -> None:
    response = FakeResponse([(0.0, b"a"), (0.0, b"b")])
    answered, body = answer("POST", "/endpoints/ep/invocations-response-stream", submitting(response))
    assert (answered.status, answered.streamed) == (200, True)
    assert "Content-Length" not in answered.headers
    assert [payload for _, payload in decode(body)] == [b"a", b"b"]


def test_answer_silent_container_before_first_chunk_is_a_model_error() -> None:
    response = FakeResponse([(30.0, b"late")])
    config = RuntimeConfig(endpoint_name="ep", stream_time_limit=0.2)
    answered, body = answer("POST", "/endpoints/ep/invocations-response-stream", submitting(response), config)
    assert answered.status == 424 and answered.headers["x-amzn-ErrorType"] == "ModelError"
    assert answer_json(body)["OriginalStatusCode"] == 0
    assert response.cancelled.is_set()


def test_answer_container_that_raises_on_submit() -> None:
    def refuse(headers: dict[str, str], body: bytes) -> Any:
        raise RuntimeError("model not loaded")

    answered, body = answer("POST", "/endpoints/ep/invocations", refuse)
    assert answered.status == 424
    assert answer_json(body)["OriginalMessage"] == "model not loaded"


def test_answer_invoke_failure_mid_body_is_a_model_error() -> None:
    response = FakeResponse([(0.0, b"part"), (0.0, ValueError("lost"))])
    answered, body = answer("POST", "/endpoints/ep/invocations", submitting(response))
    assert (answered.status, answer_json(body)["OriginalStatusCode"]) == (424, 500)


def test_answer_invoke_buffers_the_body() -> None:
    response = FakeResponse([(0.0, b"he"), (0.0, b"llo")], headers={"Content-Type": "text/plain"})
    answered, body = answer("POST", "/endpoints/ep/invocations", submitting(response))
    assert (answered.status, answered.streamed, b"".join(body)) == (200, False, b"hello")
    assert answered.headers["Content-Type"] == "text/plain" and answered.headers["Content-Length"] == "5"


def test_answer_unknown_operation() -> None:
    answered, _ = answer("GET", "/endpoints/ep/invocations", submitting(None))
    assert (answered.status, answered.headers["x-amzn-ErrorType"]) == (404, "UnknownOperationException")


def test_answer_close_cancels_the_container() -> None:
    response = FakeResponse([(0.0, b"a"), (30.0, b"b")])

    async def read_one_then_close() -> None:
        answered = await answer_runtime_request(
            "POST", "/endpoints/ep/invocations-response-stream", {}, b"", submitting(response), CONFIG
        )
        assert isinstance(answered.body_iter, AsyncIterator)
        await anext(answered.body_iter)
        answered.close()
        assert response.cancelled.is_set()

    asyncio.run(read_one_then_close())
