"""The tensor-parallel group: torch.distributed from the ranks DJL started, the sharded load, and the channels that
keep the ranks in step.

NCCL joins the ranks on GPUs, gloo on CPU. A model is sharded through transformers' own tensor parallelism
(`tp_plan="auto"`) where the installed transformers has a plan for it, else through DeepSpeed's `init_inference`
with AutoTP (DeepSpeed 0.9.5, LMI 0.23's, needs CUDA). Not with kernel injection: its kernels keep the KV cache in
their own workspace, which the portable engine's batch surgery (filter / concatenate of the cache) cannot reach. A `Channel` is a broadcast from rank 0 over
a gloo group of its own, so that each thread that talks to the other ranks (the engine loop, the update relay) has
its own ordered stream of collectives beside the model's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoConfig

from ..config import HandlerConfig
from ..errors import ConfigError
from ..heads import heads_error, undivided_heads
from ..ranks import RankInfo
from .loading import load, oom_as_handler_error

logger = logging.getLogger(__name__)
#: a follower waits for rank 0's next plan for as long as the endpoint is idle
IDLE_TIMEOUT = timedelta(days=365)


class Channel:
    """Rank 0 sends Python objects, every other rank receives them in the same order."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self._group = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)

    def send(self, item: Any) -> None:
        dist.broadcast_object_list([item], src=0, group=self._group)

    def receive(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]


@dataclass(frozen=True)
class TensorParallel:
    """This rank's place in a joined group of `degree` ranks."""

    ranks: RankInfo
    degree: int

    @property
    def leader(self) -> bool:
        return self.ranks.leader

    def channel(self) -> Channel:
        """A new broadcast channel (every rank must open its channels in the same order)."""
        return Channel(self.leader)


def join(config: HandlerConfig, ranks: RankInfo, degree: int) -> TensorParallel:
    """Initialise torch.distributed for `degree` ranks: NCCL on GPUs, gloo on CPU."""
    cuda = config.device_id >= 0 and torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < degree:
        raise ConfigError(
            f"option.tensor_parallel_degree={degree} needs {degree} GPUs; {torch.cuda.device_count()} are visible"
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"tensor parallelism needs {' and '.join(missing)} in the environment (DJL's mpirun sets them)"
        )
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=ranks.rank, world_size=ranks.world_size)
    logger.info("rank %d of %d joined the tensor-parallel group (%s)", ranks.rank, degree, dist.get_backend())
    return TensorParallel(ranks, degree)


def check_heads(config: HandlerConfig, degree: int) -> None:
    """Every head count of the model must divide by the degree; the error names both numbers."""
    model_config = AutoConfig.from_pretrained(
        config.model_id, trust_remote_code=config.trust_remote_code, local_files_only=os.path.isdir(config.model_id)
    )
    undivided = undivided_heads(lambda key: getattr(model_config, key, None), degree)
    if undivided:
        raise ConfigError(heads_error(degree, undivided), param="option.tensor_parallel_degree")


def has_tp_plan(config: HandlerConfig) -> bool:
    """Whether the installed transformers shards this model itself (a `base_model_tp_plan`), else DeepSpeed does."""
    model_config = AutoConfig.from_pretrained(
        config.model_id, local_files_only=os.path.isdir(config.model_id), trust_remote_code=config.trust_remote_code
    )
    return bool(getattr(model_config, "base_model_tp_plan", None))


def load_sharded(config: HandlerConfig, device: torch.device, tp: TensorParallel) -> tuple[Any, Any, str]:
    """Tokenizer, this rank's shard of the model, and which path sharded it."""
    check_heads(config, tp.degree)
    if has_tp_plan(config):
        tokenizer, model = load(config, device, tp_plan="auto")
        return tokenizer, model, "transformers tp_plan"
    return shard_with_deepspeed(config, device, tp)


def shard_with_deepspeed(config: HandlerConfig, device: torch.device, tp: TensorParallel) -> tuple[Any, Any, str]:
    """Tokenizer and this rank's shard of the model by DeepSpeed AutoTP, where transformers has no tp_plan for it
    (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError(
            "tensor parallelism on this transformers (no tp_plan for this model) goes through DeepSpeed, which needs "
            "CUDA GPUs here (its 0.9.5 build, LMI 0.23's, has no CPU accelerator); use option.tensor_parallel_degree=1"
        )
    import deepspeed

    tokenizer, model = load(config, torch.device("cpu"))
    with oom_as_handler_error("sharding the model with DeepSpeed"):
        engine = deepspeed.init_inference(
            model, tensor_parallel={"tp_size": tp.degree}, dtype=model.dtype, replace_with_kernel_inject=False
        )
    return tokenizer, engine.module.eval(), "DeepSpeed AutoTP"


def parameter_bytes(model: Any) -> int:
    """Bytes of parameters this rank holds (a DTensor counts its local shard only)."""
    total = 0
    for parameter in model.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        total += local.numel() * local.element_size()
    return total
