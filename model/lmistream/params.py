"""Request parsing: the LMI/TGI request body to a validated `GenerationRequest`, normalised then verified.

Every error is an `InvalidRequest` (HTTP 400) that names the field and its allowed range, raised before the
request reaches the engine. TGI's parameter names are read too (`stop`), and the TGI parameters this handler does
not implement are accepted at their neutral value only, so `huggingface_hub`'s client works unmodified. OpenAI chat
bodies are read by `chat`, into the same `GenerationRequest`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256
_PARAMETERS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "do_sample",
    "seed",
    "repetition_penalty",
    "stop_sequences",
    "details",
    "return_full_text",
    "stop",
)
#: TGI parameters accepted only at the value that changes nothing
NEUTRAL_TGI_PARAMETERS = {
    "watermark": False,
    "decoder_input_details": False,
    "best_of": 1,
    "top_n_tokens": 0,
    "frequency_penalty": 0,
    "typical_p": 1,
    "truncate": None,
}


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation settings (defaults: greedy, no stop sequences)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop_sequences: tuple[str, ...] = ()
    details: bool = False
    return_full_text: bool = False
    logprobs: bool = False  # report every token's log-probability, greedy ones included (OpenAI's `logprobs`)


@dataclass(frozen=True)
class ChatOptions:
    """What shapes a chat answer beyond the generated tokens (read from the body by `chat`)."""

    model: str | None = None
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    logprobs: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: the prompt, its parameters and whether the client asked for a stream.

    A chat request (`api="chat"`) carries its `messages` and `chat` options; its `inputs` is the rendered
    conversation, set once the tokenizer's chat template has run.
    """

    inputs: str
    params: GenerationParams
    stream: bool | None = None
    api: str = "lmi"
    messages: tuple[dict[str, str], ...] = ()
    chat: ChatOptions | None = None


def parse_request(body: bytes | bytearray, content_type: str | None, default_max_new_tokens: int) -> GenerationRequest:
    """Decode an LMI/TGI request body (JSON, or text/plain as the prompt itself) and validate it."""
    return request_from_payload(decode_body(body, content_type), default_max_new_tokens)


def decode_body(body: bytes | bytearray, content_type: str | None) -> dict[str, Any]:
    """A request body as a JSON object (a text/* body is the prompt itself)."""
    if content_type and content_type.split(";")[0].strip().lower().startswith("text/"):
        payload: Any = {"inputs": bytes(body).decode("utf-8", errors="replace")}
    else:
        try:
            payload = json.loads(bytes(body) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidRequest("request body nests too deeply to parse; a request is one flat JSON object") from None
    if not isinstance(payload, dict):
        raise InvalidRequest('request body must be a JSON object like {"inputs": "...", "parameters": {...}}')
    return payload


def request_from_payload(payload: Mapping[str, Any], default_max_new_tokens: int) -> GenerationRequest:
    """Validate an already decoded payload."""
    unknown = sorted(set(payload) - {"inputs", "parameters", "stream"})
    if unknown:
        raise InvalidRequest(f"unknown top-level field {unknown[0]!r}; allowed: inputs, parameters, stream")
    inputs = payload.get("inputs")
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, str) or not inputs:
        raise InvalidRequest("inputs must be a non-empty string")
    check_text("inputs", inputs)
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(f"stream must be true or false, got {stream!r}")
    raw = payload.get("parameters")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"parameters must be a JSON object, got {_shown(raw)}")
    return GenerationRequest(inputs=inputs, params=parse_parameters(raw, default_max_new_tokens), stream=stream)


def parse_parameters(raw: Mapping[str, Any], default_max_new_tokens: int) -> GenerationParams:
    """Normalise then verify `parameters`; unknown ones are rejected, never ignored (the engine refuses what it
    cannot honour: `Engine.validate`)."""
    unknown = sorted(set(raw) - set(_PARAMETERS) - set(NEUTRAL_TGI_PARAMETERS))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter {unknown[0]!r}; supported: {', '.join(_PARAMETERS)}", param=f"parameters.{unknown[0]}"
        )
    r = Reader(raw, "parameters.")
    for name, neutral in NEUTRAL_TGI_PARAMETERS.items():
        r.neutral(name, neutral)
    if "stop" in raw and "stop_sequences" in raw:
        raise InvalidRequest("give parameters.stop or parameters.stop_sequences, not both", param="parameters.stop")
    stops = r.stop_sequences("stop" if "stop" in raw else "stop_sequences")
    params = GenerationParams(
        max_new_tokens=r.integer("max_new_tokens", 1, 1_000_000, default_max_new_tokens),
        do_sample=r.boolean("do_sample", False),
        temperature=r.number("temperature", 0.0, 100.0, 1.0, open_low=True),
        top_p=r.number("top_p", 0.0, 1.0, 1.0, open_low=True),
        top_k=r.integer("top_k", 0, 1_000_000, 0),
        seed=r.integer("seed", 0, 2**63 - 1, None),
        repetition_penalty=r.number("repetition_penalty", 0.0, 100.0, 1.0, open_low=True),
        stop_sequences=stops,
        details=r.boolean("details", False),
        return_full_text=r.boolean("return_full_text", False),
    )
    return params


def check_text(field: str, text: str) -> None:
    """Text must be encodable: JSON can carry lone surrogates ("\\ud800") that no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{field} holds a lone surrogate at character {exc.start}; send valid Unicode text", param=field
        ) from None


def _is_neutral(value: Any, neutral: Any) -> bool:
    if isinstance(value, bool) or isinstance(neutral, bool):  # false is not 0, nor 1 true
        return value is neutral
    return bool(value == neutral)


def _shown(value: Any) -> str:
    """A short rendering of a rejected value for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Reader:
    """Typed field readers; each error names `<prefix><field>` and its range (`param` names the field)."""

    def __init__(self, raw: Mapping[str, Any], prefix: str = "") -> None:
        self._raw = raw
        self._prefix = prefix

    def _get(self, key: str) -> Any:
        return self._raw.get(key)

    def _invalid(self, key: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{self._prefix}{key} {message}", param=f"{self._prefix}{key}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._invalid(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int, default: Any) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._invalid(key, f"must be an integer between {low} and {high}, got {value!r}")
        if not low <= value <= high:
            raise self._invalid(key, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, key: str, low: float, high: float, default: float, open_low: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        bound = f"in ({low:g}, {high:g}]" if open_low else f"in [{low:g}, {high:g}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._invalid(key, f"must be a number {bound}, got {value!r}")
        if value > high or value < low or (open_low and value == low):
            raise self._invalid(key, f"must be {bound}, got {value:g}")
        return float(value)

    def neutral(self, key: str, neutral: Any) -> None:
        """A setting this handler does not implement: absent, null or its neutral value only."""
        value = self._get(key)
        if value is not None and not _is_neutral(value, neutral):
            shown = "null" if neutral is None else json.dumps(neutral)
            raise self._invalid(key, f"is not supported; only {shown} (the default) is accepted, got {_shown(value)}")

    def stop_sequences(self, key: str, limit: int = MAX_STOP_SEQUENCES) -> tuple[str, ...]:
        field = f"{self._prefix}{key}"
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise self._invalid(key, "must be a list of non-empty strings")
        for stop in value:
            check_text(field, stop)
        if len(value) > limit:
            raise self._invalid(key, f"holds {len(value)} entries; at most {limit}")
        if any(len(s) > MAX_STOP_SEQUENCE_CHARS for s in value):
            raise self._invalid(key, f"entries must be at most {MAX_STOP_SEQUENCE_CHARS} characters")
        return tuple(value)
