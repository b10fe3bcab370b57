"""Client side of LMI response streaming: event-stream frames, lines, typed events and `Stream`."""
from __future__ import annotations

from .errors import InternalStreamFailure, ModelError, ModelStreamError, ParseError, StreamError
from .events import FORMATS, ErrorEvent, EventParser, TokenEvent, event_from_payload, sniff_format
from .eventstream import encode_message, exception_frame, payload_part
from .lines import LineDecoder
from .stream import Stream, invoke_chat_stream, invoke_stream

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
    "encode_message",
    "event_from_payload",
    "exception_frame",
    "invoke_chat_stream",
    "invoke_stream",
    "payload_part",
    "sniff_format",
]
