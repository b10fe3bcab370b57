"""The engines behind the `Engine` protocol, and the choice between them (`create_engine`). Free of torch at import.

* `continuous`: transformers' own continuous batching (transformers >= 5.24, so Python >= 3.11 and torch >= 2.6).
* `portable`: iteration-level batching over the model's forward pass and KV cache, on every stack from LMI 0.23's
  (Python 3.9, torch 2.0.1, transformers 4.30.2) up.

`option.generation_engine` forces one; `auto` (the default) takes the continuous engine where it can import and the
portable one elsewhere, and logs which it took and why.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

from ..config import HandlerConfig
from ..engine import Engine
from ..errors import ConfigError

log = logging.getLogger(__name__)


def _continuous(config: HandlerConfig) -> Engine:
    try:
        from .continuous import ContinuousBatchingEngine
    except ImportError as error:
        raise ConfigError(
            f"option.generation_engine=continuous cannot load here ({error}): transformers' continuous batching needs "
            "transformers 5.24 (Python >= 3.11, torch >= 2.6); use option.generation_engine=portable or auto"
        ) from error
    return ContinuousBatchingEngine(config)


def _portable(config: HandlerConfig) -> Engine:
    from .portable import PortableEngine

    return PortableEngine(config)


FACTORIES: dict[str, Callable[[HandlerConfig], Engine]] = {"continuous": _continuous, "portable": _portable}


def choose(config: HandlerConfig) -> tuple[str, str]:
    """The engine name for this config and the reason, without loading anything heavy."""
    if config.generation_engine != "auto":
        return config.generation_engine, "option.generation_engine"
    try:
        importlib.import_module(f"{__name__}.continuous")  # feature detection: transformers' continuous batching
    except ImportError as error:
        return "portable", f"transformers' continuous batching is unavailable here ({error})"
    return "continuous", "transformers' continuous batching is available"


def create_engine(config: HandlerConfig) -> Engine:
    """Load the engine `choose` picks; errors name the option and the way out."""
    name, reason = choose(config)
    log.info("lmistream engine: %s (%s)", name, reason)
    return FACTORIES[name](config)
