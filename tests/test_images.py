"""Image stacks: each check against a known image names its numbers, and `lmi build --image` ships its requirements."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from lmikit.cli import main
from lmikit.project.image_stacks import stack_for
from lmikit.project.images import check_image
from lmikit.project.layout import Project
from project_factory import good_properties, make_project, write_properties

DJL_0_23_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.23.0-deepspeed0.9.5-cu118"
SMOLLM2 = {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3}
HUB_ID = "HuggingFaceTB/SmolLM2-135M"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _setup(
    project: Path,
    *,
    requirements: str | None = None,
    config: dict | None = None,
    tokenizer: dict | None = None,
    **options: str,
) -> None:
    """Rewrite the project's requirements.txt, weights and option.* keys."""
    weights = project.parent / "weights"
    write_properties(project, good_properties(weights) | {f"option.{k}": v for k, v in options.items()})
    if requirements is not None:
        (project / "requirements.txt").write_text(requirements)
    if config is not None:
        (weights / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        (weights / "tokenizer_config.json").write_text(json.dumps(tokenizer))


def _findings(project: Path, image: str) -> list[tuple[str, str, str]]:
    return [(f.level, f.key, f.message) for f in check_image(Project.at(project), image)]


def _build(project: Path, out: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["build", str(project), "--out", str(out), *args])


def _shipped_requirements(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile("requirements.txt").read().decode()


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("djl-deepspeed:0.23.0", "djl-deepspeed:0.23.0"),
        (DJL_0_23_URI, "djl-deepspeed:0.23.0"),
        ("djl-deepspeed:0.27.0", "djl-deepspeed:0.27.0"),
        ("763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.36.0-lmi18.0.0-cu128", "djl-lmi:0.36.0"),
        ("763104351884.dkr.ecr.us-west-2.amazonaws.com/djl-inference:0.36.0-lmi27.0.0-cu130", "djl-lmi:0.36.0"),
    ],
)
def test_stack_for_short_forms_and_uris(image: str, expected: str) -> None:
    assert stack_for(image).image == expected


@pytest.mark.parametrize(
    "image",
    [
        "djl-lmi:0.28.0",
        "djl-deepspeed",
        "123.dkr.ecr.eu-west-1.amazonaws.com/mine:1",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.29.0-lmi11.0.0-cu124",
    ],
)
def test_unknown_image_is_one_warning_and_no_checks(project: Path, image: str) -> None:
    _setup(project, requirements="torch==2.6.0\n", config=SMOLLM2, generation_engine="continuous")
    [(level, key, message)] = _findings(project, image)
    assert (level, key) == ("warning", "--image")
    assert image in message and "unknown" in message


def test_the_factory_project_fits_the_newest_image(project: Path) -> None:
    assert _findings(project, "djl-lmi:0.36.0") == []


def test_grouped_query_attention_needs_4_31(project: Path) -> None:
    _setup(project, config=SMOLLM2)
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "option.model_id")
    assert "9 heads, 3 key/value heads" in message and "4.31" in message and "4.30.2" in message
    assert "--image djl-lmi:0.36.0" in message
    assert _findings(project, "djl-lmi:0.36.0") == []
    assert _findings(project, "djl-deepspeed:0.27.0") == []


def test_llama_without_grouped_query_attention_loads_on_0_23(project: Path) -> None:
    _setup(project, config={"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 9})
    assert _findings(project, "djl-deepspeed:0.23.0") == []


@pytest.mark.parametrize(
    ("model_type", "image", "needed", "have"),
    [
        ("mistral", "djl-deepspeed:0.23.0", "4.34", "4.30.2"),
        ("qwen3", "djl-deepspeed:0.27.0", "4.51", "4.39.0"),
        ("gemma2", "djl-deepspeed:0.27.0", "4.42", "4.39.0"),
    ],
)
def test_model_type_newer_than_the_image(project: Path, model_type: str, image: str, needed: str, have: str) -> None:
    _setup(project, config={"model_type": model_type})
    [(level, key, message)] = _findings(project, image)
    assert (level, key) == ("error", "option.model_id")
    assert f"model_type {model_type} needs transformers >= {needed}" in message and have in message
    assert _findings(project, "djl-lmi:0.36.0") == []


def test_hub_model_id_is_not_checked(project: Path) -> None:
    _setup(project, model_id=HUB_ID)
    assert _findings(project, "djl-deepspeed:0.23.0") == []


@pytest.mark.parametrize(
    ("requirement", "fragment"),
    [
        ("torch==2.6.0", "would replace the image's torch 2.0.1"),
        ("deepspeed>=0.10", "would replace the image's deepspeed 0.9.5"),
    ],
)
def test_replacing_torch_or_deepspeed_is_an_error(project: Path, requirement: str, fragment: str) -> None:
    _setup(project, requirements=f"# ours\n{requirement}\n", model_id=HUB_ID)
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "requirements.txt")
    assert fragment in message and requirement in message


@pytest.mark.parametrize(
    ("requirement", "fragment"),
    [
        ("transformers==4.40.0", "replaces the image's transformers 4.30.2"),
        ("accelerate>=1.0", "replaces the image's accelerate 0.20.3"),
    ],
)
def test_replacing_other_packages_is_a_warning(project: Path, requirement: str, fragment: str) -> None:
    _setup(project, requirements=f"{requirement}\n", model_id=HUB_ID)
    assert _findings(project, "djl-deepspeed:0.23.0") == [
        ("warning", "requirements.txt", f"{requirement} {fragment} (djl-deepspeed:0.23.0)")
    ]


def test_requirements_the_image_satisfies_or_that_do_not_apply_pass(project: Path) -> None:
    _setup(
        project,
        requirements="torch>=2.0  # ok\ntransformers\n-i https://example.invalid\n"
        'torch==2.6.0; python_version >= "3.11"\nsentencepiece\n',
        model_id=HUB_ID,
    )
    assert _findings(project, "djl-deepspeed:0.23.0") == []


def test_unparseable_requirement_is_a_warning(project: Path) -> None:
    _setup(project, requirements="torch=>2\n", model_id=HUB_ID)
    assert _findings(project, "djl-deepspeed:0.23.0") == [
        ("warning", "requirements.txt", "cannot parse 'torch=>2'; not checked")
    ]


def test_transformers_5_on_python_3_9_is_an_error(project: Path) -> None:
    _setup(project, requirements="transformers==5.24.0\n", model_id=HUB_ID)
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "requirements.txt")
    assert "transformers 5 needs Python >= 3.10" in message and "Python 3.9" in message
    assert "5.24 needs Python >= 3.11 and torch >= 2.6" in message


def test_transformers_5_24_on_torch_2_1_is_an_error(project: Path) -> None:
    _setup(project, requirements="transformers~=5.24\n")
    [(level, _, message)] = _findings(project, "djl-deepspeed:0.27.0")
    assert level == "error" and "Python 3.10 and torch 2.1.2" in message


def test_transformers_5_on_the_newest_image_only_replaces(project: Path) -> None:
    _setup(project, requirements="transformers>=5\n")
    assert [(level, key) for level, key, _ in _findings(project, "djl-lmi:0.36.0")] == [("warning", "requirements.txt")]


def test_continuous_engine_on_0_23_is_an_error(project: Path) -> None:
    _setup(project, generation_engine="continuous", model_id=HUB_ID)
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "option.generation_engine")
    assert "Python 3.9 and torch 2.0.1" in message and "use auto or portable" in message


def test_rolling_batch_vllm_beside_another_engine_is_the_loaders_error(project: Path) -> None:
    """The build reads the engine choice with the handler's own rule, so it refuses what the load would."""
    _setup(project, rolling_batch="vllm", generation_engine="portable", model_id=HUB_ID)
    [(level, key, message)] = _findings(project, "djl-lmi:0.36.0")
    assert (level, key) == ("error", "option.generation_engine")
    assert "option.rolling_batch=vllm picks the vLLM engine" in message and "drop one of them" in message


def test_lmi_build_refuses_rolling_batch_vllm_beside_portable_with_the_containers_error(
    project: Path, tmp_path: Path
) -> None:
    from lmistream.config import HandlerConfig
    from lmistream.engines import choose
    from lmistream.errors import ConfigError

    _setup(project, rolling_batch="vllm", generation_engine="portable", model_id=HUB_ID)
    with pytest.raises(ConfigError) as loading:
        choose(HandlerConfig(model_id=HUB_ID, rolling_batch="vllm", generation_engine="portable"))
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 1 and not (tmp_path / "m.tar.gz").exists()
    assert f"error: option.generation_engine: {loading.value.message}" in result.stderr


def test_the_build_report_names_the_engine_auto_takes_on_a_cpu_instance(project: Path, tmp_path: Path) -> None:
    """The report and the option checks apply the handler's one rule: on a CPU, auto takes the portable engine."""
    _setup(project, requirements="transformers==5.24.0\n", dtype="fp32")
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0", "--instance-type", "ml.c7i.2xlarge")
    assert result.exit_code == 0, result.output
    assert "option.generation_engine=auto will use the portable engine" in result.stderr


@pytest.mark.parametrize("engine", ["auto", "portable"])
def test_auto_and_portable_run_on_0_23(project: Path, engine: str) -> None:
    _setup(project, generation_engine=engine, model_id=HUB_ID)
    assert _findings(project, "djl-deepspeed:0.23.0") == []


def test_continuous_engine_against_a_pinned_transformers_4_is_an_error(project: Path) -> None:
    _setup(project, requirements="transformers<5\n", generation_engine="continuous")
    [(level, key, message)] = _findings(project, "djl-lmi:0.36.0")
    assert (level, key) == ("error", "option.generation_engine")
    assert "requirements.txt gives transformers 4.57" in message


def test_tokenizers_backend_needs_transformers_5(project: Path) -> None:
    _setup(project, config=SMOLLM2 | {"num_key_value_heads": 9}, tokenizer={"tokenizer_class": "TokenizersBackend"})
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "option.model_id")
    assert "TokenizersBackend" in message and "4.30.2" in message and "PreTrainedTokenizerFast" in message
    assert len(_findings(project, "djl-lmi:0.36.0")) == 1, "auto keeps the image's transformers 4.57"
    _setup(project, tokenizer={"tokenizer_class": "TokenizersBackend"}, generation_engine="continuous")
    assert _findings(project, "djl-lmi:0.36.0") == [], "continuous ships transformers 5.24 there"


def test_build_for_0_23_ships_the_project_requirements_as_written_and_llguidance(project: Path, tmp_path: Path) -> None:
    _setup(project, requirements="# ours\nsentencepiece  # tokenizer\n", model_id=HUB_ID)
    result = _build(project, tmp_path / "m.tar.gz")
    assert result.exit_code == 0, result.output
    shipped = _shipped_requirements(tmp_path / "m.tar.gz")
    assert shipped.startswith("# ours\nsentencepiece  # tokenizer\n# added by `lmi build --image djl-deepspeed:0.23.0`")
    assert shipped.endswith("structured output on the portable engine\nllguidance==1.3.0\n")
    assert "for djl-deepspeed:0.23.0; option.generation_engine=auto will use the portable engine" in result.stderr
    _setup(project, requirements="llguidance==1.2.0\n", model_id=HUB_ID)
    assert _build(project, tmp_path / "p.tar.gz").exit_code == 0
    assert _shipped_requirements(tmp_path / "p.tar.gz") == "llguidance==1.2.0\n", "the project's own pin is kept"


def test_build_continuous_for_0_36_adds_transformers_5_24(project: Path, tmp_path: Path) -> None:
    _setup(project, requirements="sentencepiece", generation_engine="continuous")
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 0, result.output
    shipped = _shipped_requirements(tmp_path / "m.tar.gz").splitlines()
    assert shipped[0] == "sentencepiece" and shipped[-1] == "transformers==5.24.0"
    assert "for djl-lmi:0.36.0; option.generation_engine=continuous" in result.stderr


def test_auto_uses_continuous_where_the_project_pins_transformers_5_24(project: Path, tmp_path: Path) -> None:
    _setup(project, requirements="transformers==5.24.0\n")
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 0, result.output
    assert _shipped_requirements(tmp_path / "m.tar.gz") == "transformers==5.24.0\n"
    assert "option.generation_engine=auto will use the continuous engine" in result.stderr


def test_build_without_project_requirements_ships_an_empty_file(project: Path, tmp_path: Path) -> None:
    (project / "requirements.txt").unlink()
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 0, result.output
    assert _shipped_requirements(tmp_path / "m.tar.gz") == ""


def test_build_stops_on_an_image_error(project: Path, tmp_path: Path) -> None:
    _setup(project, config=SMOLLM2)
    result = _build(project, tmp_path / "m.tar.gz", "--image", DJL_0_23_URI)
    assert result.exit_code == 1 and "4.31" in result.stderr and "nothing built" in result.stderr
    assert not (tmp_path / "m.tar.gz").exists()


def test_build_for_an_unknown_image_warns_and_builds(project: Path, tmp_path: Path) -> None:
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.28.0")
    assert result.exit_code == 0, result.output
    assert "warning: --image: djl-lmi:0.28.0" in result.stderr and "unknown image" in result.stderr


def test_deploy_builds_for_its_own_image(project: Path) -> None:
    _setup(project, config=SMOLLM2)
    result = CliRunner().invoke(
        main,
        ["deploy", "--project-dir", str(project), "--role", "arn:aws:iam::1:role/x", "--image", "djl-deepspeed:0.23.0"],
    )
    assert result.exit_code == 1 and "4.30.2" in result.stderr and "nothing built" in result.stderr


def test_tensor_parallel_max_needs_lmi_0_24(project: Path) -> None:
    _setup(project, model_id=HUB_ID, tensor_parallel_degree="max")
    [(level, key, message)] = _findings(project, "djl-deepspeed:0.23.0")
    assert (level, key) == ("error", "option.tensor_parallel_degree")
    assert "max exists from LMI 0.24" in message and "djl-deepspeed:0.23.0" in message
    assert _findings(project, "djl-lmi:0.36.0") == []


def test_auto_uses_the_images_vllm_and_the_shipped_requirements_leave_vllm_and_torch_alone(
    project: Path, tmp_path: Path
) -> None:
    _setup(project, requirements="sentencepiece\n")
    result = _build(project, tmp_path / "m.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 0, result.output
    assert _shipped_requirements(tmp_path / "m.tar.gz") == "sentencepiece\n"
    assert "option.generation_engine=auto will use the vllm engine (the image's vLLM 0.17)" in result.stderr
    _setup(project, requirements="sentencepiece\n", rolling_batch="vllm")
    result = _build(project, tmp_path / "v.tar.gz", "--image", "djl-lmi:0.36.0")
    assert result.exit_code == 0, result.output
    assert _shipped_requirements(tmp_path / "v.tar.gz") == "sentencepiece\n"


@pytest.mark.parametrize(
    ("requirement", "fragment"),
    [
        ("vllm==0.32.0", "would replace the image's vllm 0.17"),
        ("torch>=2.13", "would replace the image's torch 2.10.0"),
    ],
)
def test_replacing_the_images_vllm_or_torch_is_an_error(project: Path, requirement: str, fragment: str) -> None:
    _setup(project, requirements=f"{requirement}\n", rolling_batch="vllm")
    [(level, key, message)] = _findings(project, "djl-lmi:0.36.0")
    assert (level, key) == ("error", "requirements.txt") and fragment in message


@pytest.mark.parametrize(
    ("image", "requirements", "fragment"),
    [
        ("djl-deepspeed:0.23.0", "", "djl-deepspeed:0.23.0 ships no vLLM"),
        ("djl-deepspeed:0.27.0", "", "needs vLLM >= 0.10, and djl-deepspeed:0.27.0 ships vLLM 0.3.3"),
        ("djl-lmi:0.36.0", "transformers==5.24.0\n", "the image's vLLM 0.17 takes transformers <5"),
    ],
)
def test_the_vllm_engine_where_the_image_cannot_run_it_is_an_error(
    project: Path, image: str, requirements: str, fragment: str
) -> None:
    _setup(project, requirements=requirements, rolling_batch="vllm", model_id=HUB_ID)
    findings = [
        (level, key, message) for level, key, message in _findings(project, image) if key == "option.generation_engine"
    ]
    [(level, _, message)] = findings
    assert level == "error" and fragment in message and "option.rolling_batch=vllm" in message


def test_fp16_for_a_cpu_instance_on_torch_2_0_is_refused_naming_the_dtype_and_the_way_out(
    project: Path, tmp_path: Path
) -> None:
    _setup(project, dtype="fp16", model_id=HUB_ID)
    result = _build(
        project, tmp_path / "m.tar.gz", "--image", "djl-deepspeed:0.23.0", "--instance-type", "ml.m5.xlarge"
    )
    assert result.exit_code != 0
    assert "error: option.dtype: fp16 on an instance without a GPU: torch 2.0.1" in result.stderr
    assert "use option.dtype=fp32 or auto" in result.stderr


@pytest.mark.parametrize(
    ("image", "instance", "expected"),
    [
        ("djl-lmi:0.36.0", "ml.c7i.2xlarge", [("warning", "option.dtype")]),  # newer torch runs it, slowly
        ("djl-deepspeed:0.23.0", "ml.g5.2xlarge", []),  # a GPU runs fp16
        ("djl-deepspeed:0.23.0", None, []),  # the target's device is not known
    ],
)
def test_fp16_elsewhere_is_a_warning_or_nothing(
    project: Path, image: str, instance: str | None, expected: list[tuple[str, str]]
) -> None:
    from lmikit.aws.instances import instance_gpus

    _setup(project, dtype="fp16", model_id=HUB_ID)
    gpus = None if instance is None else instance_gpus(instance)
    assert [(f.level, f.key) for f in check_image(Project.at(project), image, gpus)] == expected


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("djl-lmi:0.36.0", []),  # auto picks vLLM there, which takes it
        ("djl-deepspeed:0.23.0", [("error", "option.kv_cache_dtype", "portable")]),
    ],
)
def test_an_option_the_engine_auto_picks_on_the_image_refuses_is_an_error(
    project: Path, image: str, expected: list[tuple[str, str, str]]
) -> None:
    _setup(project, dtype="fp32", model_id=HUB_ID, kv_cache_dtype="fp8")
    findings = [
        (level, key, message) for level, key, message in _findings(project, image) if key.startswith("option.k")
    ]
    assert [(level, key) for level, key, _ in findings] == [(level, key) for level, key, _ in expected]
    for (_, _, message), (_, _, engine) in zip(findings, expected):
        assert f"option.kv_cache_dtype=fp8 is not supported by the {engine} engine" in message
