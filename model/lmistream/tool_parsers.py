"""Tool calls in the model's own syntax (`tool_choice` "auto"): an answer's text read back as content and calls, by
the parser `option.tool_call_parser` names, with vLLM's names for the formats:

- `hermes` (Qwen2.5, Qwen3, Hermes 2/3): each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  text around the calls is content;
- `llama3_json` (Llama 3.1+ JSON tool calling): the whole answer is one call `{"name": ..., "parameters": {...}}` (or
  several separated by `;`), else it is content.

Pure (no torch, no I/O). Hand-written: the maintained parsers of these formats live inside vLLM and SGLang, which
import torch and their engines, and none installs beside the handler on LMI 0.23's Python 3.9; each format is a tag
pair or a whole-answer JSON object, which `json.JSONDecoder.raw_decode` reads. A call whose JSON does not parse, or
lacks a name, is given back as content, as vLLM's parsers do (a call already named while streaming stays a call).

`ToolTextStream` is the streaming reader: content is released as soon as it cannot be the start of a call (text that
might still become `<tool_call>` is held back; a `llama3_json` answer that starts with `{` is held to its end). A
hermes call written as its models write it, `{"name": "...", "arguments": {`, streams as OpenAI streams calls: its name
once that prefix is read, then its arguments object in pieces, as the model writes them, up to where the object ends
(`raw_decode` finds it, so a closing tag inside its strings does not end it). Any other call is released whole, name
and arguments in one delta, once a closing tag ends text that parses as a call, or at the answer's end.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from .tool_calls import CallDelta

PARSERS = ("hermes", "llama3_json")
HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
_DECODER = json.JSONDecoder()
#: the start of a hermes call as its models write it, up to the `{` that opens the arguments object
_STREAMABLE = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*\{')


@dataclass(frozen=True)
class ParsedCall:
    """One call: the function's name and its arguments as JSON text (what OpenAI's `arguments` carries)."""

    name: str
    arguments: str


def parse(parser: str, text: str) -> tuple[str, list[ParsedCall]]:
    """A whole answer as (content, calls)."""
    stream = ToolTextStream(parser)
    content, _ = stream.feed(text)
    rest, _ = stream.finish()
    return content + rest, stream.calls


def read_call(text: str) -> ParsedCall | None:
    """One call's JSON object (`arguments`, or Llama's `parameters`), or None when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return _as_call(value)


def _as_call(value: object) -> ParsedCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text already
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def read_llama3_calls(text: str) -> list[ParsedCall] | None:
    """A whole `llama3_json` answer's calls (JSON objects separated by `;`), or None when it is not only calls."""
    calls, position, text = [], 0, text.strip()
    while position < len(text):
        try:
            value, position = _DECODER.raw_decode(text, position)
        except ValueError:
            return None
        call = _as_call(value)
        if call is None:
            return None
        calls.append(call)
        position = _skip(text, position, " \n\t;")
    return calls or None


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position


class ToolTextStream:
    """Reads an answer as it streams: each `feed` and the final `finish` give back (content, call deltas)."""

    def __init__(self, parser: str) -> None:
        if parser not in PARSERS:
            raise ValueError(f"unknown tool-call parser {parser!r}; known: {', '.join(PARSERS)}")
        self._parser = parser
        self._buffer = ""
        self._in_call = False  # hermes: inside <tool_call>; llama3_json: the answer started with "{"
        self._searched = 0  # hermes: where in the call's text the next closing tag is looked for
        self._started = False  # llama3_json: the answer's first non-whitespace character was seen
        self._streaming: _StreamedArguments | None = None  # hermes: the call whose arguments stream, once named
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        self._buffer += text
        if self._parser == "hermes":
            return self._hermes()
        return self._llama3()

    def finish(self) -> tuple[str, list[CallDelta]]:
        """The rest at the answer's end: an unclosed call is read as far as it goes, else given back as content."""
        rest, self._buffer = self._buffer, ""
        if not self._in_call:
            return self._content(rest), []
        self._in_call = False
        if self._streaming is not None:  # named and partly streamed: it stays a call, cut off where the answer ends
            deltas = self._streamed_piece(rest, len(rest))
            self._streaming = None
            return "", deltas
        if self._parser == "llama3_json":
            calls = read_llama3_calls(rest)
            return ("", self._add(calls)) if calls else (rest, [])
        call = read_call(rest)  # a closing tag that ended a call was read by `feed`
        return ("", self._add([call])) if call else (HERMES_OPEN + rest, [])

    def _hermes(self) -> tuple[str, list[CallDelta]]:
        content: list[str] = []
        deltas: list[CallDelta] = []
        while True:
            if self._in_call and self._stream_arguments(deltas):
                if self._in_call:
                    break
                continue
            if self._in_call:
                end = self._buffer.find(HERMES_CLOSE, self._searched)
                if end < 0:
                    self._searched = max(0, len(self._buffer) - len(HERMES_CLOSE) + 1)
                    break
                call = read_call(self._buffer[:end])
                if call is None:  # a closing tag inside the call's strings, or no call: read on
                    self._searched = end + 1
                    continue
                self._buffer, self._in_call, self._searched = self._buffer[end + len(HERMES_CLOSE) :], False, 0
                deltas += self._add([call])
                continue
            start = self._buffer.find(HERMES_OPEN)
            if start >= 0:
                content.append(self._content(self._buffer[:start]))
                self._buffer, self._in_call = self._buffer[start + len(HERMES_OPEN) :], True
                continue
            keep = _partial_tag(self._buffer, HERMES_OPEN)
            content.append(self._content(self._buffer[: len(self._buffer) - keep]))
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return "".join(content), deltas

    def _stream_arguments(self, deltas: list[CallDelta]) -> bool:
        """Stream the open call's arguments when it is written as `_STREAMABLE` (announcing its name first); False
        for a call that is not (it is read whole at its closing tag). Leaves the call once its object and tag end."""
        if self._streaming is None:
            opened = _STREAMABLE.match(self._buffer)
            if opened is None:
                return False
            self._streaming = _StreamedArguments(len(self.calls), opened.end() - 1)
            self.calls.append(ParsedCall(json.loads(opened.group(1)), ""))
            deltas.append(CallDelta(self._streaming.index, self.calls[-1].name, ""))
        streaming = self._streaming
        if streaming.end is None:
            try:
                streaming.end = _DECODER.raw_decode(self._buffer, streaming.start)[1]
            except ValueError:  # the object is still open: all of it so far is arguments
                deltas += self._streamed_piece(self._buffer, len(self._buffer))
                return True
            deltas += self._streamed_piece(self._buffer, streaming.end)
        close = self._buffer.find(HERMES_CLOSE, streaming.end)
        if close >= 0:
            self._buffer, self._in_call, self._streaming = self._buffer[close + len(HERMES_CLOSE) :], False, None
        return True

    def _streamed_piece(self, text: str, upto: int) -> list[CallDelta]:
        """The arguments text the open call has gained, `text` being read up to `upto` (no delta when none)."""
        streaming = self._streaming
        assert streaming is not None
        call = self.calls[streaming.index]
        end = upto if streaming.end is None else min(upto, streaming.end)
        piece = text[streaming.start + len(call.arguments) : end]
        if not piece:
            return []
        self.calls[streaming.index] = replace(call, arguments=call.arguments + piece)
        return [CallDelta(streaming.index, None, piece)]

    def _llama3(self) -> tuple[str, list[CallDelta]]:
        if self._in_call:
            return "", []
        if not self._started:
            stripped = self._buffer.lstrip()
            if not stripped:
                return "", []
            self._started = True
            if stripped.startswith("{"):
                self._in_call = True
                return "", []
        text, self._buffer = self._buffer, ""
        return text, []

    def _content(self, text: str) -> str:
        """Content text; after a call, only what is more than the whitespace between calls."""
        if self.calls and not text.strip():
            return ""
        return text

    def _add(self, calls: list[ParsedCall]) -> list[CallDelta]:
        first = len(self.calls)
        self.calls += calls
        return [CallDelta(first + i, call.name, call.arguments) for i, call in enumerate(calls)]


@dataclass
class _StreamedArguments:
    """A hermes call whose arguments stream: its index, where its object starts in the buffer, and where it ends
    once `raw_decode` has read it whole (what was sent is the call's `arguments` so far)."""

    index: int
    start: int
    end: int | None = None


def _partial_tag(text: str, tag: str) -> int:
    """How many of the text's last characters could still be the start of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
