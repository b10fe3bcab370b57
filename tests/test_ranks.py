"""Rank discovery and the degree check (pure), and the sharding path a stack without transformers' tp_plan takes."""

from __future__ import annotations

import pytest
from lmistream.errors import ConfigError
from lmistream.ranks import RankInfo, check_degree


def test_rank_comes_from_djl_variables_or_from_openmpi_as_djl_copies_them() -> None:
    assert RankInfo.from_env({}) == RankInfo(0, 1, 0)
    assert RankInfo.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == RankInfo(1, 2, 1)
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}
    info = RankInfo.from_env(mpi)
    assert info == RankInfo(3, 4, 3) and not info.leader


def test_the_degree_must_match_the_ranks_djl_started() -> None:
    assert check_degree(None, RankInfo(0, 1, 0)) == 1
    assert check_degree(1, RankInfo()) == 1
    assert check_degree(None, RankInfo(0, 4, 0)) == 4  # `max`: every rank
    assert check_degree(2, RankInfo(1, 2, 1)) == 2
    with pytest.raises(
        ConfigError, match="tensor_parallel_degree=2 but this handler runs as a single process.*engine=MPI"
    ):
        check_degree(2, RankInfo())
    with pytest.raises(ConfigError, match="tensor_parallel_degree=4 but DJL started 2 ranks"):
        check_degree(4, RankInfo(0, 2, 0))


@pytest.mark.integration
def test_without_a_tp_plan_sharding_goes_through_deepspeed_which_needs_cuda(tmp_path) -> None:
    import torch
    from lmikit.embedded_model import ensure_tiny_model
    from lmistream.config import HandlerConfig
    from lmistream.engines.distributed import TensorParallel, shard_with_deepspeed

    config = HandlerConfig(model_id=str(ensure_tiny_model()))
    with pytest.raises(ConfigError, match="through DeepSpeed, which needs CUDA GPUs"):
        shard_with_deepspeed(config, torch.device("cpu"), TensorParallel(RankInfo(0, 2, 0), 2))


@pytest.mark.integration
def test_a_degree_that_does_not_divide_the_heads_is_refused_before_loading() -> None:
    from lmikit.embedded_model import ensure_tiny_model
    from lmistream.config import HandlerConfig
    from lmistream.engines.distributed import check_heads

    config = HandlerConfig(model_id=str(ensure_tiny_model()))  # 4 heads
    check_heads(config, 2)
    with pytest.raises(ConfigError, match="tensor_parallel_degree=3 does not divide the model's num_attention_heads=4"):
        check_heads(config, 3)


@pytest.mark.integration
def test_a_single_process_asked_for_two_ranks_fails_the_load_naming_engine_mpi(monkeypatch) -> None:
    from lmikit.embedded_model import ensure_tiny_model
    from lmistream.config import HandlerConfig
    from lmistream.engines import create_engine

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    config = HandlerConfig.from_properties({"model_id": str(ensure_tiny_model()), "tensor_parallel_degree": "2"})
    with pytest.raises(ConfigError, match="tensor_parallel_degree=2 but this handler runs as a single process"):
        create_engine(config)
