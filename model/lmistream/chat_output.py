"""OpenAI chat output: a request's stream events as `chat.completion.chunk` SSE events, or one `chat.completion`.

Pure: one formatter per request, given the request's id, creation time, model name and prompt size. The stream
sends the assistant role first, then one content delta per token with text, then the finish reason, then (when
asked for with `stream_options.include_usage`) a usage chunk, and ends with `data: [DONE]`. A failure mid-stream is
an `{"error": {...}}` event, as OpenAI-compatible servers send it, which the `openai` client raises as an APIError.
Log-probabilities list each non-special token with the text it released. A forced tool call's answer (a JSON array of
calls, `tool_calls`) is given back as the message's `tool_calls`: streamed as OpenAI streams them, each call's id and
name first and then its arguments text in pieces, under `delta.tool_calls[].index`; finish reason "tool_calls".
Under tool_choice "auto" the answer is read with the model's call syntax (`tool_parsers.ToolTextStream`): its content
streams as content, each call as the parser gives it (a hermes call its id and name, then its arguments in pieces;
another call whole, in one delta, once it closed), and the finish reason is "tool_calls" when the answer holds a call.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import error_body
from .formatters import Formatter, StreamEvent
from .params import ChatOptions
from .textstream import FinishReason, Token
from .tool_calls import CallDelta, CallScanner
from .tool_parsers import ToolTextStream, parse


class ChatFormatter(Formatter):
    """What both chat shapes share: identity, usage, log-probabilities and the OpenAI error object."""

    top_tokens = True

    def __init__(self, completion_id: str, created: int, model: str, prompt_tokens: int, options: ChatOptions) -> None:
        self._id = completion_id
        self._created = created
        self._model = options.model or model
        self._prompt_tokens = prompt_tokens
        self._options = options

    def error(self, event: StreamEvent) -> str:
        return self.error_body(str(event.error), event.code or 424)

    def error_body(self, message: str, code: int) -> str:
        return error_body("chat", message, code)

    def _call_id(self, index: int) -> str:
        return f"call_{self._id[-16:]}_{index}"

    def _finish_reason(self, event: StreamEvent, called: bool) -> str:
        """OpenAI's name for why the answer ended: "tool_calls" when it holds calls, "length", else "stop" (an eos
        token or a stop sequence)."""
        return "tool_calls" if called else finish_reason(event)

    def _call(self, index: int, name: str | None, arguments: str) -> dict[str, Any]:
        return {"id": self._call_id(index), "type": "function", "function": {"name": name, "arguments": arguments}}

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self._id, "object": kind, "created": self._created, "model": self._model}

    def _usage(self, event: StreamEvent) -> dict[str, Any]:
        """OpenAI's usage block of the last event; `cached_tokens` as vLLM reports its prefix-cache hits."""
        return {
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": event.generated_tokens,
            "total_tokens": self._prompt_tokens + event.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": event.cached_tokens},
        }

    def _logprob(self, token: Token | None) -> list[dict[str, Any]]:
        if not self._options.logprobs or token is None or token.special:
            return []
        return [
            {
                "token": token.text,
                "logprob": token.log_prob,
                "bytes": list(token.text.encode("utf-8")),
                "top_logprobs": [
                    {"token": top.text, "logprob": top.log_prob, "bytes": list(top.text.encode("utf-8"))}
                    for top in token.top
                ],
            }
        ]


class ChatCompletionChunks(ChatFormatter):
    """`stream: true`: `chat.completion.chunk` server-sent events."""

    content_type = "text/event-stream"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls = CallScanner() if self._options.tool_calls else None
        parser = self._options.tool_parser
        self._parsed = ToolTextStream(parser) if parser is not None else None

    def write(self, event: StreamEvent) -> str:
        out = []
        if event.index == 0:
            out.append(self._chunk({"role": "assistant", "content": None if self._calls else ""}))
        delta = self._delta(event.text) if event.text else {}
        if delta:
            out.append(self._chunk(delta, logprobs=self._logprob(event.token)))
        if event.last:
            rest = self._parsed_delta(*self._parsed.finish()) if self._parsed is not None else {}
            if rest:
                out.append(self._chunk(rest))
            out.append(self._chunk({}, finish_reason=self._finish_reason(event, self._called())))
            if self._options.include_usage:
                out.append(
                    sse(
                        {
                            **self._envelope("chat.completion.chunk"),
                            "choices": [],
                            "usage": self._usage(event),
                        }
                    )
                )
            out.append("data: [DONE]\n\n")
        return "".join(out)

    def error(self, event: StreamEvent) -> str:
        return "data: " + super().error(event) + "\n\ndata: [DONE]\n\n"

    def _delta(self, text: str) -> dict[str, Any]:
        """The text's delta: its content, or the calls it adds to (none while it spells only the array's syntax, or
        while it may still start a call in the model's syntax)."""
        if self._parsed is not None:
            return self._parsed_delta(*self._parsed.feed(text))
        if self._calls is None:
            return {"content": text}
        calls = [self._call_delta(delta) for delta in self._calls.feed(text)]
        return {"tool_calls": calls} if calls else {}

    def _parsed_delta(self, content: str, deltas: list[CallDelta]) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": content} if content else {}
        if deltas:
            delta["tool_calls"] = [self._call_delta(call) for call in deltas]
        return delta

    def _called(self) -> bool:
        if self._parsed is not None:
            return bool(self._parsed.calls)
        return self._calls is not None and self._calls.complete

    def _call_delta(self, delta: CallDelta) -> dict[str, Any]:
        if delta.name is None:
            return {"index": delta.index, "function": {"arguments": delta.arguments}}
        return {"index": delta.index, **self._call(delta.index, delta.name, delta.arguments)}

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: list[dict[str, Any]] | None = None
    ) -> str:
        choice = {
            "index": self._options.index,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": finish_reason,
        }
        chunk = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        if self._options.include_usage:
            chunk["usage"] = None
        return sse(chunk)


class ChatCompletion(ChatFormatter):
    """`stream: false` (OpenAI's default): one `chat.completion` object once the answer is complete."""

    content_type = "application/json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._logprobs: list[dict[str, Any]] = []

    def write(self, event: StreamEvent) -> str:
        self._logprobs.extend(self._logprob(event.token))
        if not event.last:
            return ""
        message = self._message(event.generated_text or "")
        choice = {
            "index": self._options.index,
            "message": message,
            "logprobs": {"content": self._logprobs} if self._options.logprobs else None,
            "finish_reason": self._finish_reason(event, "tool_calls" in message),
        }
        return json.dumps(
            {**self._envelope("chat.completion"), "choices": [choice], "usage": self._usage(event)},
            ensure_ascii=False,
        )

    def _message(self, text: str) -> dict[str, Any]:
        """The assistant's message: its text, and the calls it holds (a forced call's array, or calls in the model's
        syntax under "auto")."""
        if self._options.tool_parser is not None:
            content, parsed = parse(self._options.tool_parser, text)
            calls = [self._call(index, call.name, call.arguments) for index, call in enumerate(parsed)]
            return _assistant(content.strip() or None if calls else content, calls)
        if not self._options.tool_calls:
            return _assistant(text, [])
        scanner = CallScanner()
        scanner.feed(text)
        if not scanner.complete:
            return _assistant(text, [])
        calls = [self._call(index, call.name, scanner.arguments(index)) for index, call in enumerate(scanner.calls)]
        return _assistant(None, calls)


def _assistant(content: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def merge_choices(answers: list[str]) -> str:
    """One answer holding the choices of several (one per row of an `n` request, in order), their usage summed."""
    parsed = [json.loads(answer) for answer in answers]
    completion_tokens = sum(answer["usage"]["completion_tokens"] for answer in parsed)
    usage = {**parsed[0]["usage"], "completion_tokens": completion_tokens}
    usage["total_tokens"] = usage["prompt_tokens"] + completion_tokens
    merged = {**parsed[0], "choices": [choice for answer in parsed for choice in answer["choices"]], "usage": usage}
    return json.dumps(merged, ensure_ascii=False)


def finish_reason(event: StreamEvent) -> str:
    """OpenAI's name for why the answer ended: "length", else "stop" (an eos token or a stop sequence)."""
    return "length" if event.finish_reason is FinishReason.LENGTH else "stop"


def sse(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n"
