"""What the LoRA tests share: small random adapters made with PEFT for a model, and PEFT's merged model of each as
the reference (saved beside the tokenizer so `reference.ReferenceModel` generates from it)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reference import DTYPE_KEYWORD
from transformers import AutoModelForCausalLM

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class AdapterRecipe:
    """A random LoRA adapter: its rank, scale, target modules and seed."""

    name: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    seed: int


RECIPES = (
    AdapterRecipe("summarize", 4, 16.0, ("q_proj", "v_proj"), 3),
    AdapterRecipe("translate", 8, 32.0, ("k_proj", "o_proj", "down_proj", "up_proj"), 4),
)


def _base(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, **{DTYPE_KEYWORD: torch.float32}).eval()


def make_adapter(model_dir: Path, recipe: AdapterRecipe, out: Path) -> Path:
    """PEFT's own adapter for the model, its A and B drawn at random from the seed (B is not zero, so it changes the
    output)."""
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(_base(model_dir), config)
    _draw(model, torch.Generator().manual_seed(recipe.seed))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _draw(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every lora_A / lora_B weight drawn from the seed as nn.Linear draws its own (uniform within 1/sqrt(fan-in)),
    in name order: the same adapter on every PEFT version, whatever each one's initialisation consumes."""
    with torch.no_grad():
        for name, weight in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                bound = weight.shape[1] ** -0.5
                weight.copy_((torch.rand(weight.shape, generator=generator) * 2 - 1) * bound)


def merged_model_dir(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """PEFT's merge_and_unload() of the adapter into the base model, saved with the base model's tokenizer."""
    merged = PeftModel.from_pretrained(_base(model_dir), str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    return out


def model_with_adapters(model_dir: Path, out: Path, recipes: tuple[AdapterRecipe, ...] = RECIPES) -> Path:
    """A model directory of DJL's layout: the base model's files linked, and `adapters/<name>/` made with PEFT."""
    out.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        (out / item.name).symlink_to(item)
    for recipe in recipes:
        make_adapter(model_dir, recipe, out / "adapters" / recipe.name)
    return out
