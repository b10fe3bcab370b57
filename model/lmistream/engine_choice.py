"""Which engine the options and the stack pick: the rule behind `engines.choose`, free of torch and of imports.

The handler applies it to what it detects where it loads (whether vLLM and transformers' continuous batching
import, whether the device is a CPU); `lmi build --image` applies it to what the image ships, so the build makes the
load's choice and refuses what the load refuses. Each fact is asked for only when the rule needs it, since
detecting one can import a large library.
"""

from __future__ import annotations

from typing import Callable

from .errors import ConfigError


def requested(rolling_batch: str | None, generation_engine: str) -> tuple[str, str]:
    """The engine the options ask for (`auto`: the stack decides) and which option asks."""
    engine = generation_engine.strip().lower()
    if (rolling_batch or "").strip().lower() == "vllm":
        if engine not in ("auto", "vllm"):
            raise ConfigError(
                f"option.rolling_batch=vllm picks the vLLM engine, but option.generation_engine={engine} picks "
                "another: drop one of them",
                param="option.generation_engine",
            )
        return "vllm", "option.rolling_batch=vllm"
    return engine, "option.generation_engine"


def automatic(
    vllm_missing: Callable[[], str | None],
    continuous_missing: Callable[[], str | None],
    on_cpu: Callable[[], bool],
) -> tuple[str, str]:
    """The engine `auto` takes and why: vLLM where it runs, else transformers' continuous batching where it runs and
    the device is not a CPU (there the portable engine serves more tokens/s), else the portable engine."""
    if not vllm_missing():
        return "vllm", "vLLM is installed"
    missing = continuous_missing()
    if missing:
        return "portable", f"transformers' continuous batching is unavailable here ({missing})"
    if on_cpu():
        return "portable", "on CPU it outruns transformers' continuous batching"
    return "continuous", "transformers' continuous batching is available"
