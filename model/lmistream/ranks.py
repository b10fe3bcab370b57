"""Which tensor-parallel rank this process is, from the environment DJL gives it. Pure: no torch.

DJL starts N ranks only with `engine=MPI` (0.23 also `DeepSpeed`): one `mpirun -N <tp>` job whose
`djl_python_engine.py` copies `OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK` into `WORLD_SIZE/RANK/LOCAL_RANK`, with
`MASTER_ADDR` / `MASTER_PORT` set. `engine=Python` with a degree above 1 runs one process that sees N GPUs: there
are no ranks to shard over, and the handler says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the tensor-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0 takes the requests and plans every step; the other ranks follow it."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RankInfo:
        env = os.environ if environ is None else environ

        def read(name: str, openmpi: str, default: int) -> int:
            value = env.get(name, env.get(f"OMPI_COMM_WORLD_{openmpi}", ""))
            return int(value) if value.strip() else default

        return cls(read("RANK", "RANK", 0), read("WORLD_SIZE", "SIZE", 1), read("LOCAL_RANK", "LOCAL_RANK", 0))


def check_degree(degree: int | None, ranks: RankInfo) -> int:
    """The tensor-parallel degree to run with; ConfigError when it does not match the ranks DJL started."""
    wanted = degree or ranks.world_size  # `max` (None): every rank DJL started
    if wanted == ranks.world_size:
        return wanted
    if ranks.world_size == 1:
        raise ConfigError(
            f"option.tensor_parallel_degree={wanted} but this handler runs as a single process: DJL starts {wanted} "
            "ranks only with engine=MPI (engine=Python gives one process all the GPUs, which is no tensor "
            "parallelism); set engine=MPI, or option.tensor_parallel_degree=1"
        )
    raise ConfigError(f"option.tensor_parallel_degree={wanted} but DJL started {ranks.world_size} ranks")
