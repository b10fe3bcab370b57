"""OpenAI tool calling: `tools` and `tool_choice` read into a constraint, and the constrained answer read back as calls.

Pure (no torch, no I/O). A call the request forces (`tool_choice` "required" or a named function) is decoded under a
JSON schema built from the tools' parameters, so the answer is always a JSON array of calls,
`[{"name": "<tool>", "arguments": {...}}, ...]`, whose arguments match their tool's schema. `CallScanner` reads that
array as it streams, a character at a time, and hands out each call's name once it is complete and its arguments text
in pieces, exactly as generated (OpenAI sends `arguments` as JSON text). It is hand-written because the answer's shape
is fixed by the schema, so tracking string and nesting state is all it takes, on every stack (no partial-JSON parser
installs on LMI 0.23's Python 3.9 beside the handler).

`tool_choice` "auto" lets the model choose between text and a call in its own tool-call syntax, which only a model
whose chat template renders tools can produce: the tools go into the prompt through that template and the answer is
read back by the parser `option.tool_call_parser` names (`tool_parsers`). Without such a template, or without a
parser, "auto" is refused, naming what works instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest
from .structured import Constraint, json_constraint

#: OpenAI's rule for a function's name
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128
_TOOL_FIELDS = {"type", "function"}
_FUNCTION_FIELDS = {"name", "description", "parameters", "strict"}


@dataclass(frozen=True)
class ToolChoice:
    """What the request's tools mean for decoding: the tools the chat template sees and, when a call is forced, the
    constraint that decodes it (None: the answer is text)."""

    tools: tuple[dict[str, Any], ...] = ()
    constraint: Constraint | None = None
    #: "auto": the parser that reads the model's own call syntax back (`tool_parsers`)
    parser: str | None = None


def read_tools(
    raw_tools: Any, raw_choice: Any, parallel: bool, template_has_tools: bool, parser: str | None = None
) -> ToolChoice:
    """Validate `tools`, `tool_choice` and `parallel_tool_calls` (each error names its field); `parser` is the
    handler's option.tool_call_parser."""
    if raw_tools is None:
        if raw_choice not in (None, "none"):
            raise InvalidRequest("tool_choice needs tools: give the functions the model may call", param="tool_choice")
        return ToolChoice()
    tools = _tools(raw_tools)
    choice = "auto" if raw_choice is None else raw_choice
    if choice == "none":
        return ToolChoice()
    if choice == "auto":
        if not template_has_tools or parser is None:
            raise InvalidRequest(_auto_refusal(template_has_tools), param="tool_choice")
        return ToolChoice(tuple(tools), parser=parser)
    if choice == "required":
        chosen = tools
    else:
        chosen = [_named(choice, tools)]
    schema = calls_schema(chosen, single=not parallel or choice != "required")
    field = f"tools[{tools.index(chosen[0])}].function.parameters" if len(chosen) == 1 else "tools"
    return ToolChoice(tuple(tools), json_constraint(schema, field))


def calls_schema(tools: Sequence[Mapping[str, Any]], single: bool) -> dict[str, Any]:
    """The schema of the answer: an array of calls, each one tool's name and arguments under its parameters."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters", {"type": "object"}),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    items = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
    if single:
        schema["maxItems"] = 1
    return schema


def _auto_refusal(template_has_tools: bool) -> str:
    forced = (
        'or give tool_choice "required" or {"type": "function", "function": {"name": ...}} to have a call decoded '
        'under the tools\' schema, or "none"'
    )
    if not template_has_tools:
        return (
            'tool_choice "auto" (the default when tools are given) needs a chat template that renders tools, and this '
            "model's has none: set option.chat_template to one that does (and option.tool_call_parser), " + forced
        )
    return (
        'tool_choice "auto" (the default when tools are given) reads the model\'s own tool-call syntax back, which '
        "needs option.tool_call_parser (hermes or llama3_json) on this endpoint, " + forced
    )


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            'tools must be a non-empty list of {"type": "function", "function": {"name": ..., "parameters": {...}}}',
            param="tools",
        )
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"tools holds {len(raw)} tools; at most {MAX_TOOLS}", param="tools")
    tools = [_tool(index, tool) for index, tool in enumerate(raw)]
    names = [tool["function"]["name"] for tool in tools]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise InvalidRequest(f"tools names the function {twice!r} twice", param="tools")
    return tools


def _tool(index: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise InvalidRequest(f'{where} must be {{"type": "function", "function": {{...}}}}', param=where)
    _known(tool, _TOOL_FIELDS, where)
    function = tool["function"]
    _known(function, _FUNCTION_FIELDS, f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(
            f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got {name!r}",
            param=f"{where}.function.name",
        )
    parameters = function.get("parameters", {"type": "object"})
    where_parameters = f"{where}.function.parameters"
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidRequest(f'{where_parameters} must be a JSON schema of "type": "object"', param=where_parameters)
    json_constraint(parameters, where_parameters)  # its size and shape
    return {"type": "function", "function": {**function, "parameters": parameters}}


def message_calls(field: str, raw: Any, role: str) -> list[dict[str, Any]]:
    """An assistant message's earlier `tool_calls`, checked; their arguments read as JSON (what chat templates
    take)."""
    if raw is None:
        return []
    where = f"{field}.tool_calls"
    if role != "assistant" or not isinstance(raw, list):
        raise InvalidRequest(f"{where} must be a list, on an assistant message", param=where)
    return [_message_call(f"{where}[{index}]", call) for index, call in enumerate(raw)]


def _message_call(where: str, call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(
            f'{where} must be {{"id": ..., "type": "function", "function": {{"name": ..., "arguments": "..."}}}}',
            param=where,
        )
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        raise InvalidRequest(f"{where}.function.arguments must be JSON text", param=f"{where}.function.arguments")
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def for_template(messages: Sequence[dict[str, Any]], renders_tools: bool) -> tuple[dict[str, Any], ...]:
    """Messages as the chat template takes them: where it has no tool support, an assistant's earlier calls become
    its content, written as this handler's answers spell them, so the model reads back what it said."""
    if renders_tools:
        return tuple(messages)
    return tuple(_calls_as_content(message) if "tool_calls" in message else message for message in messages)


def _calls_as_content(message: dict[str, Any]) -> dict[str, Any]:
    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"]]
    return {"role": message["role"], "content": message["content"] + json.dumps(calls, ensure_ascii=False)}


def _named(choice: Any, tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": "..."}}',
            param="tool_choice",
        )
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool
    raise InvalidRequest(f"tool_choice names {name!r}, which is not among tools", param="tool_choice.function.name")


def _known(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{where}.{unknown[0]} is not supported; allowed: {', '.join(sorted(allowed))}",
            param=f"{where}.{unknown[0]}",
        )


@dataclass
class CallDelta:
    """What one piece of the answer added to a call: its name when that completed, and arguments text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class _Call:
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class CallScanner:
    """Reads an answer `[{"name": "...", "arguments": {...}}, ...]` as it streams (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.complete = False  # the array closed
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._string: list[str] = []  # a key or name being read, at the call's level
        self._key: str | None = None
        self._in_arguments = False

    def feed(self, text: str) -> list[CallDelta]:
        """The calls' new names and arguments pieces in `text`, merged per call, in order."""
        deltas: list[CallDelta] = []
        for char in text:
            self._char(char, deltas)
        return deltas

    def arguments(self, index: int) -> str:
        return "".join(self.calls[index].arguments)

    def _char(self, char: str, deltas: list[CallDelta]) -> None:
        if self.complete:  # what follows the array (an eos token's text) is not a call
            return
        if self._in_arguments:
            self._argument_char(char, deltas)
        elif self._in_string:
            self._string_char(char, deltas)
        elif char == '"' and self._depth == 2:
            self._in_string, self._string = True, []
        elif char == "{" and self._depth == 2 and self._key == "arguments":
            self._in_arguments = True
            self._argument_char(char, deltas)
        elif char == "{":
            self._depth += 1
            if self._depth == 2:
                self.calls.append(_Call())
        elif char == "[" and self._depth == 0:
            self._depth = 1
        elif char in "}]":
            self._depth -= 1
            self.complete = self._depth == 0

    def _string_closed_by(self, char: str) -> bool:
        """One character inside a JSON string: whether it is the closing quote (an escaped one is not)."""
        if self._escaped:
            self._escaped = False
        elif char == "\\":
            self._escaped = True
        elif char == '"':
            self._in_string = False
            return True
        return False

    def _string_char(self, char: str, deltas: list[CallDelta]) -> None:
        if self._string_closed_by(char):
            text = json.loads('"' + "".join(self._string) + '"')
            if self._key == "name":
                self.calls[-1].name = text
                _delta(deltas, len(self.calls) - 1).name = text
                self._key = None
            else:
                self._key = text
            return
        self._string.append(char)

    def _argument_char(self, char: str, deltas: list[CallDelta]) -> None:
        """Arguments text (an object): nesting counted outside its strings, so its closing brace is found."""
        if self._in_string:
            self._string_closed_by(char)
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
        self.calls[-1].arguments.append(char)
        _delta(deltas, len(self.calls) - 1).arguments += char
        if self._depth == 2:
            self._in_arguments, self._key = False, None


def _delta(deltas: list[CallDelta], index: int) -> CallDelta:
    if not deltas or deltas[-1].index != index:
        deltas.append(CallDelta(index))
    return deltas[-1]
