"""Newest LMI async mode: `handle` returns a coroutine; each request gets an async generator of Outputs.

Every Output carries `Output.binary_encode({"data", "last"[, "code", "error"]})`, as DJL's async engine
expects. Closing the generator (client gone) cancels the request in the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator

from .errors import HandlerError
from .generation import Generation

if TYPE_CHECKING:
    from .service import StreamingService

WAIT_SECONDS = 5.0


class AsyncRequests:
    """Adapter for `option.async_mode=true`."""

    def __init__(self, service: StreamingService) -> None:
        self._svc = service

    async def handle(self, inputs: Any) -> Any:
        if inputs.is_empty():
            return None
        try:
            generation = self._svc.admit(inputs, rolling=True)
        except HandlerError as error:
            return self._error(error)
        if self._svc.streams(generation.request):
            return self._stream(generation)
        body = "".join([text async for text in self._texts(generation)])
        if generation.error is not None:
            return self._error(generation.error)
        return self._output(body, True, generation.content_type)

    def _error(self, error: HandlerError) -> Any:
        return self._output(error.body(), True, "application/json", code=error.status, error=error.message)

    async def _stream(self, generation: Generation) -> AsyncIterator[Any]:
        async for text in self._texts(generation):
            yield self._output(text, generation.finished, generation.content_type)

    async def _texts(self, generation: Generation) -> AsyncIterator[str]:
        hub = self._svc.hub
        try:
            while not generation.finished:
                await hub.wait_async(generation.request_id, timeout=WAIT_SECONDS)
                text = generation.absorb(hub.take(generation.request_id))
                if text or generation.finished:
                    yield text
        finally:
            self._svc.release(generation)

    def _output(self, data: str, last: bool, content_type: str, **error: Any) -> Any:
        output = self._svc.output_cls()
        output.add_property("Content-Type", content_type)
        output.add(self._svc.output_cls.binary_encode({"data": data, "last": last, **error}))
        return output
