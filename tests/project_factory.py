"""Builds a small, valid lmi project in a temporary directory for the validate, tarball and lifecycle tests."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_CONFIG = {"model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 8}


def good_properties(weights_dir: Path) -> dict[str, str]:
    """A serving.properties that passes validation, as an ordered key → value mapping."""
    return {
        "engine": "Python",
        "option.model_id": str(weights_dir),
        "option.dtype": "fp16",
        "option.tensor_parallel_degree": "1",
        "option.rolling_batch": "auto",
        "option.max_rolling_batch_size": "32",
        "option.output_formatter": "jsonlines",
    }


def write_properties(project: Path, props: dict[str, str]) -> None:
    lines = ["# written by the tests"] + [f"{key}={value}" for key, value in props.items()]
    (project / "serving.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_project(root: Path) -> Path:
    """root/project with serving.properties, requirements.txt, model/model.py and model/lmistream/; returns it."""
    project = root / "project"
    weights = root / "weights"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text(json.dumps(MODEL_CONFIG), encoding="utf-8")
    package = project / "model" / "lmistream"
    (package / "formatters").mkdir(parents=True)
    (project / "model" / "model.py").write_text("from lmistream import handle  # noqa: F401\n")
    (package / "__init__.py").write_text('"""handler package"""\n')
    (package / "engine.py").write_text("ENGINE = 'transformers'\n")
    (package / "formatters" / "__init__.py").write_text("")
    (package / "formatters" / "jsonlines.py").write_text("SEPARATOR = '\\n'\n")
    (project / "requirements.txt").write_text("# the model's extra packages\n")
    write_properties(project, good_properties(weights))
    return project
