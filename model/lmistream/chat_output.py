"""OpenAI chat output: a request's stream events as `chat.completion.chunk` SSE events, or one `chat.completion`.

Pure: one formatter per request, given the request's id, creation time, model name and prompt size. The stream
sends the assistant role first, then one content delta per token with text, then the finish reason, then (when
asked for with `stream_options.include_usage`) a usage chunk, and ends with `data: [DONE]`. A failure mid-stream is
an `{"error": {...}}` event, as OpenAI-compatible servers send it, which the `openai` client raises as an APIError.
Log-probabilities list each non-special token with the text it released.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import error_body
from .formatters import Formatter, StreamEvent
from .params import ChatOptions
from .textstream import FinishReason, Token


class ChatFormatter(Formatter):
    """What both chat shapes share: identity, usage, log-probabilities and the OpenAI error object."""

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

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self._id, "object": kind, "created": self._created, "model": self._model}

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self._prompt_tokens + completion_tokens,
        }

    def _logprob(self, token: Token | None) -> list[dict[str, Any]]:
        if not self._options.logprobs or token is None or token.special:
            return []
        return [
            {
                "token": token.text,
                "logprob": token.log_prob,
                "bytes": list(token.text.encode("utf-8")),
                "top_logprobs": [],
            }
        ]


class ChatCompletionChunks(ChatFormatter):
    """`stream: true`: `chat.completion.chunk` server-sent events."""

    content_type = "text/event-stream"

    def write(self, event: StreamEvent) -> str:
        out = []
        if event.index == 0:
            out.append(self._chunk({"role": "assistant", "content": ""}))
        if event.text:
            out.append(self._chunk({"content": event.text}, logprobs=self._logprob(event.token)))
        if event.last:
            out.append(self._chunk({}, finish_reason=_finish_reason(event)))
            if self._options.include_usage:
                out.append(
                    _sse(
                        {
                            **self._envelope("chat.completion.chunk"),
                            "choices": [],
                            "usage": self._usage(event.generated_tokens),
                        }
                    )
                )
            out.append("data: [DONE]\n\n")
        return "".join(out)

    def error(self, event: StreamEvent) -> str:
        return "data: " + super().error(event) + "\n\ndata: [DONE]\n\n"

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: list[dict[str, Any]] | None = None
    ) -> str:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": finish_reason,
        }
        chunk = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        if self._options.include_usage:
            chunk["usage"] = None
        return _sse(chunk)


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
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": event.generated_text},
            "logprobs": {"content": self._logprobs} if self._options.logprobs else None,
            "finish_reason": _finish_reason(event),
        }
        return json.dumps(
            {**self._envelope("chat.completion"), "choices": [choice], "usage": self._usage(event.generated_tokens)},
            ensure_ascii=False,
        )


def _finish_reason(event: StreamEvent) -> str:
    """OpenAI's name for why the answer ended: "length", else "stop" (an eos token or a stop sequence)."""
    return "length" if event.finish_reason is FinishReason.LENGTH else "stop"


def _sse(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n"
