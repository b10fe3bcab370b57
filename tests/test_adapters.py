"""The torch-free adapter registry: what an adapter_config.json may declare, and which adapter a request names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lmistream.adapters import ADAPTER_HEADER, AdapterRegistry, AdapterSpec, discover, read_adapter, requested_adapter
from lmistream.errors import ConfigError, InvalidRequest

CONFIG = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


def _adapter(root: Path, name: str, **changes) -> Path:
    directory = root / "adapters" / name
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({**CONFIG, **changes}))
    (directory / "adapter_model.safetensors").write_bytes(b"")
    return directory


def test_adapters_are_discovered_by_folder_name_with_peft_scaling(tmp_path: Path) -> None:
    _adapter(tmp_path, "b", use_rslora=True)
    _adapter(tmp_path, "a")
    specs = discover(tmp_path)
    assert [s.name for s in specs] == ["a", "b"]
    assert specs[0].scaling == 2.0
    assert specs[1].scaling == pytest.approx(16 / 8**0.5)
    assert discover(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "use_dora=true is not supported"),
        ({"bias": "all"}, 'bias="all" is not supported'),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ".*proj"}, "regular expression"),
        ({"peft_type": "IA3"}, "peft_type IA3"),
        ({"r": 0}, "r must be a positive integer"),
    ],
)
def test_what_the_engines_cannot_apply_is_refused_naming_the_setting(tmp_path: Path, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        read_adapter("x", _adapter(tmp_path, "x", **changes))


def test_a_rank_above_the_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"r=8 is above option\.max_lora_rank=4"):
        read_adapter("x", _adapter(tmp_path, "x"), max_rank=4)


REGISTRY = AdapterRegistry(True, [AdapterSpec("fr", "/a", 8, 16.0, ("q_proj",)), AdapterSpec("de", "/b", 8, 16.0, ())])


@pytest.mark.parametrize(
    ("payload", "header", "chat", "adapter"),
    [
        ({"inputs": "x", "adapters": "fr"}, None, False, "fr"),
        ({"inputs": "x", "adapters": ["de"]}, None, False, "de"),
        ({"inputs": "x", "parameters": {"adapter_id": "fr", "max_new_tokens": 3}}, None, False, "fr"),
        ({"inputs": "x"}, "de", False, "de"),
        ({"messages": [], "model": "fr"}, None, True, "fr"),
        ({"messages": [], "model": "gpt-4o"}, None, True, None),
        ({"inputs": "x"}, None, False, None),
    ],
)
def test_a_request_names_its_adapter_in_any_of_the_four_places(payload, header, chat, adapter) -> None:
    body, named = requested_adapter(payload, header, REGISTRY, chat)
    assert named == adapter
    assert "adapters" not in body
    assert "adapter_id" not in body.get("parameters", {})


def test_an_unknown_adapter_lists_the_known_ones_and_names_the_field() -> None:
    with pytest.raises(InvalidRequest, match="unknown adapter 'es'; known adapters: de, fr") as caught:
        requested_adapter({"inputs": "x"}, "es", REGISTRY, chat=False)
    assert caught.value.param == ADAPTER_HEADER


def test_an_endpoint_without_lora_refuses_an_adapter_naming_the_option() -> None:
    with pytest.raises(InvalidRequest, match="option.enable_lora=true"):
        requested_adapter({"inputs": "x", "adapters": "fr"}, None, AdapterRegistry(False), chat=False)
