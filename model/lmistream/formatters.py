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
from .textstream import FinishReason, Token, TopToken


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
    #: the prompt's tokens and their log-probabilities (the first None), when asked (`decoder_input_details`)
    prefill: tuple[Token, ...] | None = None

    @property
    def text(self) -> str:
        return self.token.text if self.token else ""

    def details_dict(self, tgi: bool = False) -> dict[str, Any]:
        """DJL's details: TGI's token fields (`logprob`, `special`) with option.tgi_compat, LMI's otherwise."""
        out: dict[str, Any] = {"finish_reason": _reason(self), "generated_tokens": self.generated_tokens}
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.prefill is not None:
            out["prefill"] = [token_dict(token, tgi) for token in self.prefill]
        return out


def token_dict(token: Token | TopToken, tgi: bool) -> dict[str, Any]:
    """A token as DJL's `Token.as_tgi_dict` (tgi) or `Token.as_dict` writes it: `special` only when it is."""
    if tgi:
        out: dict[str, Any] = {"id": token.id, "text": token.text, "logprob": token.log_prob}
        if token.special:
            out["special"] = True
        return out
    out = {"id": token.id, "text": token.text, "log_prob": token.log_prob}
    if token.special:
        out["special_token"] = True
    return out


def _reason(event: StreamEvent) -> str | None:
    return event.finish_reason.value if event.finish_reason else None


class Formatter:
    """Base: turns one request's events into text; `write` is called once per event, in order."""

    content_type = "text/plain"
    top_tokens = False  # whether its output shows each token's most likely alternatives
    prefill = False  # whether its output shows the prompt's tokens (`decoder_input_details`)

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
    prefill = True
    tgi = False  # TGI's token fields in details

    def write(self, event: StreamEvent) -> str:
        if not event.last:
            return ""
        out: dict[str, Any] = {"generated_text": event.generated_text}
        if event.details:
            out["details"] = event.details_dict(self.tgi)
        return json.dumps(out, ensure_ascii=False)

    def error(self, event: StreamEvent) -> str:
        details = {"finish_reason": "error", "generated_tokens": event.generated_tokens}
        body = {"generated_text": None, "error": event.error, "code": event.code, "details": details}
        return json.dumps(body, ensure_ascii=False)


class TgiJson(JsonNewest):
    """`json` with option.tgi_compat (DJL's TGI shape): the newest object, details included, in a one-item array."""

    tgi = True

    def write(self, event: StreamEvent) -> str:
        body = super().write(replace(event, details=True))
        return f"[{body}]" if body else ""


class JsonLinesNewest(Formatter):
    """Newest LMI `jsonlines`: a token line per token; the last adds generated_text (and details)."""

    content_type = "application/jsonlines"
    prefill = True

    def write(self, event: StreamEvent) -> str:
        out: dict[str, Any] = {}
        if event.token is not None:
            out["token"] = token_dict(event.token, tgi=False)
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


class SequenceJson(Formatter):
    """One of several sequences of a request (DJL's `n`, TGI's `best_of`): on its last event, its text and DJL's
    details of a sequence (its tokens, the prompt's and the top tokens where asked) as one JSON object, which
    `sequences_answer` composes with the others'."""

    content_type = "application/json"
    top_tokens = True
    prefill = True

    def __init__(self, tgi: bool, top_tokens: bool) -> None:
        self._tgi = tgi
        self._show_top = top_tokens
        self._tokens: list[Token] = []

    def write(self, event: StreamEvent) -> str:
        if event.token is not None:
            self._tokens.append(event.token)
        if not event.last:
            return ""
        details: dict[str, Any] = {
            "finish_reason": _reason(event),
            "generated_tokens": event.generated_tokens,
            "tokens": [token_dict(token, self._tgi) for token in self._tokens],
        }
        if event.prefill is not None:
            details["prefill"] = [token_dict(token, self._tgi) for token in event.prefill]
        if self._show_top:
            details["top_tokens"] = [[token_dict(top, self._tgi) for top in token.top] for token in self._tokens]
        return json.dumps({"generated_text": event.generated_text, "details": details}, ensure_ascii=False)


def sequences_answer(answers: list[str], inputs: str, likeliest: bool, tgi: bool) -> str:
    """DJL newest's answer to a request of several sequences (its `_json_output_formatter_best_of`): the chosen
    sequence's text and details (`inputs` first), and every other one, with its text, in `details.best_of_sequences`;
    in a one-item array with option.tgi_compat. The chosen one is the first (DJL's `n`: vLLM's first output), or with
    `likeliest` the one of highest total log-probability (TGI's `best_of`). The prompt's tokens, where asked, come
    from the first answer (only its row computes them) and go into every sequence's details."""
    sequences = [json.loads(answer) for answer in answers]
    prefill = sequences[0]["details"].get("prefill")
    for sequence in sequences:
        sequence["details"] = _with_prefill(sequence["details"], prefill)
    chosen = max(range(len(sequences)), key=lambda i: _total_log_prob(sequences[i], tgi)) if likeliest else 0
    details = {"inputs": inputs, **sequences[chosen]["details"]}
    others = [{**s["details"], "generated_text": s["generated_text"]} for i, s in enumerate(sequences) if i != chosen]
    if others:
        details["best_of_sequences"] = others
    result: Any = {"generated_text": sequences[chosen]["generated_text"], "details": details}
    return json.dumps([result] if tgi else result, ensure_ascii=False)


def _with_prefill(details: dict[str, Any], prefill: list[Any] | None) -> dict[str, Any]:
    """A sequence's details with the prompt's tokens after its own, where DJL puts them (before `top_tokens`)."""
    if prefill is None:
        return details
    out = {key: value for key, value in details.items() if key not in ("prefill", "top_tokens")}
    out["prefill"] = prefill
    if "top_tokens" in details:
        out["top_tokens"] = details["top_tokens"]
    return out


def _total_log_prob(sequence: dict[str, Any], tgi: bool) -> float:
    key = "logprob" if tgi else "log_prob"
    return float(sum(token[key] or 0.0 for token in sequence["details"]["tokens"]))


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
