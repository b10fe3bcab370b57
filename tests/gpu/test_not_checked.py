"""What the GPU tier cannot check on the GPU machine, said in its summary instead of left out: that machine has no
package registry, and only pure-Python wheels within 64 MiB travel to it (`make gpu-bundle`)."""

from __future__ import annotations

import importlib.util

import pytest

WHY = {
    "vllm": "vLLM's CUDA build is not on the GPU machine's image, and its wheel (hundreds of MiB, with CUDA kernels "
    "pinned to one torch) cannot travel there: the vLLM engine on CUDA and its comparison with vLLM's own server "
    "were not run",
    "deepspeed": "DeepSpeed is not on the GPU machine's image and compiles its CUDA ops at install, which needs a "
    "registry there: its inference path (init_inference with AutoTP) was not run",
}


@pytest.mark.parametrize("package", sorted(WHY))
def test_not_checked_here(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(WHY[package])
    pytest.skip(f"{package} is installed here, but this tier has no check of it yet")
