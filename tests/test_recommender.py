"""The newest LMI container's config recommender as `lmi serve` replays it: what DJL sets where serving.properties is
silent, and nothing where the file speaks, the model has no readable config, or the DJL generation is 0.23's."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmikit.djl.dialect import DjlVersion
from lmikit.djl.recommender import recommended
from lmikit.server.run import ServeSettings, local_project

CAUSAL = ["LlamaForCausalLM"]


@pytest.mark.parametrize(
    ("props", "architectures", "gpus", "vllm_image", "added"),
    [
        (
            {},
            CAUSAL,
            0,
            False,
            {
                "option.rolling_batch": "disable",
                "option.pipeline_parallel_degree": "1",
                "option.max_rolling_batch_size": "32",
            },
        ),
        (
            {},
            CAUSAL,
            4,
            True,
            {
                "option.async_mode": "true",
                "option.rolling_batch": "disable",
                "option.pipeline_parallel_degree": "1",
                "option.tensor_parallel_degree": "4",
                "option.max_rolling_batch_size": "32",
            },
        ),
        (
            {"option.rolling_batch": "lmi-dist", "option.pipeline_parallel_degree": "1"},
            CAUSAL,
            0,
            True,
            {"option.rolling_batch": "vllm", "option.mpi_mode": "false", "option.max_rolling_batch_size": "256"},
        ),
        (
            {
                "option.rolling_batch": "auto",
                "option.pipeline_parallel_degree": "1",
                "option.max_rolling_batch_size": "8",
            },
            ["BertModel"],
            0,
            True,
            {"option.rolling_batch": "disable"},
        ),
        (
            {
                "batch_size": "4",
                "option.pipeline_parallel_degree": "1",
                "option.tensor_parallel_degree": "1",
                "option.max_rolling_batch_size": "8",
            },
            CAUSAL,
            2,
            False,
            {"option.rolling_batch": "disable"},
        ),
        ({"option.rolling_batch": "vllm"}, None, 8, True, {}),
    ],
)
def test_what_djl_sets_where_the_file_is_silent(
    props: dict, architectures: list[str] | None, gpus: int, vllm_image: bool, added: dict
) -> None:
    assert recommended(props, architectures, gpus, vllm_image, {}) == added


def test_the_environment_picks_the_degrees_as_in_djl() -> None:
    env = {"TENSOR_PARALLEL_DEGREE": "2", "PIPELINE_PARALLEL_DEGREE": "1"}
    assert (
        recommended({"option.rolling_batch": "custom"}, CAUSAL, 8, False, env)["option.tensor_parallel_degree"] == "2"
    )


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_lmi_serve_replays_it_under_the_newest_djl_only(version: str, tmp_path: Path) -> None:
    from lmikit.embedded_model import ensure_tiny_model

    (tmp_path / "serving.properties").write_text("engine=Python\noption.entryPoint=model.py\n", encoding="utf-8")
    said: list[str] = []
    settings = ServeSettings(project_dir=tmp_path, model_id=ensure_tiny_model(), djl_version=DjlVersion(version))
    props = local_project(settings, said.append).properties
    if version == "0.23":
        assert "option.rolling_batch" not in props and not any("recommender" in line for line in said)
    else:
        assert props["option.rolling_batch"] == "disable" and props["option.max_rolling_batch_size"] == "32"
        assert any("config recommender" in line and "option.rolling_batch=disable" in line for line in said)
