"""StreamingService: the handler behind model.py. Lazy init from DJL's first Input, then per-call dispatch.

Which DJL protocol is in use is detected at run time: the LMI generation from `Output.binary_encode`
(newest only), async mode and rolling batch from the init properties. The adapters in `protocols` speak the
protocols; `admission` does what they share (validate, tokenize, submit, release).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from .admission import Admissions
from .config import HandlerConfig
from .engine import Engine
from .engines import create_engine
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
        self.dialect = "newest" if hasattr(output_cls, "binary_encode") else "0.23"
        self._namespace = namespace if namespace is not None else {}  # live: model.py may define more later
        self._engine_factory = engine_factory
        self.initialized = False

    def initialize(self, properties: Mapping[str, Any]) -> None:
        """Parse the config, load the engine and start its loop (DJL's init call)."""
        self.config = replace(HandlerConfig.from_properties(properties), djl_dialect=self.dialect)
        hub = UpdateHub()
        self.engine = (self._engine_factory or create_engine)(self.config)
        self.requests = Admissions(self.config, self.engine, hub, self.output_cls, self._namespace)
        self.engine.start(hub.publish)
        self.rolling = RollingBatch(self.requests)
        self.plain = PlainRequests(self.requests)
        self.asynchronous = AsyncRequests(self.requests)
        self.initialized = True
        log.info("lmistream ready: dialect %s, config %s", self.dialect, self.config)

    def handle(self, inputs: Any) -> Any:
        """DJL's handle: None for the init/warm-up call, else an Output (a coroutine in async mode)."""
        if not self.initialized:
            self.initialize(inputs.get_properties())
        if self.config.async_mode:
            return self.asynchronous.handle(inputs)
        if inputs.is_empty():
            return None
        if self.config.rolling_batch_enabled(newest=self.dialect == "newest"):
            return self.rolling.step(inputs)
        return self.plain.handle(inputs)

    def close(self) -> None:
        """Stop the engine's loop and free what it holds (DJL stops the worker; tests and tools call this)."""
        if self.initialized:
            self.engine.stop()
            self.initialized = False
