"""Chat templates on every stack: transformers' own renderer where the tokenizer has one, the sandboxed fallback on
transformers 4.30 (LMI 0.23), the same prompt from both, and a 400 naming `messages` where there is no template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from lmikit.embedded_model import ensure_tiny_model
from lmistream.chat_template import render_chat_template
from lmistream.engines.loading import HFTokenizer
from lmistream.errors import InvalidRequest
from transformers import AutoTokenizer

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
]
#: the tiny model's template (SmolLM2's ChatML), rendered
EXPECTED = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello."
    "<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


def adapter(directory: Path) -> HFTokenizer:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return HFTokenizer(tokenizer, frozenset({tokenizer.eos_token_id}))


def test_the_models_template_renders_the_conversation_on_this_stack(tiny_dir: Path) -> None:
    assert adapter(tiny_dir).render_chat(MESSAGES) == EXPECTED


def test_the_fallback_renders_what_transformers_renders(tiny_dir: Path) -> None:
    tokenizer = adapter(tiny_dir)
    assert render_chat_template(tokenizer.chat_template, MESSAGES, {"eos_token": "<|im_end|>"}) == EXPECTED
    system_first = render_chat_template(tokenizer.chat_template, MESSAGES[1:2], {})
    assert system_first.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_a_template_that_refuses_the_conversation_is_a_400_naming_messages(tiny_dir: Path) -> None:
    tokenizer = adapter(tiny_dir)
    tokenizer.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(InvalidRequest) as caught:
        tokenizer.render_chat(MESSAGES)
    assert caught.value.param == "messages" and "user first" in caught.value.message
    with pytest.raises(TemplateError):
        render_chat_template(tokenizer.chat_template, MESSAGES, {})


def test_a_model_without_a_template_is_a_400_naming_messages(tiny_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    tokenizer = adapter(tmp_path)
    assert tokenizer.chat_template is None
    with pytest.raises(InvalidRequest) as caught:
        tokenizer.render_chat(MESSAGES)
    assert caught.value.param == "messages" and "no chat template" in caught.value.message


#: a chat template with tool support, in the style of Qwen2.5's (the `hermes` call syntax, an assistant's earlier
#: calls written back in it)
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for call in m['tool_calls'] or [] %}<tool_call>\n{{ call['function'] | tojson }}\n</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}"
    "{{ '<|im_start|>assistant\\n' }}"
)
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_a_template_with_tool_support_renders_the_tools_and_the_tiny_models_has_none(tiny_dir: Path) -> None:
    tokenizer = adapter(tiny_dir)
    assert not tokenizer.renders_tools
    tokenizer.chat_template = TOOL_TEMPLATE
    tokenizer.renders_tools = True
    prompt = tokenizer.render_chat(MESSAGES[1:2], [WEATHER])
    assert prompt.startswith("<|im_start|>system\n# Tools\n<tools>\n{") and "<tool_call></tool_call>" in prompt
    rendered_tool = prompt.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(rendered_tool) == WEATHER
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "<tools>" not in tokenizer.render_chat(MESSAGES[1:2])
