"""OpenAI completions output: a request's stream events as `text_completion` SSE chunks, or one `text_completion`.

Pure: one formatter per request, as for chat (`chat_output`). The stream sends one chunk per token with text (the
prompt first when `echo` is set), then the finish reason, then (with `stream_options.include_usage`) a usage chunk,
and ends with `data: [DONE]`. Log-probabilities take the legacy shape: `tokens`, `token_logprobs`, `top_logprobs`
(the `logprobs` most likely tokens, and the chosen one) and `text_offset`, each chosen token being the text it
released into the answer, each alternative its own text.
"""

from __future__ import annotations

import json
from typing import Any

from .chat_output import ChatFormatter, finish_reason, sse
from .formatters import StreamEvent
from .params import ChatOptions
from .textstream import Token


class CompletionFormatter(ChatFormatter):
    """What both completions shapes share: the legacy log-probabilities, offsets counted through the answer."""

    def __init__(
        self, completion_id: str, created: int, model: str, prompt_tokens: int, options: ChatOptions, prompt: str
    ) -> None:
        super().__init__(completion_id, created, model, prompt_tokens, options)
        self._prompt = prompt
        self._offset = len(prompt) if options.echo else 0

    def _legacy_logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        if not self._options.logprobs:
            return None
        chosen = [token for token in tokens if not token.special]
        offsets = []
        for token in chosen:
            offsets.append(self._offset)
            self._offset += len(token.text)
        return {
            "tokens": [token.text for token in chosen],
            "token_logprobs": [token.log_prob for token in chosen],
            "top_logprobs": [_alternatives(token) for token in chosen],
            "text_offset": offsets,
        }

    def _choice(self, text: str, logprobs: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
        return {"index": self._options.index, "text": text, "logprobs": logprobs, "finish_reason": reason}


def _alternatives(token: Token) -> dict[str, float | None]:
    """The most likely tokens at a position, the chosen one always among them (OpenAI's `logprobs + 1` at most)."""
    alternatives: dict[str, float | None] = {top.text: top.log_prob for top in token.top}
    if token.id not in {top.id for top in token.top}:
        alternatives[token.text] = token.log_prob
    return alternatives


class CompletionChunks(CompletionFormatter):
    """`stream: true`: `text_completion` server-sent events."""

    content_type = "text/event-stream"

    def write(self, event: StreamEvent) -> str:
        out = []
        if event.index == 0 and self._options.echo:
            out.append(self._chunk(self._choice(self._prompt, None, None)))
        if event.text:
            tokens = [event.token] if event.token is not None else []
            out.append(self._chunk(self._choice(event.text, self._legacy_logprobs(tokens), None)))
        if event.last:
            out.append(self._chunk(self._choice("", None, finish_reason(event))))
            if self._options.include_usage:
                usage = {
                    **self._envelope("text_completion"),
                    "choices": [],
                    "usage": self._usage(event),
                }
                out.append(sse(usage))
            out.append("data: [DONE]\n\n")
        return "".join(out)

    def error(self, event: StreamEvent) -> str:
        return "data: " + super().error(event) + "\n\ndata: [DONE]\n\n"

    def _chunk(self, choice: dict[str, Any]) -> str:
        chunk = {**self._envelope("text_completion"), "choices": [choice]}
        if self._options.include_usage:
            chunk["usage"] = None
        return sse(chunk)


class Completion(CompletionFormatter):
    """`stream: false` (OpenAI's default): one `text_completion` object once the answer is complete."""

    content_type = "application/json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: list[Token] = []

    def write(self, event: StreamEvent) -> str:
        if event.token is not None:
            self._tokens.append(event.token)
        if not event.last:
            return ""
        choice = self._choice(event.generated_text or "", self._legacy_logprobs(self._tokens), finish_reason(event))
        body = {**self._envelope("text_completion"), "choices": [choice], "usage": self._usage(event)}
        return json.dumps(body, ensure_ascii=False)
