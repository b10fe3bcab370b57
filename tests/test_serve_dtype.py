"""`lmi serve --model-id`: the deploy target's half dtype gives way to what fits the device, unless asked for."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from lmikit.embedded_model import ensure_tiny_model
from lmikit.server.run import ServeSettings, local_project

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, dtype_line: str) -> Path:
    (tmp_path / "serving.properties").write_text(f"engine=Python\noption.model_id=org/big-model\n{dtype_line}\n")
    return tmp_path


def _props(project: Path, overrides=()) -> tuple[Mapping[str, str], list[str]]:
    said: list[str] = []
    settings = ServeSettings(project, model_id=ensure_tiny_model(), overrides=tuple(overrides))
    return local_project(settings, said.append).properties, said


@pytest.mark.parametrize("line", ["option.dtype=fp16", "option.dtype=BF16", "option.data_type=fp16"])
def test_a_deploy_targets_half_dtype_becomes_auto(tmp_path, line) -> None:
    props, said = _props(_project(tmp_path, line), ())
    assert props["option.dtype"] == "auto"
    assert any("for the deploy target" in line and "--option dtype=" in line for line in said)


def test_a_dtype_asked_for_is_kept(tmp_path) -> None:
    props, said = _props(_project(tmp_path, "option.dtype=fp16"), [("dtype", "fp16")])
    assert props["option.dtype"] == "fp16" and not any("deploy target" in line for line in said)


def test_other_dtypes_pass_through_to_the_handlers_validation(tmp_path) -> None:
    props, _ = _props(_project(tmp_path, "option.dtype=fp8"), ())
    assert props["option.dtype"] == "fp8"


def test_auto_loads_fp32_on_a_cpu() -> None:
    sys.path.insert(0, str(REPO / "model"))
    from lmistream.engines.loading import torch_dtype

    assert torch_dtype("auto", torch.device("cpu")) is torch.float32
