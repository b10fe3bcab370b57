"""A chat conversation as data, and the request that asks the endpoint for its next answer. Pure: no Streamlit, no I/O.

Two modes:
- chat, for endpoints that take OpenAI chat bodies (this project's handler, the newest LMI): the system prompt and
  the history as `messages`, which the endpoint renders through the model's own chat template;
- prompt, for endpoints that take a plain `inputs` prompt (LMI jsonlines, TGI): the system prompt, then the history
  as a transcript of `User:` and `Assistant:` lines ending in `Assistant:`; generation stops at the next `\\nUser:`.

An answer that failed, and the question it answered, are left out of later requests. Prompt-mode parameters are the
ones LMI and TGI both read: temperature 0 means greedy (no `do_sample`, no `temperature`, which TGI requires to be
positive), and `top_p` is sent only when sampling below 1 (TGI refuses 1). Chat mode sends OpenAI's names, and the
tools and the JSON schema the sidebar holds (`tools`, `tool_choice`, `response_format`); an answer's tool calls are
kept with it (`ToolCall`). A LoRA adapter picked in the sidebar goes as the chat body's `model`, or as TGI's
`parameters.adapter_id` in prompt mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

USER = "user"
ASSISTANT = "assistant"
SYSTEM = "system"
CHAT = "chat"
PROMPT = "prompt"
STOP_SEQUENCE = "\nUser:"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
SUGGESTED_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a large language model is in two sentences.",
)
_SPEAKERS = {USER: "User", ASSISTANT: "Assistant"}


TOOL_CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class ToolCall:
    """A call an answer holds: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One turn of the conversation; an assistant turn that failed keeps its partial text and the error line."""

    role: str
    content: str
    error: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Settings:
    """What the sidebar sets for the next answer."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    adapter: str | None = None  # None: the base model
    #: chat mode only: OpenAI's `tools`, `tool_choice` and a JSON schema for `response_format`
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"
    json_schema: dict[str, Any] | None = None

    def parameters(self) -> dict[str, Any]:
        """The request's `parameters`, valid for LMI and TGI alike."""
        parameters: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "stop": [STOP_SEQUENCE]}
        if self.temperature > 0:
            parameters.update(do_sample=True, temperature=self.temperature)
            if self.top_p < 1:
                parameters["top_p"] = self.top_p
        if self.adapter is not None:
            parameters["adapter_id"] = self.adapter
        return parameters

    def chat_options(self) -> dict[str, Any]:
        """The chat body's settings, in OpenAI's names (temperature 0 is greedy)."""
        options: dict[str, Any] = {"max_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.temperature > 0 and self.top_p < 1:
            options["top_p"] = self.top_p
        if self.adapter is not None:
            options["model"] = self.adapter
        if self.tools:
            options.update(tools=self.tools, tool_choice=self.tool_choice)
        if self.json_schema is not None:
            schema = {"name": "answer", "schema": self.json_schema, "strict": True}
            options["response_format"] = {"type": "json_schema", "json_schema": schema}
        return options


def json_setting(text: str, kind: type, what: str) -> tuple[Any, str | None]:
    """A sidebar field's JSON (None when blank), or the line saying why it is not a JSON `kind`."""
    if not text.strip():
        return None, None
    try:
        value = json.loads(text)
    except ValueError as error:
        return None, f"{what} is not JSON: {error}"
    if not isinstance(value, kind):
        return None, f"{what} must be a JSON {'list' if kind is list else 'object'}"
    return value, None


@dataclass(frozen=True)
class PromptRequest:
    """An LMI/TGI request: `{"inputs": prompt, "parameters": parameters}`."""

    prompt: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat request: `{"messages": messages, **options}`."""

    messages: list[dict[str, str]]
    options: dict[str, Any]


def build_request(history: Sequence[Message], settings: Settings, mode: str = CHAT) -> PromptRequest | ChatRequest:
    """The request for the answer to the last user message of `history`, in `mode` (CHAT or PROMPT)."""
    if mode == CHAT:
        return ChatRequest(chat_messages(history, settings.system_prompt), settings.chat_options())
    return PromptRequest(transcript(history, settings.system_prompt), settings.parameters())


def chat_messages(history: Sequence[Message], system_prompt: str) -> list[dict[str, str]]:
    """The system prompt (when set) and the answered turns as chat messages."""
    head = [{"role": SYSTEM, "content": system_prompt.strip()}] if system_prompt.strip() else []
    return head + [{"role": message.role, "content": message.content.strip()} for message in answered(history)]


def transcript(history: Sequence[Message], system_prompt: str) -> str:
    """The system prompt and the answered turns as `User:`/`Assistant:` lines, ending with `Assistant:`."""
    lines = [f"{_SPEAKERS[message.role]}: {message.content.strip()}" for message in answered(history)]
    head = f"{system_prompt.strip()}\n\n" if system_prompt.strip() else ""
    return head + "\n".join(lines) + f"\n{_SPEAKERS[ASSISTANT]}:"


def answered(history: Sequence[Message]) -> list[Message]:
    """The history without failed answers and the questions they answered."""
    kept: list[Message] = []
    for message in history:
        if message.error is not None:
            if kept and kept[-1].role == USER:
                kept.pop()
            continue
        kept.append(message)
    return kept


def finished_answer(text: str) -> str:
    """An answer as it goes into the history: without a stop sequence the endpoint echoed (TGI does), trimmed."""
    return text.removesuffix(STOP_SEQUENCE).strip()
