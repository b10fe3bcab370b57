"""The prompts `lmi bench` and its workloads send: generated ones of a given length (in a tokenizer's tokens when one
is at hand, else in words), each numbered and started at its own word so that no two are alike, or the lines of a
prompt file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

WORDS = [
    "the",
    "old",
    "clockmaker",
    "walked",
    "along",
    "the",
    "river",
    "to",
    "the",
    "market",
    "where",
    "a",
    "lost",
    "letter",
    "waited",
    "under",
    "a",
    "red",
    "kite",
    "near",
    "the",
    "lighthouse",
    "and",
    "the",
    "winter",
    "wind",
    "carried",
    "stories",
    "of",
    "a",
    "quiet",
    "village",
    "far",
    "away",
]


def make_prompts(count: int, tokens: int, tokenizer: Any = None) -> list[str]:
    """`count` different prompts of `tokens` tokens (words when there is no tokenizer to count with)."""
    prompts = []
    for index in range(count):
        words = [f"Story {index}:"] + [WORDS[(index + k) % len(WORDS)] for k in range(2 * tokens)]
        text = " ".join(words)
        if tokenizer is None:
            prompts.append(" ".join(text.split()[:tokens]))
        else:
            prompts.append(tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:tokens]))
    return prompts


def read_prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise click.BadParameter(f"{path} holds no prompt", param_hint="--prompt-file")
    return prompts
