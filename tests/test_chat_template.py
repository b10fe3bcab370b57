"""Chat templates on every stack: transformers' own renderer where the tokenizer has one, the sandboxed fallback on
transformers 4.30 (LMI 0.23), the same prompt from both, and a 400 naming `messages` where there is no template."""

from __future__ import annotations

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
