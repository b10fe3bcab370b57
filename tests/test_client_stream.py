"""Stream: iteration, text(), timings, error conversion over real botocore bytes, and invoke_stream."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest
from client_support import botocore_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from lmikit.benchmarks import recordings
from lmikit.benchmarks.recordings import split
from lmikit.client import (
    InternalStreamFailure,
    ModelError,
    ModelStreamError,
    Stream,
    StreamError,
    TokenEvent,
    invoke_stream,
)
from lmikit.server.eventstream import encode_message, exception_frame, payload_part

pytestmark = pytest.mark.usefixtures("per_test_timeout")

RENDERERS = [
    recordings.lmi023_jsonlines,
    recordings.lmi023_json,
    recordings.lmi_jsonlines,
    recordings.lmi_sse,
    recordings.tgi_sse,
    recordings.openai_sse,
]
BODY = recordings.lmi_jsonlines([" Hello", " wörld", " 日本"])


def ticks(start: float = 0.0) -> Any:
    """A clock that advances one second per reading."""
    readings = count(start)
    return lambda: float(next(readings))


def response(chunks: list[bytes], content_type: str = "application/jsonlines") -> dict[str, Any]:
    return {"Body": botocore_stream(chunks), "ContentType": content_type}


def test_iterate_then_text_from_byte_parts() -> None:
    stream = Stream(split(BODY, [5, 60, 61]))
    first = next(iter(stream))
    assert first == TokenEvent(" Hello", token_id=11, log_prob=0.0)
    assert stream.text() == " Hello wörld 日本"
    assert stream.tokens == 3


def test_timings_from_creation_with_injected_clock() -> None:
    stream = Stream([BODY[:50], BODY[50:]], clock=ticks(10.0))
    assert stream.time_to_first_token is None
    stream.text()
    assert stream.time_to_first_token == 1.0  # created at 10, first token read at 11
    assert stream.tokens_per_second == 2 / (13.0 - 11.0)


def test_timings_from_a_given_start_skip_empty_and_special_tokens() -> None:
    body = b'{"outputs": [""]}\n{"token": {"id": 0, "text": "<s>", "special_token": true}}\n{"outputs": [" a"]}\n'
    stream = Stream([body], start=0.0, clock=ticks(5.0))
    assert stream.text() == " a"
    assert (stream.time_to_first_token, stream.tokens, stream.tokens_per_second) == (5.0, 1, None)


def test_boto3_response_dict_payload_parts_and_content_type() -> None:
    frames = [payload_part(part) for part in split(recordings.tgi_sse(["é", "🙂"]), [3, 40])]
    assert Stream(response(frames, "text/event-stream")).text() == "é🙂"


def test_model_stream_error_frame_after_tokens() -> None:
    error = exception_frame("ModelStreamError", "model too slow", "ModelInvocationTimeExceeded")
    frames = [payload_part(BODY[:60]), error]
    stream = Stream(response(frames))
    seen = []
    with pytest.raises(ModelStreamError) as caught:
        seen.extend(stream)
    assert [event.text for event in seen] == [" Hello"]
    assert caught.value.message == "model too slow"
    assert isinstance(caught.value, StreamError)


def test_internal_stream_failure_frame() -> None:
    with pytest.raises(InternalStreamFailure, match="service down"):
        Stream(response([exception_frame("InternalStreamFailure", "service down")])).text()


def test_other_error_frames_become_the_base_stream_error() -> None:
    frame = encode_message({":message-type": "error", ":error-code": "Throttled", ":error-message": "slow down"}, b"")
    with pytest.raises(StreamError, match="Throttled: slow down"):
        Stream(response([frame])).text()


def test_error_events_shaped_as_the_service_model_are_converted() -> None:
    body = [{"PayloadPart": {"Bytes": BODY}}, {"ModelStreamError": {"Message": "broken", "ErrorCode": "StreamBroken"}}]
    with pytest.raises(ModelStreamError) as caught:
        Stream({"Body": body}).text()
    assert (caught.value.message, caught.value.code) == ("broken", "StreamBroken")


def test_in_band_error_line_raises_model_error_after_earlier_tokens() -> None:
    stream = Stream([b'{"outputs": [" a"]}\n{"code": 424, "error": "Batch inference failed"}\n'])
    with pytest.raises(ModelError) as caught:
        stream.text()
    assert (caught.value.message, caught.value.code, stream.tokens) == ("Batch inference failed", 424, 1)


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.lists(st.sampled_from([" a", "é", "日本", "🙂", '"', "\n"]), min_size=1, max_size=10),
    render=st.sampled_from(RENDERERS),
    data=st.data(),
)
def test_any_split_through_real_botocore_gives_the_text(tokens: list[str], render: Any, data: st.DataObject) -> None:
    body = render(tokens)
    parts = split(body, data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    wire = b"".join(payload_part(part) for part in parts)
    chunks = split(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    assert Stream({"Body": botocore_stream(chunks)}).text() == "".join(tokens)


class RecordingClient:
    """A stand-in boto3 client: records the request, answers with byte parts."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests: list[dict[str, Any]] = []

    def invoke_endpoint_with_response_stream(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        return {"Body": [{"PayloadPart": {"Bytes": self.body}}], "ContentType": "application/jsonlines"}


def test_invoke_stream_builds_the_lmi_request() -> None:
    client = RecordingClient(BODY)
    stream = invoke_stream(client, "my-ep", "Hi", {"max_new_tokens": 3}, custom_attributes="trace=1")
    assert stream.text() == " Hello wörld 日本"
    [request] = client.requests
    assert json.loads(request.pop("Body")) == {"inputs": "Hi", "parameters": {"max_new_tokens": 3}, "stream": True}
    assert request == {"EndpointName": "my-ep", "ContentType": "application/json", "CustomAttributes": "trace=1"}


def test_invoke_stream_with_real_boto3_over_http(frame_server, runtime_client) -> None:
    wire = b"".join(payload_part(part) for part in split(recordings.tgi_sse([" é", " 日本"]), [9, 10, 11]))
    frame_server.chunks = split(wire, [5, 100]) + [exception_frame("ModelStreamError", "stopped", "StreamBroken")]
    frame_server.content_type = "text/event-stream"
    stream = invoke_stream(runtime_client, "my-ep", "Hi", {"max_new_tokens": 2}, custom_attributes="a=b")
    with pytest.raises(ModelStreamError, match="stopped"):
        list(stream)
    assert stream.tokens == 2
    assert stream.time_to_first_token is not None and stream.time_to_first_token > 0
    [(path, headers, body)] = frame_server.requests
    assert path == "/endpoints/my-ep/invocations-response-stream"
    assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "a=b"
    assert json.loads(body)["stream"] is True
