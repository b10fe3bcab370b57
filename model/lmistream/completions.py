"""OpenAI (legacy) completions on `/invocations`: a `{"prompt": ...}` body to a validated `GenerationRequest`.

Pure (no torch, no I/O). The fields follow OpenAI's completions API, its defaults included (16 tokens; temperature 1
samples, temperature 0 is greedy). `echo` puts the prompt before the completion; `logprobs` is the number of top
alternatives per token, listed where the engine computes them (0: each chosen token's own log-probability alone);
`best_of` and a suffix are refused, with an error naming the field. `n` choices are answered
whole (not streamed), each generated as its own row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chat import MAX_STOP, OPENAI_FIELDS, choices, include_usage, text_field
from .errors import InvalidRequest
from .params import MAX_NEW_TOKENS, ChatOptions, GenerationParams, GenerationRequest, Reader, check_text

#: OpenAI's default `max_tokens` for completions
DEFAULT_MAX_TOKENS = 16
#: OpenAI's upper bound on `logprobs`
MAX_LOGPROBS = 5
_FIELDS = ("prompt", *OPENAI_FIELDS, "best_of", "echo", "suffix", "logit_bias")


def is_completion(payload: Mapping[str, Any]) -> bool:
    """Whether a decoded body speaks the completions API (`prompt`, not LMI's `inputs` nor chat's `messages`)."""
    return "prompt" in payload and "inputs" not in payload and "messages" not in payload


def completion_request(payload: Mapping[str, Any]) -> GenerationRequest:
    """Validate a completions body."""
    unknown = sorted(set(payload) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; supported: {', '.join(_FIELDS)}", param=unknown[0])
    r = Reader(payload)
    for name, neutral in (("best_of", 1), ("suffix", None), ("logit_bias", None)):
        r.neutral(name, neutral)
    stream = r.boolean("stream", False)
    temperature = r.number("temperature", 0.0, 2.0, 1.0)
    top_logprobs = r.integer("logprobs", 0, MAX_LOGPROBS, None)
    logprobs = top_logprobs is not None
    echo = r.boolean("echo", False)
    if echo and logprobs:
        raise InvalidRequest(
            "echo with logprobs needs the prompt's log-probabilities, which this handler does not compute; "
            "drop one of them",
            param="echo",
        )
    params = GenerationParams(
        max_new_tokens=r.integer("max_tokens", 1, MAX_NEW_TOKENS, DEFAULT_MAX_TOKENS),
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=r.number("top_p", 0.0, 1.0, 1.0, open_low=True),
        seed=r.integer("seed", 0, 2**63 - 1, None),
        stop_sequences=r.stop_sequences("stop", MAX_STOP),
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
        frequency_penalty=r.number("frequency_penalty", -2.0, 2.0, 0.0),
        presence_penalty=r.number("presence_penalty", -2.0, 2.0, 0.0),
        return_full_text=echo,
    )
    options = ChatOptions(
        model=text_field(payload, "model"),
        include_usage=include_usage(payload, stream),
        logprobs=logprobs,
        echo=echo,
        n=choices(r, stream),
    )
    text_field(payload, "user")
    return GenerationRequest(
        inputs=_prompt(payload["prompt"]), params=params, stream=stream, api="completion", chat=options
    )


def _prompt(raw: Any) -> str:
    """A non-empty string, or a list holding one (several prompts in one request are refused)."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str) or not raw:
        raise InvalidRequest(
            "prompt must be a non-empty string (one prompt per request; token-id prompts are not supported)",
            param="prompt",
        )
    check_text("prompt", raw)
    return raw
