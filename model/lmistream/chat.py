"""OpenAI chat completions on `/invocations`: a `{"messages": [...]}` body to a validated `GenerationRequest`.

Pure (no torch, no I/O). The fields follow OpenAI's chat completions API; `n` choices are answered whole (not
streamed), and `top_logprobs` lists each token's most likely alternatives where the engine computes them. What this
handler cannot honour (tool_choice "auto" without a tool-aware chat template and option.tool_call_parser) is refused
with an error naming the field, never ignored. `response_format` and a forced tool call constrain the answer
(`structured`, `tool_calls`); under "auto" the answer is read back for calls (`tool_parsers`). The
sampling defaults are OpenAI's: temperature 1 samples, temperature 0 is greedy. The conversation is rendered into
the prompt later, by the model's chat template (`Tokenizer.render_chat`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest
from .params import (
    MAX_NEW_TOKENS,
    MAX_TOP_LOGPROBS,
    ChatOptions,
    GenerationParams,
    GenerationRequest,
    Reader,
    check_text,
)
from .structured import from_response_format, one_of
from .tool_calls import for_template, message_calls, read_tools

ROLES = ("system", "developer", "user", "assistant", "tool")
#: OpenAI's own limit on stop sequences
MAX_STOP = 4
#: the most choices (`n`) one request may ask for
MAX_CHOICES = 16
#: the fields OpenAI's chat and completions APIs share
OPENAI_FIELDS = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "n",
    "logprobs",
    "frequency_penalty",
    "presence_penalty",
    "user",
)
_FIELDS = (
    "messages",
    *OPENAI_FIELDS,
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")


def is_chat(payload: Mapping[str, Any]) -> bool:
    """Whether a decoded body speaks the chat API."""
    return "messages" in payload


def chat_request(
    payload: Mapping[str, Any],
    default_max_new_tokens: int,
    renders_tools: bool = False,
    tool_parser: str | None = None,
) -> GenerationRequest:
    """Validate a chat body; `inputs` stays empty until the chat template renders `messages` (and the tools, where
    `renders_tools`: the model's template has tool support). `tool_parser` (option.tool_call_parser) reads calls
    back under tool_choice "auto"."""
    unknown = sorted(set(payload) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; supported: {', '.join(_FIELDS)}", param=unknown[0])
    r = Reader(payload)
    stream = r.boolean("stream", False)
    temperature = r.number("temperature", 0.0, 2.0, 1.0)
    tools = read_tools(
        payload.get("tools"),
        payload.get("tool_choice"),
        r.boolean("parallel_tool_calls", True),
        renders_tools,
        tool_parser,
    )
    params = GenerationParams(
        max_new_tokens=max_tokens(r, default_max_new_tokens),
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=r.number("top_p", 0.0, 1.0, 1.0, open_low=True),
        seed=r.integer("seed", 0, 2**63 - 1, None),
        stop_sequences=r.stop_sequences("stop", MAX_STOP),
        logprobs=r.boolean("logprobs", False),
        constraint=one_of(from_response_format(payload.get("response_format")), tools.constraint),
        top_logprobs=_top_logprobs(r, r.boolean("logprobs", False)),
        frequency_penalty=r.number("frequency_penalty", -2.0, 2.0, 0.0),
        presence_penalty=r.number("presence_penalty", -2.0, 2.0, 0.0),
    )
    options = ChatOptions(
        model=text_field(payload, "model"),
        include_usage=include_usage(payload, stream),
        logprobs=params.logprobs,
        tool_calls=tools.constraint is not None,
        tool_parser=tools.parser,
        n=choices(r, stream),
    )
    text_field(payload, "user")
    messages = _messages(payload.get("messages"))
    return GenerationRequest(
        inputs="",
        params=params,
        stream=stream,
        api="chat",
        messages=for_template(messages, renders_tools),
        chat=options,
        tools=tools.tools if renders_tools else (),
    )


def _top_logprobs(r: Reader, logprobs: bool) -> int:
    """`top_logprobs`: the most likely alternatives per token, which need `logprobs` (OpenAI's rule)."""
    count = int(r.integer("top_logprobs", 0, MAX_TOP_LOGPROBS, 0))
    if count and not logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    return count


def choices(r: Reader, stream: bool) -> int:
    """`n`: how many choices to answer, each its own row; several are answered whole, not streamed."""
    n = r.integer("n", 1, MAX_CHOICES, 1)
    if n > 1 and stream:
        raise InvalidRequest("n > 1 is answered in one body, not streamed; send stream false (or n 1)", param="n")
    return int(n)


def max_tokens(r: Reader, default: int) -> int:
    """`max_completion_tokens`, else the older `max_tokens`, else the handler's default."""
    newer = r.integer("max_completion_tokens", 1, MAX_NEW_TOKENS, None)
    older = r.integer("max_tokens", 1, MAX_NEW_TOKENS, None)
    return next((value for value in (newer, older) if value is not None), default)


def include_usage(payload: Mapping[str, Any], stream: bool) -> bool:
    options = payload.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidRequest('stream_options must be {"include_usage": true|false}', param="stream_options")
    return Reader(options, "stream_options.").boolean("include_usage", False)


def text_field(payload: Mapping[str, Any], key: str, field: str | None = None) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field or key} must be a string", param=field or key)
    return value


def _messages(raw: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest('messages must be a non-empty list of {"role", "content"} objects', param="messages")
    return tuple(_message(index, message) for index, message in enumerate(raw))


def _message(index: int, message: Any) -> dict[str, Any]:
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
    calls = message_calls(field, message.get("tool_calls"), role)
    content = "" if calls and message.get("content") is None else _content(field, message.get("content"))
    check_text(f"{field}.content", content)
    out: dict[str, Any] = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = calls
    if role == "tool" and message.get("tool_call_id") is not None:
        out["tool_call_id"] = text_field(message, "tool_call_id", f"{field}.tool_call_id")
    return out


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
