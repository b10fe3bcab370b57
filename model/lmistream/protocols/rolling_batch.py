"""DJL's rolling-batch protocol: each `handle` call is one step over ALL active requests, in Java's order.

New requests are the items past the ones still held. Each step waits (without polling) until some request
has new tokens, then answers one item per request with everything it has: 0.23 items are JSON
`{"data", "last"}`; newest items are `Output.binary_encode`d with `batch_{i}_Content-Type` properties.
A request that fails validation answers alone, with its API's error body; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..admission import EngineRequests
from ..errors import HandlerError
from ..generation_group import Admitted

STEP_WAIT_SECONDS = 5.0  # an empty step is harmless: DJL writes nothing for empty non-last data
# Set by `lmi serve` on a request whose client went away (real DJL sends no such signal): free it at once. The name is
# on the wire between lmikit's DJL replay and this handler, which never import each other.
DISCONNECTED_PROPERTY = "lmi_client_disconnected"


@dataclass
class _Slot:
    generation: Admitted | None
    error: HandlerError | None = None

    @property
    def done(self) -> bool:
        return self.generation is None or self.generation.finished


class RollingBatch:
    """Per-step bridge between DJL's Java loop and the engine's own loop."""

    def __init__(self, requests: EngineRequests) -> None:
        self._requests = requests
        self._slots: list[_Slot] = []

    def step(self, inputs: Any) -> Any:
        if _is_true(inputs.get_property("reset_rollingbatch")):
            self.reset()
        items = inputs.get_batches()
        for slot, item in zip(self._slots, items):
            if slot.generation is not None and _is_true(item.get_property(DISCONNECTED_PROPERTY)):
                slot.generation.abandon()
        self._slots.extend(self._admit(item) for item in items[len(self._slots) :])
        self._wait()
        outputs = self._requests.output_cls()
        for index, slot in enumerate(self._slots):
            self._answer(outputs, index, slot)
        self._slots = [slot for slot in self._slots if not slot.done]
        return outputs

    def reset(self) -> None:
        """DJL dropped every request after a failed step: forget them all."""
        for slot in self._slots:
            if slot.generation is not None:
                self._requests.release(slot.generation)
        self._slots = []

    def _admit(self, item: Any) -> _Slot:
        try:
            return _Slot(self._requests.admit(item, rolling=True))
        except HandlerError as error:
            return _Slot(None, error)

    def _wait(self) -> None:
        live = [s.generation.request_id for s in self._slots if s.generation is not None and not s.done]
        if live and len(live) == len(self._slots):
            self._requests.hub.wait_any(live, timeout=STEP_WAIT_SECONDS)

    def _answer(self, outputs: Any, index: int, slot: _Slot) -> None:
        generation, error = slot.generation, slot.error
        if generation is None:
            assert error is not None  # a slot without a generation holds the error that refused it
            item = {
                "data": error.body(),
                "last": True,
                "content_type": "application/json",
                "code": error.status,
                "error": error.message,
            }
        else:
            item = {
                "data": generation.absorb(self._requests.hub.take(generation.request_id)),
                "last": generation.finished,
                "content_type": generation.content_type,
                "request_id": generation.request_id,
            }
            if generation.error is not None and generation.buffered:  # one body: its status is the error's
                item.update(code=generation.error.status, error=generation.error.message)
            if generation.finished:
                self._requests.release(generation)
        self._encode(outputs, index, item)

    def _encode(self, outputs: Any, index: int, item: dict[str, Any]) -> None:
        """0.23: JSON `{"data", "last"}`; newest: the whole item binary-encoded, its content type as a property."""
        if not self._requests.dialect.binary_items:
            outputs.add_as_json({"data": item["data"], "last": item["last"]}, batch_index=index)
            return
        outputs.add(self._requests.output_cls.binary_encode(item), key="data", batch_index=index)
        outputs.add_property(f"batch_{index}_Content-Type", item["content_type"])


def _is_true(value: Any) -> bool:
    return str(value).lower() == "true"
