"""validate_project: a good project passes; each bad serving.properties gives exactly one finding naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from lmikit.cli import main
from lmikit.project.validate import validate_project
from project_factory import good_properties, make_project, write_properties

REMOVE = object()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _with(project: Path, **changes: object) -> list:
    """Validate the project after changing serving.properties keys (`__` stands for `.`; REMOVE drops a key)."""
    props = good_properties(project.parent / "weights")
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is REMOVE:
            del props[key]
        else:
            props[key] = str(value)
    write_properties(project, props)
    return validate_project(project)


def test_good_project_has_no_findings(project: Path) -> None:
    assert validate_project(project) == []


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        (
            {"option__max_rolling_batchsize": 32},
            "option.max_rolling_batchsize",
            "did you mean option.max_rolling_batch_size",
        ),
        ({"option__entrypoint": "model.py"}, "option.entrypoint", "did you mean option.entryPoint"),
        ({"maxworkers": 2}, "maxworkers", "did you mean maxWorkers"),
        ({"option__dtype": "fp8"}, "option.dtype", "not one of"),
        ({"option__max_rolling_batch_size": 0}, "option.max_rolling_batch_size", "out of range"),
        ({"option__max_rolling_batch_size": "lots"}, "option.max_rolling_batch_size", "must be an integer"),
        ({"option__enable_streaming": "yes"}, "option.enable_streaming", "not one of"),
        ({"option__trust_remote_code": "maybe"}, "option.trust_remote_code", "true or false"),
        (
            {"engine": "MPI", "option__tensor_parallel_degree": 3},
            "option.tensor_parallel_degree",
            "num_attention_heads=32",
        ),
        (
            {"engine": "MPI", "option__tensor_parallel_degree": 16},
            "option.tensor_parallel_degree",
            "num_key_value_heads=8",
        ),
        (
            {"option__tensor_parallel_degree": 2},
            "option.tensor_parallel_degree",
            "2 with engine=Python: DJL then runs one Python process that sees 2 GPUs and starts no ranks",
        ),
        ({"option__tensor_parallel_degree": 0}, "option.tensor_parallel_degree", "out of range"),
        ({"engine": REMOVE}, "engine", "MPI/DeepSpeed"),
        ({"engine": "Pyton"}, "engine", "not one of"),
        ({"option__entryPoint": "handler.py"}, "option.entryPoint", "handler.py not found"),
        ({"batch_size": "zero"}, "batch_size", "integer >= 1"),
        ({"job_queue_size": 0}, "job_queue_size", "integer >= 1"),
    ],
)
def test_each_bad_property_gives_one_error_naming_the_key(
    project: Path, changes: dict, key: str, fragment: str
) -> None:
    findings = _with(project, **changes)
    assert len(findings) == 1, findings
    assert (findings[0].level, findings[0].key) == ("error", key)
    assert fragment in findings[0].message
    assert key in str(findings[0])


def test_missing_model_py_is_one_error(project: Path) -> None:
    (project / "model" / "model.py").unlink()
    findings = validate_project(project)
    assert [(f.level, f.key) for f in findings] == [("error", "model.py")]
    assert "not found" in findings[0].message


def test_module_entry_point_needs_no_model_py_nor_engine(project: Path) -> None:
    (project / "model" / "model.py").unlink()
    assert _with(project, option__entryPoint="djl_python.huggingface", engine=REMOVE) == []


def test_missing_serving_properties_is_one_error(project: Path) -> None:
    (project / "serving.properties").unlink()
    assert [(f.level, f.key) for f in validate_project(project)] == [("error", "serving.properties")]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"option__trust_remote_code": "true"}, "option.trust_remote_code"),
        ({"option__paged_attention": "false"}, "option.paged_attention"),
    ],
)
def test_warnings_do_not_block(project: Path, changes: dict, key: str) -> None:
    assert [(f.level, f.key) for f in _with(project, **changes)] == [("warning", key)]


def test_tensor_parallel_skipped_when_model_config_is_not_local(project: Path) -> None:
    assert (
        _with(project, engine="MPI", option__model_id="HuggingFaceTB/SmolLM2-135M", option__tensor_parallel_degree=3)
        == []
    )


def test_smollm2_heads_refuse_two_ranks_naming_nine_and_two(project: Path) -> None:
    (project.parent / "weights" / "config.json").write_text(
        '{"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3}'
    )
    [finding] = _with(project, engine="MPI", option__tensor_parallel_degree=2)
    assert finding.key == "option.tensor_parallel_degree"
    assert "2 does not divide the model's num_attention_heads=9 and num_key_value_heads=3" in finding.message


def test_build_command_fails_on_errors_and_prints_them(project: Path, tmp_path: Path) -> None:
    _with(project, option__max_rolling_batchsize=32)
    result = CliRunner().invoke(main, ["build", str(project), "--out", str(tmp_path / "m.tar.gz")])
    assert result.exit_code == 1
    assert "did you mean option.max_rolling_batch_size" in result.stderr
    assert not (tmp_path / "m.tar.gz").exists()


def test_build_command_prints_warnings_and_builds(project: Path, tmp_path: Path) -> None:
    _with(project, option__trust_remote_code="true")
    result = CliRunner().invoke(
        main, ["build", str(project), "--out", str(tmp_path / "m.tar.gz"), "--image", "djl-lmi:0.36.0"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: option.trust_remote_code" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "m.tar.gz")
