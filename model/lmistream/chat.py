"""OpenAI chat completions on `/invocations`: a `{"messages": [...]}` body to a validated `GenerationRequest`.

Pure (no torch, no I/O). The fields follow OpenAI's chat completions API; what this handler cannot honour (several
choices, top log-probabilities, penalties, tools) is refused with an error naming the field, never ignored. The
sampling defaults are OpenAI's: temperature 1 samples, temperature 0 is greedy. The conversation is rendered into
the prompt later, by the model's chat template (`Tokenizer.render_chat`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest
from .params import ChatOptions, GenerationParams, GenerationRequest, Reader, check_text

ROLES = ("system", "developer", "user", "assistant", "tool")
#: OpenAI's own limit on stop sequences
MAX_STOP = 4
_FIELDS = (
    "messages",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
    "user",
)
_MESSAGE_FIELDS = ("role", "content", "name")


def is_chat(payload: Mapping[str, Any]) -> bool:
    """Whether a decoded body speaks the chat API."""
    return "messages" in payload


def chat_request(payload: Mapping[str, Any], default_max_new_tokens: int) -> GenerationRequest:
    """Validate a chat body; `inputs` stays empty until the chat template renders `messages`."""
    unknown = sorted(set(payload) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; supported: {', '.join(_FIELDS)}", param=unknown[0])
    r = Reader(payload)
    for name, neutral in (("n", 1), ("top_logprobs", 0), ("frequency_penalty", 0), ("presence_penalty", 0)):
        r.neutral(name, neutral)
    stream = r.boolean("stream", False)
    temperature = r.number("temperature", 0.0, 2.0, 1.0)
    params = GenerationParams(
        max_new_tokens=_max_tokens(r, default_max_new_tokens),
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=r.number("top_p", 0.0, 1.0, 1.0, open_low=True),
        seed=r.integer("seed", 0, 2**63 - 1, None),
        stop_sequences=r.stop_sequences("stop", MAX_STOP),
        logprobs=r.boolean("logprobs", False),
    )
    options = ChatOptions(
        model=_text(payload, "model"), include_usage=_include_usage(payload, stream), logprobs=params.logprobs
    )
    _text(payload, "user")
    return GenerationRequest(
        inputs="", params=params, stream=stream, api="chat", messages=_messages(payload.get("messages")), chat=options
    )


def _max_tokens(r: Reader, default: int) -> int:
    """`max_completion_tokens`, else the older `max_tokens`, else the handler's default."""
    newer = r.integer("max_completion_tokens", 1, 1_000_000, None)
    older = r.integer("max_tokens", 1, 1_000_000, None)
    return next((value for value in (newer, older) if value is not None), default)


def _include_usage(payload: Mapping[str, Any], stream: bool) -> bool:
    options = payload.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidRequest('stream_options must be {"include_usage": true|false}', param="stream_options")
    return Reader(options, "stream_options.").boolean("include_usage", False)


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string", param=key)
    return value


def _messages(raw: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest('messages must be a non-empty list of {"role", "content"} objects', param="messages")
    return tuple(_message(index, message) for index, message in enumerate(raw))


def _message(index: int, message: Any) -> dict[str, str]:
    field = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f'{field} must be an object like {{"role": "user", "content": "..."}}', param=field)
    unknown = sorted(set(message) - set(_MESSAGE_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"{field}.{unknown[0]} is not supported; a message has {', '.join(_MESSAGE_FIELDS)}",
            param=f"{field}.{unknown[0]}",
        )
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{field}.role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{field}.role")
    content = _content(field, message.get("content"))
    check_text(f"{field}.content", content)
    return {"role": role, "content": content}


def _content(field: str, content: Any) -> str:
    """A string, or a list of text parts (`{"type": "text", "text": ...}`) joined in order."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else None
    if parts is None or not all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts
    ):
        raise InvalidRequest(
            f'{field}.content must be a string or a list of {{"type": "text", "text": "..."}} parts '
            "(this model reads text only)",
            param=f"{field}.content",
        )
    return "".join(part["text"] for part in parts)
