"""DJL's plain mode, one request per `handle` call (no rolling batch): a streamed Output (`add_stream_content`) or a
whole one.

DJL iterates the stream on its own thread; closing the iterator (client gone) cancels the request.
"""

from __future__ import annotations

from typing import Any

from ..admission import EngineRequests
from ..errors import HandlerError, InvalidRequest
from ..generation_group import Admitted
from .drain import chunks


class PlainRequests:
    """Adapter for DJL's plain mode: `option.enable_streaming` and non-streaming models, one request per call."""

    def __init__(self, requests: EngineRequests) -> None:
        self._requests = requests

    def handle(self, inputs: Any) -> Any:
        try:
            generation = self._admit(inputs)
        except HandlerError as error:
            return self._requests.error_output(error)
        outputs = self._requests.output_cls()
        outputs.add_property("content-type", generation.content_type)
        if self._requests.streams(generation.request):
            outputs.add_stream_content(chunks(self._requests, generation), output_formatter=None)
            return outputs
        body = "".join(chunks(self._requests, generation))
        if generation.error is not None:
            return self._requests.error_output(generation.error)
        outputs.add(body, key="data")
        return outputs

    def _admit(self, inputs: Any) -> Admitted:
        batches = inputs.get_batches()
        if len(batches) != 1:
            raise InvalidRequest("dynamic batching (batch_size > 1) is not supported; use option.rolling_batch")
        return self._requests.admit(batches[0], rolling=False)
