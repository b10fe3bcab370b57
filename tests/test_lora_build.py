"""`lmi build` with LoRA adapters under model/adapters/: they ship in the tarball, and each is checked against the base
model before anything is uploaded (rank, target modules, every lora_A / lora_B shape against the base weights)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from lmikit.embedded_model import ensure_tiny_model
from lmikit.project.tarball import build_tarball
from lmikit.project.validate import errors, validate_project
from lora_support import RECIPES, make_adapter
from replay import MODEL_DIR

pytestmark = pytest.mark.integration
PROPERTIES = "engine=Python\noption.model_id={model}\noption.rolling_batch=auto\noption.tensor_parallel_degree=1\n"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two PEFT adapters, made once."""
    root = tmp_path_factory.mktemp("made")
    for recipe in RECIPES:
        make_adapter(ensure_tiny_model(), recipe, root / recipe.name)
    return root


def _project(root: Path, adapters: Path, options: str = "option.enable_lora=true\n") -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    shutil.copy(MODEL_DIR / "model.py", model / "model.py")
    shutil.copytree(MODEL_DIR / "lmistream", model / "lmistream")
    shutil.copytree(adapters, model / "adapters")
    (root / "serving.properties").write_text(PROPERTIES.format(model=ensure_tiny_model()) + options)
    return root


def test_good_adapters_pass_and_ship_in_the_tarball(tmp_path: Path, adapters: Path) -> None:
    project = _project(tmp_path / "p", adapters)
    assert errors(validate_project(project)) == []
    report = build_tarball(project, tmp_path / "model.tar.gz")
    with tarfile.open(report.path) as archive:
        names = set(archive.getnames())
    for recipe in RECIPES:
        assert {
            f"adapters/{recipe.name}/adapter_config.json",
            f"adapters/{recipe.name}/adapter_model.safetensors",
        } <= names


def test_an_adapter_of_another_base_model_is_an_error_naming_it_and_the_module(tmp_path: Path, adapters: Path) -> None:
    project = _project(tmp_path / "p", adapters)
    config_file = project / "model" / "adapters" / RECIPES[0].name / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "r": 2}))
    found = [str(f) for f in errors(validate_project(project))]
    assert len(found) == 4  # q_proj and v_proj of both layers
    assert all(f"adapter '{RECIPES[0].name}': model.layers." in f and "at r=2" in f for f in found)
    assert "model.layers.0.self_attn.q_proj: {'lora_A': (4, 64), 'lora_B': (64, 4)}" in found[0]


def test_a_rank_above_max_lora_rank_is_an_error(tmp_path: Path, adapters: Path) -> None:
    project = _project(tmp_path / "p", adapters, "option.enable_lora=true\noption.max_lora_rank=4\n")
    found = [str(f) for f in errors(validate_project(project))]
    where = project / "model" / "adapters" / RECIPES[1].name
    message = f"adapter '{RECIPES[1].name}' ({where}): rank r=8 is above option.max_lora_rank=4"
    assert found == [f"error: adapters: {message}; raise option.max_lora_rank"]


def test_adapters_without_enable_lora_are_a_warning(tmp_path: Path, adapters: Path) -> None:
    findings = validate_project(_project(tmp_path / "p", adapters, ""))
    assert [str(f) for f in findings if f.key == "option.enable_lora"] == [
        "warning: option.enable_lora: adapters/ ships, but is served only with true"
    ]
