"""The event-stream encoder, decoded by real botocore: its buffer, its EventStream, and boto3 over HTTP."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import EventStreamError
from client_support import botocore_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from lmikit.benchmarks.recordings import split
from lmikit.server.eventstream import encode_message, exception_frame, payload_part

pytestmark = pytest.mark.usefixtures("per_test_timeout")


def decode(*chunks: bytes) -> list:
    buffer = EventStreamBuffer()
    messages = []
    for chunk in chunks:
        buffer.add_data(chunk)
        messages.extend(buffer)
    return messages


@pytest.mark.parametrize("data", [b"", b"x", "é日本🙂\n".encode(), bytes(range(256)) * 400])
def test_payload_part_decodes_with_botocore(data: bytes) -> None:
    [message] = decode(payload_part(data))
    assert message.payload == data
    assert message.headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }


def test_message_layout_lengths_and_prelude() -> None:
    frame = encode_message({"a": "b"}, b"xyz")
    header = b"\x01a\x07\x00\x01b"
    assert frame[:8] == (12 + len(header) + 3 + 4).to_bytes(4, "big") + len(header).to_bytes(4, "big")
    assert frame[12:-4] == header + b"xyz"


def test_exception_frame_headers_and_json_payload() -> None:
    [message] = decode(exception_frame("ModelStreamError", "timed out", "ModelInvocationTimeExceeded"))
    assert message.headers == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(message.payload) == {"Message": "timed out", "ErrorCode": "ModelInvocationTimeExceeded"}


def test_exception_frame_without_error_code_omits_it() -> None:
    [message] = decode(exception_frame("InternalStreamFailure", "oops"))
    assert json.loads(message.payload) == {"Message": "oops"}


def test_exception_frame_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="exception_type"):
        exception_frame("ModelError", "nope")


def test_corrupted_frame_fails_botocore_checksum() -> None:
    frame = bytearray(payload_part(b"hello"))
    frame[-6] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        decode(bytes(frame))


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), max_size=6), data=st.data())
def test_frames_split_anywhere_decode_to_the_same_payloads(payloads: list[bytes], data: st.DataObject) -> None:
    body = b"".join(map(payload_part, payloads))
    offsets = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    assert [message.payload for message in decode(*split(body, offsets))] == payloads


def test_botocore_event_stream_yields_parts_then_raises_model_stream_error() -> None:
    frames = [payload_part(b"a"), payload_part(b"b"), exception_frame("ModelStreamError", "broken", "StreamBroken")]
    seen = []
    with pytest.raises(EventStreamError) as caught:
        seen.extend(botocore_stream(frames))
    assert seen == [{"PayloadPart": {"Bytes": b"a"}}, {"PayloadPart": {"Bytes": b"b"}}]
    assert caught.value.response["Error"] == {"Code": "ModelStreamError", "Message": "broken"}


def test_real_boto3_client_receives_parts_and_exception(frame_server, runtime_client) -> None:
    frame = payload_part(b'{"outputs": [" a"]}\n')
    frame_server.chunks = [frame[:7], frame[7:], payload_part(b"x"), exception_frame("InternalStreamFailure", "down")]
    response = runtime_client.invoke_endpoint_with_response_stream(EndpointName="ep", Body=b"{}")
    seen = []
    with pytest.raises(EventStreamError) as caught:
        seen.extend(response["Body"])
    assert seen == [{"PayloadPart": {"Bytes": b'{"outputs": [" a"]}\n'}}, {"PayloadPart": {"Bytes": b"x"}}]
    assert caught.value.response["Error"] == {"Code": "InternalStreamFailure", "Message": "down"}
    assert response["ContentType"] == "application/jsonlines"
