"""The engines behind the `Engine` protocol, and the choice between them (`create_engine`). Free of torch at import.

* `vllm`: vLLM's own engine, where the image ships vLLM (`vllm_engine`).
* `continuous`: transformers' own continuous batching (transformers >= 5.24, so Python >= 3.11 and torch >= 2.6).
* `portable`: iteration-level batching over the model's forward pass and KV cache, on every stack from LMI 0.23's
  (Python 3.9, torch 2.0.1, transformers 4.30.2) up.

With `option.tensor_parallel_degree` above 1 a transformers engine is built on every rank DJL started, over a model
sharded between them (`distributed`), and wrapped for its rank (`ranked`); vLLM shards the model over workers of its
own. `option.rolling_batch=vllm` (DJL's name) or `option.generation_engine` forces one; `auto` (the default) takes
vLLM wherever it imports, else the continuous engine on a GPU where it can import, and the portable one elsewhere
(on a CPU it serves more tokens/s than transformers' continuous batching: the README's engine table). It logs which it
took and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Callable

from ..config import HandlerConfig
from ..engine import Engine
from ..engine_choice import automatic, requested
from ..errors import ConfigError
from ..options import check as check_options
from ..options import unread
from ..ranks import RankInfo, check_degree

log = logging.getLogger(__name__)


def _continuous(config: HandlerConfig, tp: Any = None) -> Engine:
    try:
        from .continuous import ContinuousBatchingEngine
    except ImportError as error:
        raise ConfigError(
            f"option.generation_engine=continuous cannot load here ({error}): transformers' continuous batching needs "
            "transformers 5.24 (Python >= 3.11, torch >= 2.6); use option.generation_engine=portable or auto"
        ) from error
    return ContinuousBatchingEngine(config, tp)


def _portable(config: HandlerConfig, tp: Any = None) -> Engine:
    from .portable import PortableEngine

    return PortableEngine(config, tp)


def _vllm(config: HandlerConfig) -> Engine:
    missing = vllm_unavailable()
    if missing:
        raise ConfigError(
            f"the vLLM engine (option.rolling_batch=vllm or option.generation_engine=vllm) cannot load "
            f"here ({missing}): use an image that ships vLLM, or option.generation_engine=auto"
        )
    from .vllm_engine import AsyncVllmEngine, VllmEngine

    return AsyncVllmEngine(config) if config.async_mode else VllmEngine(config)


#: engine name -> factory(config, tensor-parallel group or None)
FACTORIES: dict[str, Callable[..., Engine]] = {"continuous": _continuous, "portable": _portable}


def continuous_unavailable() -> str | None:
    """Why transformers' continuous batching cannot run here (feature detection), or None when it can."""
    try:
        importlib.import_module(f"{__name__}.continuous")
    except ImportError as error:
        return str(error)
    return None


def vllm_unavailable() -> str | None:
    """Why the vLLM engine cannot run here (feature detection: its module imports the vLLM API it uses), or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    try:
        importlib.import_module(f"{__name__}.vllm_engine")
    except Exception as error:  # a vLLM without that API, or one that fails to import (e.g. beside a bad torchvision)
        return f"{type(error).__name__}: {error}"
    return None


def available() -> list[str]:
    """The engines this stack can run."""
    engines = ["portable"] if continuous_unavailable() else ["continuous", "portable"]
    return engines if vllm_unavailable() else ["vllm", *engines]


def choose(config: HandlerConfig) -> tuple[str, str]:
    """The engine name for this config and the reason (`engine_choice`'s rule over what this stack has)."""
    engine, reason = requested(config.rolling_batch, config.generation_engine)
    if engine != "auto":
        return engine, reason
    return automatic(vllm_unavailable, continuous_unavailable, lambda: _device(config).type == "cpu")


def _device(config: HandlerConfig) -> Any:
    from .loading import device_for

    return device_for(config.device_id)


def create_engine(config: HandlerConfig) -> Engine:
    """Load the engine `choose` picks, sharded over the ranks when the degree is above 1; errors name the option and
    the way out."""
    name, reason = choose(config)
    check_options(dict(config.options), name)
    _warn_unread(config, name)
    ranks = RankInfo.from_env()
    if name == "vllm":
        return _vllm_engine(config, ranks, reason)
    degree = check_degree(config.tensor_parallel_degree, ranks)
    check_lora(config, name, degree)
    if config.quantize is not None and degree > 1:
        raise ConfigError(
            f"option.quantize={config.quantize}: the {name} engine does not shard quantized weights across "
            f"tensor-parallel ranks (option.tensor_parallel_degree={degree}); quantize with "
            "option.tensor_parallel_degree=1, or use the vLLM engine",
            param="option.quantize",
        )
    if degree == 1:
        engine = FACTORIES[name](config)
        log.info(
            "lmistream engine: %s (%s), %s on %s, %d parameter bytes",
            name,
            reason,
            engine.load_path,
            _device(config),
            engine.parameter_bytes,
        )
        return engine
    from .distributed import join
    from .ranked import RankedEngine

    tp = join(config, ranks, degree)
    inner = FACTORIES[name](config, tp)
    relay = tp.channel() if config.djl_generation.dialect.last_rank_answers else None
    log.info(
        "lmistream engine: %s (%s), rank %d of %d, sharded by %s, %d parameter bytes on this rank",
        name,
        reason,
        ranks.rank,
        degree,
        inner.load_path,
        inner.parameter_bytes,
    )
    return RankedEngine(inner, tp, relay)


def _warn_unread(config: HandlerConfig, name: str) -> None:
    """One warning per option nothing reads (vLLM's engine arguments count on the vLLM engine)."""
    known: frozenset[str] = frozenset()
    if name == "vllm" and not vllm_unavailable():  # else loading it fails, saying why
        from .vllm_arguments import engine_fields

        known = engine_fields()
    for key in unread(dict(config.options), known):
        log.warning(
            "option.%s has no effect: neither DJL's LMI handlers nor this handler read it%s",
            key,
            ", nor is it one of vLLM's engine arguments" if name == "vllm" else "",
        )


def check_lora(config: HandlerConfig, name: str, degree: int) -> None:
    """Refuse LoRA adapters where this engine cannot apply them, before the model loads: over tensor-parallel ranks
    only the portable engine on a model transformers shards itself (its tp_plan) slices adapters to the shards."""
    if not config.enable_lora or degree == 1:
        return
    if name != "portable":
        raise ConfigError(
            f"option.enable_lora: the {name} engine does not shard LoRA adapters across tensor-parallel ranks "
            f"(option.tensor_parallel_degree={degree}); use option.generation_engine=portable, "
            "option.tensor_parallel_degree=1, or the vLLM engine"
        )
    from .distributed import has_tp_plan

    if not has_tp_plan(config):
        raise ConfigError(
            f"option.enable_lora: this transformers has no tp_plan for the model, so its tensor-parallel shards "
            f"(option.tensor_parallel_degree={degree}) come from DeepSpeed AutoTP, whose sharded layers adapters do "
            "not follow; serve adapters with option.tensor_parallel_degree=1, a transformers with tp_plan (LMI's "
            "newest image), or the vLLM engine"
        )


def _vllm_engine(config: HandlerConfig, ranks: RankInfo, reason: str) -> Engine:
    """vLLM in this one process, which starts vLLM's own workers (tensor parallelism included)."""
    if ranks.world_size > 1:
        raise ConfigError(
            f"the vLLM engine runs as one process that starts its own tensor-parallel workers, but DJL "
            f"started {ranks.world_size} ranks: use engine=Python with option.tensor_parallel_degree"
        )
    engine = _vllm(config)
    log.info("lmistream engine: vllm (%s), %s", reason, engine.load_path)
    return engine
