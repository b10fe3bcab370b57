"""Raw bytes of an LMI, TGI or OpenAI-style response stream → typed events, one parser per wire format.

    jsonlines  one JSON object per line: LMI 0.23 `{"outputs": [" a"]}`, newest LMI / vLLM `{"token": {...}}`
    sse        text/event-stream `data:` lines: TGI, LMI `sse`, OpenAI chat chunks, `data: [DONE]`
    json       the LMI `json` formatter: one `{"generated_text": "..."}` object sent in pieces; its text
               is yielded as the pieces arrive, the whole object is parsed at the end

Whatever the framing, every JSON payload is read by one function, `event_from_payload`. Blank lines and
SSE comments are skipped; each SSE `data:` line carries one whole JSON payload, as all these servers send.
Invariant: the events do not depend on where the bytes are split into parts (for `json`, their text).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .errors import ParseError
from .lines import LineDecoder

FORMATS = ("jsonlines", "sse", "json")
_FORMAT_OF_CONTENT_TYPE = {
    "application/jsonlines": "jsonlines",
    "application/x-jsonlines": "jsonlines",
    "text/event-stream": "sse",
}
_SSE_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")
_JSON_BODY_START = re.compile(rb'\[|\{\s*"generated_text"\s*:\s*"')
_SNIFF_LIMIT = 64


@dataclass(frozen=True)
class TokenEvent:
    """One generated token (or, for LMI 0.23 and `json`, one step's text)."""

    text: str
    token_id: int | None = None
    log_prob: float | None = None
    special: bool = False
    generated_text: str | None = None  # the full text, on the last event of formats that send it
    details: dict[str, Any] | None = None  # LMI/TGI `details` (finish_reason, generated_tokens, ...)
    finish_reason: str | None = None
    #: an OpenAI chat chunk's `delta.tool_calls` pieces (or a whole message's `tool_calls`), as sent
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ErrorEvent:
    """An error the model reported in-band; `code` is its HTTP code or TGI `error_type` when given."""

    message: str
    code: int | str | None = None


Event = TokenEvent | ErrorEvent


def event_from_payload(payload: dict[str, Any]) -> Event | None:
    """Read one JSON payload of any supported shape; None for shapes that carry nothing (usage chunks)."""
    error = _error_event(payload)
    if error is not None:
        return error
    if "outputs" in payload:
        return TokenEvent("".join(payload["outputs"]))
    if "choices" in payload:
        return _chat_event(payload["choices"])
    token, generated = payload.get("token"), payload.get("generated_text")
    details = payload.get("details")
    finish_reason = details.get("finish_reason") if isinstance(details, dict) else None
    if isinstance(token, dict):
        return TokenEvent(
            text=token.get("text", ""),
            token_id=token.get("id"),
            log_prob=token.get("log_prob", token.get("logprob")),
            special=bool(token.get("special_token", token.get("special", False))),
            generated_text=generated,
            details=details,
            finish_reason=finish_reason,
        )
    if isinstance(generated, str):
        return TokenEvent(generated, generated_text=generated, details=details, finish_reason=finish_reason)
    return None


def parse_jsonlines_line(line: str) -> Event | None:
    """One line of a jsonlines stream; blank lines give None."""
    return _event_from_json(line) if line.strip() else None


def parse_sse_line(line: str) -> Event | None:
    """One line of an SSE stream; only non-empty `data:` lines other than `[DONE]` give an event."""
    field, _, value = line.partition(":")
    data = value.removeprefix(" ").strip()
    if field != "data" or not data or data == "[DONE]":
        return None
    return _event_from_json(data)


def format_of_content_type(content_type: str | None) -> str | None:
    """The format a content type names unambiguously (jsonlines, event-stream), else None."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    return _FORMAT_OF_CONTENT_TYPE.get(media_type)


def sniff_format(head: bytes, final: bool = False) -> str | None:
    """Guess the format from the first bytes of a body; None while they are too few to tell."""
    text = head.lstrip()
    if _JSON_BODY_START.match(text):
        return "json"
    if text.startswith(_SSE_FIELDS):
        return "sse"
    undecided = (
        not text
        or any(field.startswith(text) for field in _SSE_FIELDS)
        or (text[:1] == b"{" and b"\n" not in text and len(text) < _SNIFF_LIMIT)
    )
    return None if undecided and not final else "jsonlines"


class _BodyParser(Protocol):
    def feed(self, chunk: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class LineParser:
    """A line format: bytes → lines (`LineDecoder`) → `parse_line` for each line."""

    def __init__(self, parse_line: Callable[[str], Event | None]) -> None:
        self._lines = LineDecoder()
        self._parse_line = parse_line

    def feed(self, chunk: bytes) -> list[Event]:
        return self._parse(self._lines.decode(chunk))

    def close(self) -> list[Event]:
        return self._parse(self._lines.flush())

    def _parse(self, lines: list[str]) -> list[Event]:
        events = (self._parse_line(line) for line in lines)
        return [event for event in events if event is not None]


_STRING_PIECE = re.compile(
    r'[^"\\]+|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\[^u]'
)
_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_JSON_TEXT_START = re.compile(r'\s*\[?\s*\{\s*"generated_text"\s*:\s*"')


class JsonBodyParser:
    """The `json` format: text events while inside `"generated_text": "`, the parsed object at close."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._body: list[str] = []
        self._pending = ""
        self._state = "head"  # head → text → tail
        self._streamed = False

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        self._body.append(text)
        if self._state == "tail":
            return []
        self._pending += text
        if self._state == "head":
            self._enter_text()
        return self._take_text() if self._state == "text" else []

    def close(self) -> list[Event]:
        body = "".join(self._body) + self._decoder.decode(b"", final=True)
        if not body.strip():
            return []
        payload = _load_json(body)
        if isinstance(payload, list) and payload:  # tgi_compat wraps the object in [ ]
            payload = payload[0]
        if not isinstance(payload, dict):
            raise ParseError("expected a JSON object", body)
        event = event_from_payload(payload)
        if self._streamed and isinstance(event, TokenEvent):
            event = replace(event, text="")
        return [event] if event is not None else []

    def _enter_text(self) -> None:
        match = _JSON_TEXT_START.match(self._pending)
        if match is not None:
            self._state, self._pending = "text", self._pending[match.end() :]
        elif len(self._pending.lstrip()) >= _SNIFF_LIMIT:
            self._state = "tail"

    def _take_text(self) -> list[Event]:
        pending, end = self._pending, 0
        while (piece := _STRING_PIECE.match(pending, end)) and not _splits_pair(piece, pending):
            end = piece.end()
        if pending.startswith('"', end):
            self._state = "tail"
        self._pending = pending[end:]
        if end == 0:
            return []
        self._streamed = True
        return [TokenEvent(_load_json(f'"{pending[:end]}"'))]


_PARSERS: dict[str, Callable[[], _BodyParser]] = {
    "jsonlines": lambda: LineParser(parse_jsonlines_line),
    "sse": lambda: LineParser(parse_sse_line),
    "json": JsonBodyParser,
}


class EventParser:
    """Byte parts of one response → events; the format is `fmt`, else the content type's, else sniffed.

    `format` is None until the first bytes have decided it.
    """

    def __init__(self, fmt: str | None = None, content_type: str | None = None) -> None:
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown stream format {fmt!r}; expected one of {FORMATS}")
        self.format = fmt or format_of_content_type(content_type)
        self._parser = _PARSERS[self.format]() if self.format else None
        self._head = b""

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by `chunk`."""
        if self._parser is not None:
            return self._parser.feed(chunk)
        self._head += chunk
        fmt = sniff_format(self._head)
        return [] if fmt is None else self._begin(fmt)

    def close(self) -> list[Event]:
        """Events held back until the end of the body (final unterminated line, whole `json` object)."""
        if self._parser is not None:
            return self._parser.close()
        return self._begin(sniff_format(self._head, final=True) or "jsonlines", closing=True)

    def _begin(self, fmt: str, closing: bool = False) -> list[Event]:
        parser = _PARSERS[fmt]()
        self.format, self._parser = fmt, parser
        events = parser.feed(self._head)
        self._head = b""
        return events + parser.close() if closing else events


def _error_event(payload: dict[str, Any]) -> ErrorEvent | None:
    token, details = payload.get("token"), payload.get("details")
    token = token if isinstance(token, dict) else {}
    details = details if isinstance(details, dict) else {}
    error = payload.get("error") or payload.get("error_msg") or token.get("error_msg") or details.get("error_msg")
    failed = "error" in (payload.get("finish_reason"), details.get("finish_reason"))
    if not error and not failed:
        return None
    code = payload.get("code", payload.get("error_type"))
    if isinstance(error, dict):  # OpenAI style {"error": {"message": ..., "code": ...}}
        code, error = error.get("code", error.get("type")), error.get("message")
    return ErrorEvent(str(error or "generation failed (finish_reason=error)"), code)


def _chat_event(choices: list[dict[str, Any]]) -> TokenEvent | None:
    if not choices:
        return None
    choice = choices[0]
    message = choice.get("delta") or choice.get("message") or {}  # a chunk's delta, a whole completion's message
    text = message.get("content") or choice.get("text") or ""
    calls = message.get("tool_calls")
    calls = tuple(call for call in calls if isinstance(call, dict)) if isinstance(calls, list) else ()
    return TokenEvent(text, finish_reason=choice.get("finish_reason"), tool_calls=calls)


def _event_from_json(text: str) -> Event | None:
    payload = _load_json(text)
    if not isinstance(payload, dict):
        raise ParseError("expected a JSON object", text)
    return event_from_payload(payload)


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except ValueError:
        raise ParseError("not valid JSON", text) from None


def _splits_pair(piece: re.Match[str], pending: str) -> bool:
    """A high-surrogate escape at the end of the buffer may be half of a pair still to come."""
    return bool(_HIGH_SURROGATE.fullmatch(piece.group())) and piece.end() + 6 > len(pending)
