"""Encoder for AWS event-stream messages (`application/vnd.amazon.eventstream`), as SageMaker sends them.

Message layout (big-endian): total length u32, headers length u32, prelude CRC32 (of the first 8 bytes),
headers, payload, message CRC32 (of everything before it). Headers are written as type 7 (string).
Invariant: every message produced here decodes with botocore's own `EventStreamBuffer`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
_STRING_HEADER = struct.Struct(">BH")
_STRING_TYPE = 7
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024  # botocore refuses a message whose payload is longer (InvalidPayloadLength)
EXCEPTION_TYPES = ("ModelStreamError", "InternalStreamFailure")


class PayloadTooLarge(ValueError):
    """A payload longer than one event-stream message may carry."""


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """Frame `payload` with string `headers` into one event-stream message."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"a response part of {len(payload)} bytes exceeds the 24 MiB event-stream limit")
    header_bytes = b"".join(_encode_header(name, value) for name, value in headers.items())
    prelude = _PRELUDE.pack(12 + len(header_bytes) + len(payload) + 4, len(header_bytes))
    message = prelude + _CRC.pack(zlib.crc32(prelude)) + header_bytes + payload
    return message + _CRC.pack(zlib.crc32(message))


def payload_part(data: bytes) -> bytes:
    """A `PayloadPart` event carrying `data`: what boto3 yields as `{"PayloadPart": {"Bytes": data}}`."""
    headers = {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    return encode_message(headers, data)


def exception_frame(exception_type: str, message: str, error_code: str | None = None) -> bytes:
    """An in-stream exception; boto3 raises `EventStreamError` with code `exception_type` on it."""
    if exception_type not in EXCEPTION_TYPES:
        raise ValueError(f"exception_type must be one of {EXCEPTION_TYPES}, got {exception_type!r}")
    body: dict[str, str] = {"Message": message}
    if error_code is not None:
        body["ErrorCode"] = error_code
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps(body).encode())


def _encode_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    if len(raw_name) > 255 or len(raw_value) > 65535:
        raise ValueError(f"header {name!r} is too long for the event-stream format")
    return bytes([len(raw_name)]) + raw_name + _STRING_HEADER.pack(_STRING_TYPE, len(raw_value)) + raw_value
