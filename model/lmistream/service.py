"""StreamingService: the handler behind model.py. Lazy init from DJL's first Input, then per-call dispatch.

Which DJL protocol is in use is detected at run time: the LMI generation from `Output.binary_encode`
(newest only), async mode and rolling batch from the init properties. The adapters in `protocols` speak the
protocols; `admission.EngineRequests` does what they share (validate, tokenize, submit, release).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from .adapters import AdapterRegistry, AdapterSpec, discover, read_adapter
from .admission import EngineRequests
from .config import HandlerConfig
from .dialect import DjlGeneration
from .engine import Engine
from .engines import create_engine
from .errors import ConfigError
from .hub import UpdateHub
from .protocols.asynchronous import AsyncRequests
from .protocols.plain import PlainRequests
from .protocols.rolling_batch import RollingBatch

log = logging.getLogger(__name__)
EngineFactory = Callable[[HandlerConfig], Engine]


class StreamingService:
    """One per model.py; `handle` is DJL's entry point."""

    def __init__(
        self,
        output_cls: type,
        namespace: Mapping[str, Any] | None = None,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.output_cls = output_cls
        self.generation = DjlGeneration.of_output(output_cls)
        self._namespace = namespace if namespace is not None else {}  # live: model.py may define more later
        self._engine_factory = engine_factory
        self.initialized = False

    def initialize(self, properties: Mapping[str, Any]) -> None:
        """Parse the config, load the engine and start its loop (DJL's init call)."""
        self.config = replace(HandlerConfig.from_properties(properties), djl_generation=self.generation)
        self.hub = UpdateHub()
        self.engine = (self._engine_factory or create_engine)(self.config)
        self.adapters = AdapterRegistry(self.config.enable_lora)
        if self.config.enable_lora:
            for spec in discover(self.config.model_dir or self.config.model_id, self.config.max_lora_rank):
                self.register_adapter(spec)
        self.requests = EngineRequests(
            self.config, self.engine, self.hub, self.output_cls, self._namespace, self.adapters
        )
        self.engine.start(self.hub.publish)
        self.rolling = RollingBatch(self.requests)
        self.plain = PlainRequests(self.requests)
        self.asynchronous = AsyncRequests(self.requests)
        self.initialized = True
        log.info("lmistream ready: DJL %s, config %s", self.generation.value, self.config)

    def handle(self, inputs: Any) -> Any:
        """DJL's handle: None for the init/warm-up call, else an Output (a coroutine in async mode)."""
        if not self.initialized:
            self.initialize(inputs.get_properties())
        if self.config.async_mode:
            return self.asynchronous.handle(inputs)
        if inputs.is_empty():
            return None
        if self.config.rolling_batch_enabled():
            return self.rolling.step(inputs)
        return self.plain.handle(inputs)

    def register_adapter(self, spec: AdapterSpec) -> None:
        """Serve one more LoRA adapter (validated by the engine against its model); ConfigError if it cannot."""
        add = getattr(self.engine, "add_adapter", None)
        if add is None:
            raise ConfigError(
                f"option.enable_lora: the {type(self.engine).__name__} does not serve LoRA adapters; use "
                "option.generation_engine=portable or vllm"
            )
        add(spec)
        self.adapters.add(spec)
        log.info("adapter %s (r=%d, %s) from %s", spec.name, spec.rank, ", ".join(spec.target_modules), spec.path)

    def register_adapter_input(self, inputs: Any) -> Any:
        """DJL's adapter registration call (properties name, src): an Output saying what happened."""
        name, src = inputs.get_property("name"), inputs.get_property("src")
        try:
            if not self.config.enable_lora:
                raise ConfigError("adapter registration needs option.enable_lora=true")
            if not name or not src:
                raise ConfigError("adapter registration needs the properties name and src (the adapter's directory)")
            self.register_adapter(read_adapter(name, src, self.config.max_lora_rank))
        except ConfigError as error:
            return self.output_cls().error(error.message, code=400, message=error.message)
        return self.output_cls(message=f"Adapter {name} registered")

    def unregister_adapter_input(self, inputs: Any) -> Any:
        """DJL's adapter removal call (property name)."""
        name = inputs.get_property("name")
        try:
            self.adapters.remove(name)
        except ConfigError as error:
            return self.output_cls().error(error.message, code=400, message=error.message)
        remove = getattr(self.engine, "remove_adapter", None)
        if remove is not None:
            remove(name)
        return self.output_cls(message=f"Adapter {name} unregistered")

    def engine_stats(self) -> dict[str, float]:
        """The engine's prefix-cache figures (hit rate over prompt tokens, bytes cached), where it keeps a cache."""
        engine = getattr(self.engine, "inner", self.engine) if self.initialized else None
        cache = getattr(engine, "prefix_cache", None)
        if cache is None:
            return {}
        return {"prefix_cache_hit_rate": cache.hit_rate, "prefix_cache_bytes": float(cache.cached_bytes)}

    def close(self) -> None:
        """Stop the engine's loop and free what it holds (DJL stops the worker; tests and tools call this)."""
        if self.initialized:
            self.engine.stop()
            self.initialized = False
