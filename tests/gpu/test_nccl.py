"""The NCCL process group, started the way `lmi serve` starts tensor-parallel ranks: one mpirun job (`djl.rank_group`)
at degree 1, whose rank loads a model.py that joins the handler's group (`distributed.join`) on GPU 0 and sums a
tensor over it. At degree 1 the handler itself joins no group (there is nothing to shard) and one GPU cannot hold
two NCCL ranks, so this is as far as one GPU goes; sharding over NCCL needs two GPUs and was not run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lmikit.djl.driver import Frontend
from lmikit.djl.rank_group import RankGroup
from lmikit.project.properties import init_properties

#: a handler that joins the group on its init call and writes what it saw beside itself
JOINING_MODEL = """
import json
import os

import torch
import torch.distributed as dist
from lmistream.config import HandlerConfig
from lmistream.engines.distributed import join
from lmistream.ranks import RankInfo


def handle(inputs):
    if not inputs.is_empty():
        return None
    config = HandlerConfig.from_properties(inputs.get_properties())
    group = join(config, RankInfo.from_env(), 1)
    device = torch.device("cuda", 0) if config.device_id >= 0 else torch.device("cpu")
    total = torch.full((1,), 3.0, device=device)
    dist.all_reduce(total)
    report = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "rank": group.ranks.rank,
              "sum": total.item(), "device": str(total.device)}
    with open(os.path.join(os.path.dirname(__file__), "joined.json"), "w") as file:
        json.dump(report, file)
    return None
"""


def test_the_nccl_group_starts_under_lmi_serves_mpirun_launch(
    tmp_path: Path, tiny_dir: Path, device: torch.device, device_id: str, record
) -> None:
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not on PATH here, so lmi serve's mpirun launch cannot start (install OpenMPI)")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.py").write_text(JOINING_MODEL)
    group = RankGroup(1, model_dir, "0.23", launcher="mpirun")
    group.start()
    try:
        props = {"engine": "MPI", "option.model_id": str(tiny_dir), "option.tensor_parallel_degree": "1"}
        frontend = Frontend(group.entry, "0.23", init_properties(props, model_dir, int(device_id)))
        frontend.start()
        frontend.close()
    finally:
        group.close()
    joined = json.loads((model_dir / "joined.json").read_text())
    record(**joined)
    expected = "nccl" if device.type == "cuda" else "gloo"
    assert joined == {"backend": expected, "world_size": 1, "rank": 0, "sum": 3.0, "device": str(device)}
