"""In-process, thread-based replay of DJL Serving's Java frontend driving a Python handler.

`Frontend` plays DJL's Java side of the worker socket for one worker: the job queue and its worker thread, the mode
Java derives from the init properties (`dialect.derive_mode`: rolling batch, async or plain), the async request
manager, and the HTTP status and header decisions. The rolling-batch loop is `rolling_batch.RollingBatch`, which
calls the handler through `Frontend.step`; the Python engine around each handler call is
`python_engine.PythonEngine`. A local HTTP server calls `submit()` per request and relays the returned
`response.Response`: `head()` once headers are decided, then `chunks()` as they are produced.

Client disconnects (`Response.cancel()`): DJL never stops an in-flight request. 0.23 has no cancellation at all; the
newest marks the Input cancelled and only skips the job if it is still waiting in the job queue. The local endpoint
closes a cancelled stream or async generator, and flags a cancelled rolling-batch request to the handler (see
`rolling_batch`); the README says where this goes beyond DJL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import types
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from lmikit.djl import standin
from lmikit.djl.dialect import DjlVersion, derive_mode
from lmikit.djl.java import Malformed, custom_attributes, gson_output, java_int, java_props, lower_keys, seconds
from lmikit.djl.jobs import JavaRequest, Job
from lmikit.djl.loader import EntryPoint
from lmikit.djl.python_engine import PythonEngine, finalize, output_body, stream
from lmikit.djl.response import BackendError, Response
from lmikit.djl.rolling_batch import RollingBatch

logger = logging.getLogger(__name__)
_CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_DEFAULT_PREDICT_TIMEOUT = 120
DEFAULT_CHUNKED_READ_TIMEOUT_S = 120.0


class InitError(RuntimeError):
    """The init call returned a code >= 300, so DJL would fail to load the model."""


class Frontend:
    """DJL's Java frontend plus Python engine for one worker, in threads of this process.

    `entry` comes from `loader.load_entry_point`; `init_props` from `project.properties.init_properties` (they carry
    `handler`, `device_id`, `model_dir`). `predict_timeout` (seconds) defaults to the `predict_timeout`
    property, then env PREDICT_TIMEOUT, then 120. Call `start()` once, `submit()` per request, `close()` at
    the end. Handler calls run with this process's cwd and sys.path (see `loader.model_environment`).
    """

    def __init__(
        self,
        entry: EntryPoint,
        version: DjlVersion,
        init_props: Mapping[str, str],
        *,
        predict_timeout: float | None = None,
        model_name: str = "model",
    ) -> None:
        self.version = DjlVersion(version)
        self.dialect = self.version.dialect
        self.mode = derive_mode(self.version, init_props)
        self.entry = entry
        self._init_props = {key: str(value) for key, value in init_props.items()}
        self._engine = PythonEngine(
            entry,
            self.version,
            device_id=self._init_props.get("device_id", "-1"),
            model_dir=self._init_props.get("model_dir", entry.model_dir),
        )
        self.predict_timeout = predict_timeout if predict_timeout is not None else _predict_timeout(init_props)
        self.job_queue_size = int(self._init_props.get("job_queue_size", "1000"))
        self.max_rolling_batch_size = int(self._init_props.get("max_rolling_batch_size", "32"))
        self._model_name = model_name
        self._jobs: deque[Job] = deque()
        self._jobs_ready = threading.Condition()
        self._busy = False
        self._stopped = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._rolling: RollingBatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        """One line for logs: flavour, mode and the limits in force."""
        parts = [
            f"DJL {self.version.value}",
            f"mode={self.mode}",
            f"job_queue_size={self.job_queue_size}",
            f"predict_timeout={seconds(self.predict_timeout)}s",
        ]
        if self.mode == "rolling_batch":
            parts.append(f"max_rolling_batch_size={self.max_rolling_batch_size}")
            if self.dialect.rolling_content_type:
                parts.append(f"content-type={self._rolling_content_type() or '(none)'}")
        if not standin.is_standin(self._engine.djl):
            parts.append("real djl_python")
        return ", ".join(parts)

    def start(self) -> None:
        """Send the one empty init Input through the handler; raise InitError if its code is >= 300."""
        if self._started:
            raise RuntimeError("frontend already started")
        if self.mode == "async":
            self._loop = asyncio.new_event_loop()
            self._spawn("djl-async-loop", self._run_loop)
        init = self._engine.input(self._with_handler(java_props(self._java_init_items())), [])
        output = self._run_init(init)
        if output.code >= 300:
            self.close()
            raise InitError(_init_failure(output))
        if self.mode == "rolling_batch":
            self._rolling = RollingBatch(
                self.dialect,
                self.step,
                max_size=self.max_rolling_batch_size,
                predict_timeout=self.predict_timeout,
                content_type=self._rolling_content_type() if self.dialect.rolling_content_type else None,
            )
            self._spawn("djl-rolling-batch", self._rolling.run)
        self._spawn("djl-worker", self._worker_loop)
        self._started = True

    def submit(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        query: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
    ) -> Response:
        """Queue one HTTP request (headers as sent, raw body, query parameters) and return its Response."""
        if not self._started or self._stopped:
            raise RuntimeError("frontend is not running")
        response = Response(request_id or str(uuid.uuid4()), always_chunked=self.dialect.always_chunked)
        props = self._request_props(headers, response.request_id)
        if self.dialect.request_tracking and "handler" in lower_keys(props) and not _handler_override_allowed():
            response.fail(400, "BadRequestException", "The handler can't be overridden in a request")
            return response
        content = [(key, value.encode("utf-8")) for key, value in query] + [("data", bytes(body))]
        self._enqueue(Job(props, content, response))
        return response

    def step(self, props: dict[str, str], content: list[tuple[str, bytes]]) -> Any:
        """One handler call as PyProcess and the Python engine make it: Java's properties (the handler name added
        where missing) and content in, the finalized Output out. The rolling-batch loop runs on this."""
        output = self._engine.invoke(self._engine.input(self._with_handler(props), content))
        finalize(output)
        return output

    @property
    def fatal_error(self) -> BackendError | None:
        """Why the frontend serves nothing more (its rolling-batch loop died), or None."""
        return self._rolling.fatal_error if self._rolling else None

    @property
    def healthy(self) -> bool:
        """False once the loop died or a worker (a tensor-parallel rank) is gone: /ping then answers 503."""
        return self.fatal_error is None and getattr(self.entry, "healthy", True)

    def active_requests(self) -> int:
        """Requests in the rolling batch right now (0 in other modes)."""
        return self._rolling.active() if self._rolling else 0

    def engine_stats(self) -> dict[str, float]:
        """The handler's engine figures where its model.py offers them in this process (`engine_stats`), else {}."""
        stats = getattr(getattr(self.entry, "module", None), "engine_stats", None)
        return dict(stats()) if callable(stats) else {}

    def close(self) -> None:
        """Stop the threads (idempotent); queued and rolling-batch responses end with BackendError."""
        with self._jobs_ready:
            if self._stopped:
                return
            self._stopped = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._jobs_ready.notify_all()
        for job in pending:
            job.response.abort(BackendError("frontend closed"))
        if self._rolling is not None:
            self._rolling.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    # Request intake, job queue, worker thread

    def _request_props(self, headers: Mapping[str, str] | Iterable[tuple[str, str]], request_id: str) -> dict[str, str]:
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        items: list[tuple[str, str]] = []
        for key, value in pairs:
            if key.lower() == _CUSTOM_ATTRIBUTES:
                items.extend(custom_attributes(value))
            else:
                items.append((key, value))
        if self.dialect.request_tracking:
            items.append(("requestId", request_id))
        return java_props(items)

    def _enqueue(self, job: Job) -> None:
        with self._jobs_ready:
            remaining = self.job_queue_size - len(self._jobs)
            if remaining <= 0 or (remaining == 1 and self._busy):
                job.response.fail(
                    503, "WlmCapacityException", f"Worker queue capacity exceeded for model: {self._model_name} (READY)"
                )
                return
            self._jobs.append(job)
            self._jobs_ready.notify()

    def _worker_loop(self) -> None:
        while True:
            with self._jobs_ready:
                while not self._jobs and not self._stopped:
                    self._jobs_ready.wait()
                if self._stopped:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._dispatch(job)
            except Exception as exc:
                logger.exception("worker failed on a request")
                job.response.abort(BackendError(f"worker failed: {exc}"))
            finally:
                with self._jobs_ready:
                    self._busy = False

    def _dispatch(self, job: Job) -> None:
        if self.dialect.request_tracking and job.response.cancelled:
            logger.debug("Skip cancelled job")
            job.response.abort(BackendError("request cancelled before dispatch"))
        elif self.fatal_error is not None:
            job.response.abort(self.fatal_error)
        elif self._rolling is not None:  # rolling-batch mode
            self._rolling.add(job)
        elif self.mode == "async":
            self._submit_async(job)
        else:
            self._run_plain(job)

    def _java_init_items(self) -> list[tuple[str, str]]:
        return [(key, value) for key, value in self._init_props.items() if key not in ("device_id", "model_dir")]

    def _with_handler(self, props: dict[str, str]) -> dict[str, str]:
        """PyProcess adds `handler` to every Input that lacks it."""
        if "handler" not in lower_keys(props):
            props = java_props([*props.items(), ("handler", self.entry.handler_name)])
        return props

    def _rolling_content_type(self) -> str | None:
        formatter = self._init_props.get("output_formatter")
        if formatter is None or formatter == "json":
            return "application/json"
        return "application/jsonlines" if formatter == "jsonlines" else None

    def _run_init(self, init: Any) -> Any:
        if self.mode != "async":
            return self._engine.invoke(init)
        assert self._loop is not None  # async mode starts its loop first
        return asyncio.run_coroutine_threadsafe(self._init_async(init), self._loop).result()

    def _run_plain(self, job: Job) -> None:
        output = self._engine.invoke(self._engine.input(self._with_handler(job.props), job.content))
        response = job.response
        response.set_status(output.code, output.message)
        response.put_headers(output.properties)
        if output.stream_content is None:
            response.complete(output_body(output))
        else:
            stream(output, response)
        finalize(output)

    # Async mode (the newest PythonAsyncEngine + Java AsyncRequestManager)

    def _submit_async(self, job: Job) -> None:
        props = java_props([*job.props.items(), ("request_tracking_id", str(uuid.uuid4()))])
        inputs = self._engine.input(self._with_handler(props), job.content)
        assert self._loop is not None  # async mode starts its loop first
        asyncio.run_coroutine_threadsafe(self._serve_async(inputs, JavaRequest(job)), self._loop)

    async def _init_async(self, init: Any) -> Any:
        output = await self._engine.invoke_async(init)
        if isinstance(output, types.AsyncGeneratorType):
            output = await output.__anext__()
        return output

    async def _serve_async(self, inputs: Any, request: JavaRequest) -> None:
        tracking_id = inputs.get_property("request_tracking_id")
        try:
            result = await self._engine.invoke_async(inputs)
            outputs = result if isinstance(result, types.AsyncGeneratorType) else _single(result)
            async for output in outputs:
                output.add_property("request_tracking_id", tracking_id)
                self._async_output(output, request)
                if request.response.cancelled and not request.last:
                    await outputs.aclose()
                    request.response.emit(b"", True)
        except Exception as exc:
            logger.exception("async request failed without an Output")
            request.response.abort(BackendError(f"async handler failed: {exc!r}"))

    def _async_output(self, output: Any, request: JavaRequest) -> None:
        """Java `AsyncRequestManager.addOutput` for one Output of a request."""
        if output.code != 200:
            request.response.set_status(output.code)
            body = gson_output(output.code, f"Async Inference Failure {output.message}", self.dialect)
            request.response.emit(body.encode("utf-8"), True)
            return
        if output.content.is_empty():
            raise Malformed("async Output with code 200 has no content")
        headers = {key: str(value) for key, value in output.properties.items()}
        request.add_binary_response(bytes(output.content.value_at(0)), headers)

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None  # set before this thread starts
        loop.run_forever()
        loop.close()

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


async def _single(output: Any) -> Any:
    yield output


def chunked_read_timeout(properties: Mapping[str, str], version: DjlVersion) -> float:
    """How long (seconds) the frontend waits for a response's head or next chunk: serving.properties'
    `chunked_read_timeout`, then env SERVING_CHUNKED_READ_TIMEOUT, in minutes on 0.23 and seconds on newest; the
    default is two minutes on both."""
    per_unit = 60.0 if version is DjlVersion.LMI_0_23 else 1.0
    for value in (properties.get("chunked_read_timeout"), os.environ.get("SERVING_CHUNKED_READ_TIMEOUT")):
        if value is not None and java_int(str(value)) is not None:
            return float(value) * per_unit
    return DEFAULT_CHUNKED_READ_TIMEOUT_S


def _predict_timeout(init_props: Mapping[str, str]) -> float:
    for value in (init_props.get("predict_timeout"), os.environ.get("PREDICT_TIMEOUT")):
        if value is not None and java_int(str(value)) is not None:
            return float(value)
    return float(_DEFAULT_PREDICT_TIMEOUT)


def _handler_override_allowed() -> bool:
    return os.environ.get("ALLOW_REQUEST_HANDLER_OVERRIDE", "").lower() == "true"


def _init_failure(output: Any) -> str:
    if output.code == 507:
        return "OOM"
    detail = ""
    try:
        error = json.loads(output_body(output).decode("utf-8")).get("error")
        detail = f" ({error})" if error else ""
    except (ValueError, AttributeError):
        pass
    return f"Failed to initialize model: {output.message}{detail}"
