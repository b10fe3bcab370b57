"""Output formatters: per-request stream events to the exact bytes LMI 0.23, newest LMI and TGI clients expect.

Pure: a formatter instance belongs to one request and only remembers whether it has written before. The
registry maps (name, DJL generation) to a formatter class and its content type, because the same option name
(`jsonlines`, `json`) means different bytes in the two LMI generations.
A user formatter is a plain function `fn(event: StreamEvent) -> str` named by `option.output_formatter`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

from .dialect import DjlGeneration
from .errors import error_body
from .textstream import FinishReason, Token


@dataclass(frozen=True)
class StreamEvent:
    """What happened to one request in one step: a token and, on the last event, the final result."""

    index: int  # 0 for the request's first event
    token: Token | None
    last: bool = False
    generated_text: str | None = None  # the whole text, on the last event (prompt first if return_full_text)
    finish_reason: FinishReason | None = None
    generated_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache held, on the last event
    inputs: str | None = None  # the prompt, for details
    details: bool = False  # whether the request asked for details
    error: str | None = None
    code: int | None = None
    seed: int | None = None  # the request's seed, for details

    @property
    def text(self) -> str:
        return self.token.text if self.token else ""

    def details_dict(self) -> dict[str, Any]:
        out = {"finish_reason": _reason(self), "generated_tokens": self.generated_tokens}
        if self.inputs is not None:
            out["inputs"] = self.inputs
        return out


def _reason(event: StreamEvent) -> str | None:
    return event.finish_reason.value if event.finish_reason else None


class Formatter:
    """Base: turns one request's events into text; `write` is called once per event, in order."""

    content_type = "text/plain"
    top_tokens = False  # whether its output shows each token's most likely alternatives

    def write(self, event: StreamEvent) -> str:
        raise NotImplementedError

    def error(self, event: StreamEvent) -> str:
        """The in-band error for a request that already streamed bytes (or failed before its first token)."""
        return json.dumps({"code": event.code, "error": event.error}) + "\n"

    def error_body(self, message: str, code: int) -> str:
        """The whole body of a non-streaming request that failed."""
        return error_body("lmi", message, code)


class Raw(Formatter):
    """`none`: the raw token text."""

    def write(self, event: StreamEvent) -> str:
        return event.text

    def error(self, event: StreamEvent) -> str:
        return str(event.error)


class Json023(Formatter):
    """LMI 0.23 `json`: one object streamed in pieces: `{"generated_text": "` ... `"}`."""

    content_type = "application/json"

    def __init__(self) -> None:
        self._opened = False

    def write(self, event: StreamEvent) -> str:
        piece = json.dumps(event.text)[1:-1]
        if not self._opened:
            self._opened = True
            piece = '{"generated_text": "' + piece
        return piece + ('"}' if event.last else "")

    def error(self, event: StreamEvent) -> str:
        prefix = '"}' if self._opened else ""
        return prefix + json.dumps({"code": event.code, "error": event.error})


class JsonLines023(Formatter):
    """LMI 0.23 `jsonlines`: `{"outputs": [" a"]}` per token with text, no summary line."""

    content_type = "application/jsonlines"

    def write(self, event: StreamEvent) -> str:
        return json.dumps({"outputs": [event.text]}) + "\n" if event.text else ""


class JsonNewest(Formatter):
    """Newest LMI `json`: nothing until the end, then `{"generated_text": ...}` (+ details)."""

    content_type = "application/json"

    def write(self, event: StreamEvent) -> str:
        if not event.last:
            return ""
        out: dict[str, Any] = {"generated_text": event.generated_text}
        if event.details:
            out["details"] = event.details_dict()
        return json.dumps(out, ensure_ascii=False)

    def error(self, event: StreamEvent) -> str:
        details = {"finish_reason": "error", "generated_tokens": event.generated_tokens}
        body = {"generated_text": None, "error": event.error, "code": event.code, "details": details}
        return json.dumps(body, ensure_ascii=False)


class TgiJson(JsonNewest):
    """`json` with option.tgi_compat (DJL's TGI shape): the newest object, details included, in a one-item array."""

    def write(self, event: StreamEvent) -> str:
        body = super().write(replace(event, details=True))
        return f"[{body}]" if body else ""


class JsonLinesNewest(Formatter):
    """Newest LMI `jsonlines`: a token line per token; the last adds generated_text (and details)."""

    content_type = "application/jsonlines"

    def write(self, event: StreamEvent) -> str:
        out: dict[str, Any] = {}
        if event.token is not None:
            token = {"id": event.token.id, "text": event.token.text, "log_prob": event.token.log_prob}
            if event.token.special:
                token["special_token"] = True
            out["token"] = token
        if event.last:
            out["generated_text"] = event.generated_text
            if event.details:
                out["details"] = event.details_dict()
        return json.dumps(out, ensure_ascii=False) + "\n"

    def error(self, event: StreamEvent) -> str:
        out = {"token": None, "error_msg": event.error, "code": event.code, "details": {"finish_reason": "error"}}
        return json.dumps(out, ensure_ascii=False) + "\n"


class TgiSse(Formatter):
    """TGI-compatible `sse`: `data:{"token":{...},"generated_text":...,"details":...}` + blank line."""

    content_type = "text/event-stream"
    top_tokens = True

    def write(self, event: StreamEvent) -> str:
        token = event.token
        body: dict[str, Any] = {
            "token": None
            if token is None
            else {"id": token.id, "text": token.text, "logprob": token.log_prob, "special": token.special},
            "generated_text": event.generated_text if event.last else None,
            "details": _tgi_details(event) if event.last and event.details else None,
        }
        if token is not None and token.top:
            body["top_tokens"] = [
                {"id": top.id, "text": top.text, "logprob": top.log_prob, "special": top.special} for top in token.top
            ]
        return "data:" + _compact(body) + "\n\n"

    def error(self, event: StreamEvent) -> str:
        return "data:" + self.error_body(str(event.error), event.code or 424) + "\n\n"

    def error_body(self, message: str, code: int) -> str:
        return error_body("tgi", message, code)


class Custom(Formatter):
    """A user's function `fn(event) -> str`; errors use the jsonlines error line."""

    content_type = "application/jsonlines"

    def __init__(self, fn: Callable[[StreamEvent], str]) -> None:
        self._fn = fn

    def write(self, event: StreamEvent) -> str:
        return self._fn(event)


def _tgi_details(event: StreamEvent) -> dict[str, Any]:
    return {"finish_reason": _reason(event), "generated_tokens": event.generated_tokens, "seed": event.seed}


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


REGISTRY: dict[tuple[str, DjlGeneration], type[Formatter]] = {
    ("json", DjlGeneration.LMI_0_23): Json023,
    ("jsonlines", DjlGeneration.LMI_0_23): JsonLines023,
    ("none", DjlGeneration.LMI_0_23): Raw,
    ("sse", DjlGeneration.LMI_0_23): TgiSse,
    ("json", DjlGeneration.NEWEST): JsonNewest,
    ("jsonlines", DjlGeneration.NEWEST): JsonLinesNewest,
    ("none", DjlGeneration.NEWEST): Raw,
    ("sse", DjlGeneration.NEWEST): TgiSse,
}


def builtin_names() -> list[str]:
    return sorted({name for name, _ in REGISTRY})
