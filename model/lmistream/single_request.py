"""One request per `handle` call (no rolling batch): a streamed Output (`add_stream_content`) or a whole one.

DJL iterates the stream on its own thread; closing the iterator (client gone) cancels the request.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from .errors import HandlerError, InvalidRequest
from .generation import Generation

if TYPE_CHECKING:
    from .service import StreamingService

WAIT_SECONDS = 5.0


class SingleRequest:
    """Adapter for `option.enable_streaming` and plain non-streaming models."""

    def __init__(self, service: StreamingService) -> None:
        self._svc = service

    def handle(self, inputs: Any) -> Any:
        try:
            generation = self._admit(inputs)
        except HandlerError as error:
            return self._svc.error_output(error)
        outputs = self._svc.output_cls()
        outputs.add_property("content-type", generation.content_type)
        if self._svc.streams(generation.request):
            outputs.add_stream_content(self.chunks(generation), output_formatter=None)
            return outputs
        body = "".join(self.chunks(generation))
        if generation.error is not None:
            return self._svc.error_output(generation.error)
        outputs.add(body, key="data")
        return outputs

    def _admit(self, inputs: Any) -> Generation:
        batches = inputs.get_batches()
        if len(batches) != 1:
            raise InvalidRequest("dynamic batching (batch_size > 1) is not supported; use option.rolling_batch")
        return self._svc.admit(batches[0], rolling=False)

    def chunks(self, generation: Generation) -> Iterator[str]:
        """The request's formatted output as it is produced; cancels the request if closed early."""
        hub = self._svc.hub
        try:
            while not generation.finished:
                hub.wait_any([generation.request_id], timeout=WAIT_SECONDS)
                text = generation.absorb(hub.take(generation.request_id))
                if text:
                    yield text
        finally:
            self._svc.release(generation)
