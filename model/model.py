"""DJL Serving entry point: a thin adapter over the lmistream package beside it.

DJL calls `handle` once with an empty Input carrying the init properties, then for every request (or,
with rolling batch, every step). Nothing heavy runs at import: newest DJL executes this file several times.
"""

from typing import Any

from djl_python import Input, Output
from lmistream.service import StreamingService

#: the handler's service (its engine, its update hub), public for the tools that drive this file
service = StreamingService(Output, namespace=globals())


def handle(inputs: Input) -> Any:
    """Return None for the init/warm-up call, else an Output (a coroutine in async mode)."""
    return service.handle(inputs)


def register_adapter(inputs: Input) -> Any:
    """DJL's LoRA adapter registration (newest LMI): properties `name` and `src` (the adapter's directory)."""
    return service.register_adapter_input(inputs)


def unregister_adapter(inputs: Input) -> Any:
    """DJL's LoRA adapter removal: property `name`."""
    return service.unregister_adapter_input(inputs)


def engine_stats() -> dict[str, float]:
    """The engine's prefix-cache figures for a server's /metrics (not a DJL call: `lmi serve` reads it)."""
    return service.engine_stats()
