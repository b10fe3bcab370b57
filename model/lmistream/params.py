"""Request parsing: the LMI/TGI request body to a validated `GenerationRequest`, normalised then verified.

Every error is an `InvalidRequest` (HTTP 400) that names the field and its allowed range, raised before the
request reaches the engine. TGI's and vLLM's parameter names are read too (`stop`, `ignore_eos`), and the TGI
parameters this handler does not implement are accepted at their neutral value only, so `huggingface_hub`'s client
works unmodified. `do_sample` follows DJL newest: omitted, a request that sets a sampling parameter samples. OpenAI
chat and completions bodies are read by `chat` and `completions`, into the same `GenerationRequest`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .structured import Constraint, from_response_format, from_structured_outputs, from_tgi_grammar, one_of

#: the most tokens one request may ask to generate, and the most option.max_new_tokens may default to
MAX_NEW_TOKENS = 1_000_000
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256
#: every parameter name the LMI body may carry (TGI's neutral-only ones aside)
PARAMETERS = (
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
    "response_format",
    "structured_outputs",
    "grammar",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "stop_token_ids",
    "ignore_eos",
    "ignore_eos_token",
    "truncate",
    "top_n_tokens",
    "decoder_input_details",
    "best_of",
    "n",
)
#: TGI parameters accepted only at the value that changes nothing
NEUTRAL_TGI_PARAMETERS = {
    "watermark": False,
    "typical_p": 1,
}
#: parameters that make a request sample when it does not say `do_sample` (DJL newest's rule)
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k", "min_p")
MAX_STOP_TOKEN_IDS = 64
#: the most alternatives per token a request may ask for (TGI's `top_n_tokens`, OpenAI's `top_logprobs`)
MAX_TOP_LOGPROBS = 20
#: the most sequences one request may ask for (TGI's `best_of`, DJL's `n`), each generated as its own row
MAX_SEQUENCES = 16


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
    min_p: float = 0.0
    frequency_penalty: float = 0.0  # vLLM's and OpenAI's: minus this times the token's count in the output so far
    presence_penalty: float = 0.0  # minus this for every token already in the output
    stop_token_ids: tuple[int, ...] = ()  # generating one of these ends the request (its text is not emitted)
    ignore_eos: bool = False  # generate until max_new_tokens (or a stop), eos tokens included
    truncate: int | None = None  # keep only the prompt's last `truncate` tokens
    top_logprobs: int = 0  # the most likely alternatives (and their log-probabilities) to report per token
    prompt_logprobs: bool = False  # report the prompt tokens' log-probabilities (TGI's `decoder_input_details`)
    best_of: int = 1  # TGI's: sample this many sequences, answer the likeliest and list the others
    n: int = 1  # DJL's (vLLM's): answer this many sequences, the first and the others listed
    adapter: str | None = None  # the LoRA adapter that generates (None: the base model); see `adapters`
    constraint: Constraint | None = None  # structured output: what the answer must match (`structured`)


@dataclass(frozen=True)
class ChatOptions:
    """What shapes an OpenAI answer (chat or completions) beyond the generated tokens (read from the body by `chat`
    or `completions`)."""

    model: str | None = None
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    logprobs: bool = False
    tool_calls: bool = False  # the answer is a forced tool call (`tool_calls`), given back as `tool_calls`
    tool_parser: str | None = None  # tool_choice "auto": the answer's calls in the model's syntax (`tool_parsers`)
    echo: bool = False  # completions: the prompt comes before the completion
    n: int = 1  # choices asked for, each generated as its own row (`generation_group`)
    index: int = 0  # which choice this row's answer is


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: the prompt, its parameters and whether the client asked for a stream.

    A chat request (`api="chat"`) carries its `messages`, the `tools` its chat template renders, and `chat`
    options; its `inputs` is the rendered conversation, set once the tokenizer's chat template has run. A completions
    request (`api="completion"`) carries its `chat` options and its prompt as `inputs`.
    """

    inputs: str
    params: GenerationParams
    stream: bool | None = None
    api: str = "lmi"
    messages: tuple[dict[str, Any], ...] = ()
    chat: ChatOptions | None = None
    tools: tuple[dict[str, Any], ...] = ()


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


def batch_inputs(payload: Mapping[str, Any], limit: int) -> list[str] | None:
    """The prompts of an LMI body whose `inputs` is a list of several (None otherwise: one prompt), each checked; a
    list longer than `limit` (the rows of the batch) is refused."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) < 2:
        return None
    if len(inputs) > limit:
        raise InvalidRequest(
            f"inputs holds {len(inputs)} prompts; at most {limit} (option.max_rolling_batch_size) in one request",
            param="inputs",
        )
    for index, prompt in enumerate(inputs):
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest(f"inputs[{index}] must be a non-empty string", param=f"inputs[{index}]")
        check_text(f"inputs[{index}]", prompt)
    return list(inputs)


def parse_parameters(raw: Mapping[str, Any], default_max_new_tokens: int) -> GenerationParams:
    """Normalise then verify `parameters`; unknown ones are rejected, never ignored (the engine refuses what it
    cannot honour: `Engine.validate`)."""
    unknown = sorted(set(raw) - set(PARAMETERS) - set(NEUTRAL_TGI_PARAMETERS))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter {unknown[0]!r}; supported: {', '.join(PARAMETERS)}", param=f"parameters.{unknown[0]}"
        )
    r = Reader(raw, "parameters.")
    for name, neutral in NEUTRAL_TGI_PARAMETERS.items():
        r.neutral(name, neutral)
    if "stop" in raw and "stop_sequences" in raw:
        raise InvalidRequest("give parameters.stop or parameters.stop_sequences, not both", param="parameters.stop")
    if "ignore_eos" in raw and "ignore_eos_token" in raw:
        raise InvalidRequest("give parameters.ignore_eos or ignore_eos_token, not both", param="parameters.ignore_eos")
    stops = r.stop_sequences("stop" if "stop" in raw else "stop_sequences")
    do_sample, temperature = _sampling(r, raw)
    params = GenerationParams(
        max_new_tokens=r.integer("max_new_tokens", 1, MAX_NEW_TOKENS, default_max_new_tokens),
        do_sample=do_sample,
        temperature=temperature,
        top_p=r.number("top_p", 0.0, 1.0, 1.0, open_low=True),
        top_k=r.integer("top_k", 0, 1_000_000, 0),
        seed=r.integer("seed", 0, 2**63 - 1, None),
        repetition_penalty=r.number("repetition_penalty", 0.0, 100.0, 1.0, open_low=True),
        stop_sequences=stops,
        details=r.boolean("details", False),
        return_full_text=r.boolean("return_full_text", False),
        constraint=one_of(
            from_response_format(raw.get("response_format"), "parameters.response_format"),
            from_structured_outputs(raw.get("structured_outputs")),
            from_tgi_grammar(raw.get("grammar")),
        ),
        min_p=r.number("min_p", 0.0, 1.0, 0.0),
        frequency_penalty=r.number("frequency_penalty", -2.0, 2.0, 0.0),
        presence_penalty=r.number("presence_penalty", -2.0, 2.0, 0.0),
        stop_token_ids=r.token_ids("stop_token_ids"),
        ignore_eos=r.boolean("ignore_eos_token" if "ignore_eos_token" in raw else "ignore_eos", False),
        truncate=r.integer("truncate", 1, 1_000_000, None),
        top_logprobs=r.integer("top_n_tokens", 0, MAX_TOP_LOGPROBS, 0),
        prompt_logprobs=r.boolean("decoder_input_details", False),
        best_of=r.integer("best_of", 1, MAX_SEQUENCES, 1),
        n=r.integer("n", 1, MAX_SEQUENCES, 1),
    )
    _check_sequences(params)
    return params


def _check_sequences(params: GenerationParams) -> None:
    """TGI's rules for `best_of` (it samples; the likeliest of several only differs from the others when sampled),
    and one of `best_of` and `n`."""
    if params.best_of > 1 and params.n > 1:
        raise InvalidRequest("give parameters.best_of or parameters.n, not both", param="parameters.best_of")
    if params.best_of > 1 and not params.do_sample:
        raise InvalidRequest(
            "parameters.best_of > 1 needs sampling (do_sample=true, or a temperature, top_k, top_p or min_p)",
            param="parameters.best_of",
        )


def _sampling(r: Reader, raw: Mapping[str, Any]) -> tuple[bool, float]:
    """`do_sample` and the temperature as DJL newest reads them: without `do_sample`, a request that sets a sampling
    parameter samples, and temperature 0 is greedy (vLLM's rule); with do_sample=true the temperature must be > 0."""
    temperature = r.number("temperature", 0.0, 100.0, 1.0)
    asked = r.optional_boolean("do_sample")
    if asked and temperature == 0:
        raise InvalidRequest(
            "parameters.temperature must be > 0 with do_sample=true (temperature 0 is greedy: omit do_sample)",
            param="parameters.temperature",
        )
    if asked is None:
        asked = temperature > 0 and any(raw.get(name) is not None for name in SAMPLING_PARAMETERS)
    return asked, temperature or 1.0


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
        value = self.optional_boolean(key)
        return default if value is None else value

    def optional_boolean(self, key: str) -> bool | None:
        value = self._get(key)
        if value is not None and not isinstance(value, bool):
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

    def token_ids(self, key: str, limit: int = MAX_STOP_TOKEN_IDS) -> tuple[int, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise self._invalid(key, "must be a list of token ids (integers)")
        if len(value) > limit or any(not 0 <= i < 2**31 for i in value):
            raise self._invalid(key, f"must hold at most {limit} ids, each between 0 and {2**31 - 1}")
        return tuple(value)

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
