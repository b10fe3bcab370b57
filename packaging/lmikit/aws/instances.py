"""The GPUs of SageMaker instance types, and the check that a tensor-parallel degree fits them, made before a deploy
rather than after a 15-minute endpoint creation."""

from __future__ import annotations

from ..project.layout import TensorParallelDegree
from .lifecycle import DeployError

#: GPUs per instance type, for the tensor-parallel check before a deploy (types not listed are not checked)
INSTANCE_GPUS = {
    "ml.g4dn.xlarge": 1,
    "ml.g4dn.2xlarge": 1,
    "ml.g4dn.4xlarge": 1,
    "ml.g4dn.8xlarge": 1,
    "ml.g4dn.12xlarge": 4,
    "ml.g5.xlarge": 1,
    "ml.g5.2xlarge": 1,
    "ml.g5.4xlarge": 1,
    "ml.g5.8xlarge": 1,
    "ml.g5.16xlarge": 1,
    "ml.g5.12xlarge": 4,
    "ml.g5.24xlarge": 4,
    "ml.g5.48xlarge": 8,
    "ml.g6.xlarge": 1,
    "ml.g6.2xlarge": 1,
    "ml.g6.4xlarge": 1,
    "ml.g6.8xlarge": 1,
    "ml.g6.16xlarge": 1,
    "ml.g6.12xlarge": 4,
    "ml.g6.24xlarge": 4,
    "ml.g6.48xlarge": 8,
    "ml.p4d.24xlarge": 8,
    "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8,
}


#: letters of the SageMaker instance families without a GPU (ml.m5, ml.c7i, ml.r6g, ml.t3: general purpose, compute,
#: memory optimised, burstable)
CPU_FAMILIES = ("m", "c", "r", "t")


def instance_gpus(instance_type: str) -> int | None:
    """GPUs of an instance type: INSTANCE_GPUS, 0 for the CPU families, None when not known."""
    if instance_type in INSTANCE_GPUS:
        return INSTANCE_GPUS[instance_type]
    family = (instance_type.split(".") + ["", ""])[1]
    return 0 if family[:1] in CPU_FAMILIES and family[1:2].isdigit() else None


def check_gpus(instance_type: str, degree: TensorParallelDegree) -> None:
    """DeployError when the instance has fewer GPUs than option.tensor_parallel_degree (`Project`'s reading) asks
    for."""
    gpus = INSTANCE_GPUS.get(instance_type)
    if gpus is not None and isinstance(degree, int) and degree > gpus:
        raise DeployError(
            f"option.tensor_parallel_degree={degree} needs {degree} GPUs; {instance_type} has {gpus}: "
            "pick a larger --instance-type or a smaller degree"
        )
