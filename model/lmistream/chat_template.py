"""Rendering a model's chat template where its tokenizer cannot (transformers before 4.34, as in LMI 0.23).

Hand-written because those transformers versions have no `apply_chat_template`: the template is rendered as newer
transformers render it, in a sandboxed jinja2 environment with `trim_blocks` and `lstrip_blocks`, the tokenizer's
special tokens as variables, `raise_exception` for templates that validate the conversation and `strftime_now` for
ones that print the date. jinja2 ships with torch, so every image has it. Pure: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], variables: Mapping[str, Any]) -> str:
    """The prompt text for `messages`, ending with the assistant's turn (`add_generation_prompt`).

    Raises jinja2's TemplateError for a template that rejects the conversation or does not parse.
    """
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    compiled = environment.from_string(template)
    return compiled.render(messages=list(messages), add_generation_prompt=True, **variables)


def _raise(message: str) -> None:
    raise TemplateError(message)
