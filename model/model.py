"""DJL Serving entry point: a thin adapter over the lmistream package beside it.

DJL calls `handle` once with an empty Input carrying the init properties, then for every request (or,
with rolling batch, every step). Nothing heavy runs at import: newest DJL executes this file several times.
"""

from typing import Any

from djl_python import Input, Output
from lmistream.service import StreamingService

_service = StreamingService(Output, namespace=globals())


def handle(inputs: Input) -> Any:
    """Return None for the init/warm-up call, else an Output (a coroutine in async mode)."""
    return _service.handle(inputs)
