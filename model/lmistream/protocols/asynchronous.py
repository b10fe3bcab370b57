"""Newest LMI async mode: `handle` returns a coroutine; each request gets an async generator of Outputs.

Every Output carries `Output.binary_encode({"data", "last"[, "code", "error"]})`, as DJL's async engine
expects. Closing the generator (client gone) cancels the request in the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..admission import EngineRequests
from ..errors import HandlerError
from ..generation_group import Admitted
from .drain import texts


class AsyncRequests:
    """Adapter for `option.async_mode=true`."""

    def __init__(self, requests: EngineRequests) -> None:
        self._requests = requests

    async def handle(self, inputs: Any) -> Any:
        if inputs.is_empty():
            return None
        try:
            generation = self._requests.admit(inputs, rolling=True)
        except HandlerError as error:
            return self._error(error)
        if self._requests.streams(generation.request):
            return self._stream(generation)
        body = "".join([text async for text in texts(self._requests, generation)])
        if generation.error is not None:
            return self._error(generation.error)
        return self._output(body, True, generation.content_type)

    def _error(self, error: HandlerError) -> Any:
        return self._output(error.body(), True, "application/json", code=error.status, error=error.message)

    async def _stream(self, generation: Admitted) -> AsyncIterator[Any]:
        async for text in texts(self._requests, generation):
            yield self._output(text, generation.finished, generation.content_type)

    def _output(self, data: str, last: bool, content_type: str, **error: Any) -> Any:
        output = self._requests.output_cls()
        output.add_property("Content-Type", content_type)
        output.add(self._requests.output_cls.binary_encode({"data": data, "last": last, **error}))
        return output
