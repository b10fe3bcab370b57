"""Client side of LMI response streaming: lines, typed events and `Stream` over boto3's event stream or raw bytes."""

from __future__ import annotations

from .errors import InternalStreamFailure, ModelError, ModelStreamError, ParseError, StreamError
from .events import FORMATS, ErrorEvent, EventParser, TokenEvent, event_from_payload, sniff_format
from .lines import LineDecoder
from .stream import Stream, invoke_body_stream, invoke_chat_stream, invoke_stream

__all__ = [
    "FORMATS",
    "ErrorEvent",
    "EventParser",
    "InternalStreamFailure",
    "LineDecoder",
    "ModelError",
    "ModelStreamError",
    "ParseError",
    "Stream",
    "StreamError",
    "TokenEvent",
    "event_from_payload",
    "invoke_body_stream",
    "invoke_chat_stream",
    "invoke_stream",
    "sniff_format",
]
