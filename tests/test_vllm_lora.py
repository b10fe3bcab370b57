"""LoRA adapters on the vLLM engine (the vLLM tier): two random adapters made with PEFT for SmolLM2-135M-Instruct in
`adapters/`, requests naming them through model/model.py behind DJL's replayed frontend, on vLLM's own LoRA. Each
greedy answer, alone and in one batch with the base model and the other adapter, equals transformers' `generate` on
PEFT's `merge_and_unload()` model of that adapter, token for token (every reference token clear of its runner-up, so
the two implementations cannot part on a near tie). One vLLM engine serves the module; the references need none."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmikit.embedded_model import ensure_smollm2
from lora_support import AdapterRecipe, merged_model_dir, model_with_adapters
from reference import ReferenceModel
from replay import MODEL_DIR, collect, frontend, post

pytestmark = pytest.mark.integration

PROMPTS = [("The capital of France is", 12), ("Hello, my name is", 16)]
#: SmolLM2's layers are wider than the tiny model's: larger scales, so that each adapter changes the greedy answer
RECIPES = (
    AdapterRecipe("summarize", 4, 128.0, ("q_proj", "v_proj"), 1),
    AdapterRecipe("translate", 8, 64.0, ("k_proj", "o_proj", "down_proj", "up_proj"), 2),
)
ADAPTERS = [None, *(r.name for r in RECIPES)]


@pytest.fixture(scope="module")
def handler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = model_with_adapters(ensure_smollm2(), tmp_path_factory.mktemp("vllm-lora") / "model", RECIPES)
    for name in ("model.py", "lmistream"):
        (directory / name).symlink_to(MODEL_DIR / name)
    return directory


@pytest.fixture(scope="module")
def expected(handler_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str | None, str], tuple]:
    """Each (adapter, prompt)'s greedy tokens from PEFT's merged model (the base model's own for None)."""
    models = {None: ensure_smollm2()}
    for recipe in RECIPES:
        adapter_dir = handler_dir / "adapters" / recipe.name
        models[recipe.name] = merged_model_dir(ensure_smollm2(), adapter_dir, tmp_path_factory.mktemp(recipe.name))
    answers = {}
    for adapter, path in models.items():
        reference = ReferenceModel(path)
        answers.update({(adapter, prompt): reference(prompt, n).token_ids for prompt, n in PROMPTS})
    return answers


@pytest.fixture(scope="module")
def front(handler_dir: Path, expected: dict) -> Iterator:
    """The handler on vLLM with LoRA on. option.max_loras stays at its default (4), above the two adapters: vLLM's
    CPU build gives a base row the adapter in its last LoRA slot once every slot holds one (README, Limits)."""
    options = {"model_id": str(ensure_smollm2()), "dtype": "fp32", "enforce_eager": "true", "enable_lora": "true"}
    with frontend("newest", handler_dir, rolling_batch="vllm", output_formatter="jsonlines", **options) as running:
        yield running
        running.entry.module.service.engine.stop()


def _payload(prompt: str, n: int, adapter: str | None) -> dict:
    body: dict = {"inputs": prompt, "parameters": {"max_new_tokens": n}}
    return {**body, "adapters": adapter} if adapter else body


def _tokens(response) -> tuple[int, tuple[int, ...]]:
    """A jsonlines stream's status and token ids."""
    status, chunks = collect(response)
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    return status, tuple(line["token"]["id"] for line in lines)


def test_the_adapters_change_what_smollm2_says(expected: dict) -> None:
    for adapter in ADAPTERS[1:]:
        assert any(expected[(adapter, p)] != expected[(None, p)] for p, _ in PROMPTS), adapter


def test_each_adapter_alone_and_a_mixed_batch_equal_pefts_merged_model(front, expected: dict) -> None:
    prompt, n = PROMPTS[0]
    for adapter in ADAPTERS[1:]:
        assert _tokens(post(front, _payload(prompt, n, adapter))) == (200, expected[(adapter, prompt)])
    responses = {
        (adapter, prompt): post(front, _payload(prompt, n, adapter)) for adapter in ADAPTERS for prompt, n in PROMPTS
    }
    answers = {key: _tokens(response) for key, response in responses.items()}
    assert answers == {key: (200, tokens) for key, tokens in expected.items()}


def test_an_unknown_adapter_is_a_400_naming_the_known_ones(front) -> None:
    status, chunks = collect(post(front, _payload("Hi", 4, "nope")))
    assert status == 400
    assert "known adapters: summarize, translate" in b"".join(chunks).decode()
