"""Java's `RollingBatch` loop: an ordered active list, one handler call per decoding step, items by position.

Each step packs every active request into one Input (`batch_<i>.` keys in the generation's dialect), calls the
handler through the frontend's `step` (the only thing it needs from the frontend), and hands item i of the Output
to request i; a request leaves the list with its last item. A failed or mis-sized batch ends every active request
with DJL's error chunk and resets the batch; a malformed item kills the loop as it kills Java's thread, and the
frontend reports it through `fatal_error`.

Client disconnects: DJL never stops an in-flight request, so a cancelled request keeps its slot until it ends. The
local endpoint goes one step further, so that the handler can free the engine slot at once: a cancelled request
carries the property `lmi_client_disconnected=true` on the following steps (a handler that ignores it sees DJL's
behaviour). Real DJL sends no such signal; the README says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from lmikit.djl.dialect import DjlDialect
from lmikit.djl.java import Malformed, batch_headers, gson_output, java_props, seconds
from lmikit.djl.jobs import JavaRequest, Job
from lmikit.djl.response import BackendError

logger = logging.getLogger(__name__)
# The local-endpoint extension above, a name on the wire between this replay and the handler: the two sides never
# import each other (the container has no lmikit; the replay runs any model.py), so each names it and
# tests/test_djl_driver.py holds them equal.
DISCONNECTED_PROPERTY = "lmi_client_disconnected"
#: one handler call: Java's properties and content of the batch Input in, the finalized Output out
Step = Callable[[dict[str, str], list[tuple[str, bytes]]], Any]


class RollingBatch:
    """The active list and its loop thread (`run`); `add` is called from the frontend's worker thread."""

    def __init__(
        self,
        dialect: DjlDialect,
        step: Step,
        *,
        max_size: int,
        predict_timeout: float,
        content_type: str | None = None,
    ) -> None:
        self._dialect = dialect
        self._step = step
        self.max_size = max_size
        self._predict_timeout = predict_timeout
        self._content_type = content_type
        self.fatal_error: BackendError | None = None
        self._list: list[JavaRequest] = []
        self._lock = threading.Lock()
        self._can_add = threading.Condition(self._lock)
        self._can_read = threading.Condition(self._lock)
        self._reset = False
        self._stopped = False

    def add(self, job: Job) -> None:
        """Java `addInput`: wait up to predict_timeout for a slot, then join the end of the list."""
        with self._lock:
            if len(self._list) >= self.max_size and not self._can_add.wait(self._predict_timeout):
                job.response.fail(400, "TranslateException", f"Time out in: {seconds(self._predict_timeout)}")
                return
            error = BackendError("frontend closed") if self._stopped else self.fatal_error
            if error is not None:
                job.response.abort(error)
                return
            if self._content_type is not None:
                job.response.put_headers({"Content-Type": self._content_type})
            self._list.append(JavaRequest(job))
            self._can_read.notify()

    def run(self) -> None:
        while True:
            with self._lock:
                while not self._list and not self._stopped:
                    self._can_read.wait()
                if self._stopped:
                    return
                props, content, size = self._next_batch()
            output = self._step(props, content)
            with self._lock:
                if self._stopped:
                    return
                try:
                    self._apply(output, size)
                except Malformed as exc:
                    self._die(exc)
                    return

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for request in self._list:
                request.response.abort(BackendError("frontend closed"))
            self._list.clear()
            self._can_read.notify_all()
            self._can_add.notify_all()

    def active(self) -> int:
        with self._lock:
            return len(self._list)

    def _next_batch(self) -> tuple[dict[str, str], list[tuple[str, bytes]], int]:
        props: list[tuple[str, str]] = []
        content: list[tuple[str, bytes]] = []
        if self._reset:
            props.append(("reset_rollingbatch", "true"))
            self._reset = False
        for index, request in enumerate(self._list):
            prefix = self._dialect.key(index)
            first = request.next_token is None
            if first or self._dialect.properties_every_step:
                props.extend((prefix + key, value) for key, value in request.props.items())
            if request.response.cancelled:
                props.append((prefix + DISCONNECTED_PROPERTY, "true"))
            content.append((prefix + "data", request.data if first else self._dialect.placeholder))
            if first:
                content.append((prefix + "seed", request.seed.encode()))
        props.append(("batch_size", str(len(self._list))))
        return java_props(props), content, len(self._list)

    def _apply(self, output: Any, size: int) -> None:
        if output.code != 200 or output.content.size() != size:
            self._fail_all(output, size)
            return
        binary = self._dialect.binary_items
        headers = batch_headers(output.properties) if binary else {}
        for index in range(size):
            request, raw = self._list[index], bytes(output.content.value_at(index))
            if binary:
                request.add_binary_response(raw, headers.get(index))
            else:
                request.add_json_response(raw)
        self._list[:] = [request for request in self._list if not request.last]
        if len(self._list) < self.max_size:
            self._can_add.notify()

    def _fail_all(self, output: Any, size: int) -> None:
        if output.code != 200:
            logger.warning("Batch inference failed: %s", output.message)
        else:
            logger.error("Batch output size mismatch, expected: %d, actual: %d", size, output.content.size())
        chunk = gson_output(output.code, "Batch inference failed", self._dialect).encode("utf-8")
        for request in self._list:
            request.last = True
            if self._dialect.binary_items:
                request.response.set_status(output.code)
            request.response.emit(chunk, True)
        self._list.clear()
        self._reset = True
        self._can_add.notify()

    def _die(self, exc: Exception) -> None:
        logger.error("rolling batch thread died on a malformed item: %s", exc)
        error = BackendError(f"rolling batch loop died: {exc}")
        self.fatal_error = error
        for request in self._list:
            request.response.abort(error)
        self._list.clear()
        self._can_add.notify_all()
