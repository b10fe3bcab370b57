"""In-process, thread-based replay of DJL Serving's Java frontend driving a Python handler.

`Frontend` plays both sides of DJL's worker socket: the Java side (job queue, worker thread, rolling-batch
loop or async request manager, HTTP status/header decisions) and the Python engine (properties it adds,
exception → Output mapping, streaming of `stream_content`). A local HTTP server calls `submit()` per request
and relays the returned `Response`: `head()` once headers are decided, then `chunks()` as they are produced.

Modes (derived from the init properties like Java does): "rolling_batch" (0.23: `rolling_batch` set to any
value; newest: set and not "disable"), "async" (newest with `async_mode=true`), otherwise "plain" (one
handler call per request, streaming when the Output carries `stream_content`).

Client disconnects (`Response.cancel()`): DJL never stops an in-flight request. 0.23 has no cancellation at
all; newest marks the Input cancelled and only skips the job if it is still waiting in the job queue (the
in-flight cancellation of PR #2732 was closed unmerged), so an abandoned request keeps its slot until it ends.
The local endpoint goes one step further, so that the handler can free the engine slot at once: a cancelled
rolling-batch request carries the property `lmi_client_disconnected=true` on the following steps (a handler
that ignores it sees DJL's behaviour), and a cancelled stream or async generator is closed. Real DJL sends no
such signal; the README says so.

The response a request gets is `response.Response`; what Java does to values (Gson, int parsing, property maps) is
`java`. The frontend and its rolling-batch loop stay together here (about 650 lines): the loop runs the frontend's
handler calls, finalization and fatal-error state step by step, and splitting them would only move that state behind
an interface with one user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import types
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lmikit.djl import standin
from lmikit.djl.java import (
    Malformed,
    batch_headers,
    custom_attributes,
    decode_item,
    gson,
    gson_bool,
    gson_output,
    gson_str,
    input_data,
    java_int,
    java_props,
    json_object,
    lower_keys,
    seconds,
)
from lmikit.djl.loader import EntryPoint
from lmikit.djl.response import BackendError, Response, apply_error_status

logger = logging.getLogger(__name__)
_PLACEHOLDER = {"0.23": b'{"inputs": [""]}', "newest": b""}
_CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_OOM_NAMES = ("OutOfMemoryError", "MemoryError")
_OOM_TEXTS = ("No available memory for the cache blocks", "CUDA error: out of memory")
_DEFAULT_PREDICT_TIMEOUT = 120
# The local-endpoint extension above, a name on the wire between this replay and the handler: the two sides never
# import each other (the container has no lmikit; the replay runs any model.py), so each names it and
# tests/test_djl_driver.py holds them equal.
DISCONNECTED_PROPERTY = "lmi_client_disconnected"


class InitError(RuntimeError):
    """The init call returned a code >= 300, so DJL would fail to load the model."""


@dataclass
class _Job:
    """What Java's WorkerJob carries: the request Input (properties, content) and where the answer goes."""

    props: dict[str, str]
    content: list[tuple[str, bytes]]
    response: Response


class _JavaRequest:
    """Java's rolling-batch / async `Request`: the original Input plus the decoding state of its stream."""

    def __init__(self, job: _Job) -> None:
        self.props = job.props
        self.response = job.response
        self.data = input_data(job.content)
        self.seed = str(random.randint(-(2**31), 2**31 - 1))
        self.next_token: str | None = None
        self.last = False

    def add_json_response(self, raw: bytes) -> None:
        """0.23: item JSON {"data": str, "last": bool}; a {"code", "error"} object as data sets the status."""
        element = json_object(raw)
        self.last = gson_bool(element.get("last"))
        self.next_token = gson_str(element.get("data"))
        apply_error_status(self.response, self.next_token)
        self.response.emit(self.next_token.encode("utf-8"), self.last)

    def add_binary_response(self, raw: bytes, headers: Mapping[str, str] | None) -> None:
        """Newest: binary-encoded {"data", "last"[, "code", "error"]}; empty non-last data emits nothing."""
        if headers:
            self.response.put_headers(headers)
        fields = decode_item(raw)
        if "data" in fields:
            self.next_token = fields["data"]
        if "last" in fields:
            self.last = fields["last"].lower() == "true"
        if not self.next_token and not self.last:
            return
        if "code" in fields:
            self._emit_error(fields["code"], fields.get("error"))
        elif self.next_token is None:
            raise Malformed("last item without data")
        else:
            self.response.emit(self.next_token.encode("utf-8"), self.last)

    def _emit_error(self, code_text: str, error: str | None) -> None:
        code = java_int(code_text)
        if code is None:
            raise Malformed(f"item code {code_text!r} is not an int")
        self.response.set_status(code, error)
        body = {"code": code} if error is None else {"error": error, "code": code}
        self.response.emit(gson(body).encode("utf-8"), True)


class _RollingBatch:
    """Java's `RollingBatch`: an ordered active list, one handler call per decoding step, items by position."""

    def __init__(self, frontend: Frontend) -> None:
        self._frontend = frontend
        self._version = frontend.version
        self._content_type = frontend._rolling_content_type() if frontend.version == "0.23" else None
        self._list: list[_JavaRequest] = []
        self._lock = threading.Lock()
        self._can_add = threading.Condition(self._lock)
        self._can_read = threading.Condition(self._lock)
        self._reset = False
        self._stopped = False

    def add(self, job: _Job) -> None:
        """Java `addInput`: wait up to predict_timeout for a slot, then join the end of the list."""
        timeout = self._frontend.predict_timeout
        with self._lock:
            if len(self._list) >= self._frontend.max_rolling_batch_size and not self._can_add.wait(timeout):
                job.response.fail(400, "TranslateException", f"Time out in: {seconds(timeout)}")
                return
            error = BackendError("frontend closed") if self._stopped else self._frontend.fatal_error
            if error is not None:
                job.response.abort(error)
                return
            if self._content_type is not None:
                job.response.put_headers({"Content-Type": self._content_type})
            self._list.append(_JavaRequest(job))
            self._can_read.notify()

    def run(self) -> None:
        while True:
            with self._lock:
                while not self._list and not self._stopped:
                    self._can_read.wait()
                if self._stopped:
                    return
                props, content, size = self._next_batch()
            output = self._frontend._invoke(self._frontend._python_input(props, content))
            self._frontend._finalize(output)
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
            prefix = f"batch_{index}." if self._version == "0.23" else f"batch_{index:03d}."
            first = request.next_token is None
            if first or self._version == "0.23":
                props.extend((prefix + key, value) for key, value in request.props.items())
            if request.response.cancelled:
                props.append((prefix + DISCONNECTED_PROPERTY, "true"))
            content.append((prefix + "data", request.data if first else _PLACEHOLDER[self._version]))
            if first:
                content.append((prefix + "seed", request.seed.encode()))
        props.append(("batch_size", str(len(self._list))))
        return self._frontend._with_handler(java_props(props)), content, len(self._list)

    def _apply(self, output: Any, size: int) -> None:
        if output.code != 200 or output.content.size() != size:
            self._fail_all(output, size)
            return
        headers = batch_headers(output.properties) if self._version == "newest" else {}
        for index in range(size):
            request, raw = self._list[index], bytes(output.content.value_at(index))
            if self._version == "0.23":
                request.add_json_response(raw)
            else:
                request.add_binary_response(raw, headers.get(index))
        self._list[:] = [request for request in self._list if not request.last]
        if len(self._list) < self._frontend.max_rolling_batch_size:
            self._can_add.notify()

    def _fail_all(self, output: Any, size: int) -> None:
        if output.code != 200:
            logger.warning("Batch inference failed: %s", output.message)
        else:
            logger.error("Batch output size mismatch, expected: %d, actual: %d", size, output.content.size())
        chunk = gson_output(output.code, "Batch inference failed", self._version).encode("utf-8")
        for request in self._list:
            request.last = True
            if self._version == "newest":
                request.response.set_status(output.code)
            request.response.emit(chunk, True)
        self._list.clear()
        self._reset = True
        self._can_add.notify()

    def _die(self, exc: Exception) -> None:
        logger.error("rolling batch thread died on a malformed item: %s", exc)
        error = BackendError(f"rolling batch loop died: {exc}")
        self._frontend.fatal_error = error
        for request in self._list:
            request.response.abort(error)
        self._list.clear()
        self._can_add.notify_all()


def derive_mode(version: str, init_props: Mapping[str, str]) -> str:
    """The mode Java picks for these init properties (see module docstring)."""
    rolling = init_props.get("rolling_batch")
    if version == "0.23":
        return "plain" if rolling is None else "rolling_batch"
    rolling_on = rolling is not None and rolling != "disable"
    async_on = str(init_props.get("async_mode", "")).lower() == "true"
    if rolling_on and async_on:
        raise ValueError(
            "rolling_batch and async_mode=true together are not a working DJL setup; "
            "set rolling_batch=disable for async mode"
        )
    if async_on:
        return "async"
    return "rolling_batch" if rolling_on else "plain"


class Frontend:
    """DJL's Java frontend plus Python engine for one worker, in threads of this process.

    `entry` comes from `loader.load_entry_point`; `init_props` from `properties.init_properties` (they carry
    `handler`, `device_id`, `model_dir`). `predict_timeout` (seconds) defaults to the `predict_timeout`
    property, then env PREDICT_TIMEOUT, then 120. Call `start()` once, `submit()` per request, `close()` at
    the end. Handler calls run with this process's cwd and sys.path (see `loader.model_environment`).
    """

    def __init__(
        self,
        entry: EntryPoint,
        version: str,
        init_props: Mapping[str, str],
        *,
        predict_timeout: float | None = None,
        model_name: str = "model",
    ) -> None:
        self._djl = standin.install(version)
        self.version = version
        self.mode = derive_mode(version, init_props)
        self._entry = entry
        self._init_props = {key: str(value) for key, value in init_props.items()}
        self._device_id = self._init_props.get("device_id", "-1")
        self._model_dir = self._init_props.get("model_dir", entry.model_dir)
        self.predict_timeout = predict_timeout if predict_timeout is not None else _predict_timeout(init_props)
        self.job_queue_size = int(self._init_props.get("job_queue_size", "1000"))
        self.max_rolling_batch_size = int(self._init_props.get("max_rolling_batch_size", "32"))
        self._model_name = model_name
        self.fatal_error: BackendError | None = None
        self._jobs: deque[_Job] = deque()
        self._jobs_ready = threading.Condition()
        self._busy = False
        self._stopped = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._rolling: _RollingBatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        """One line for logs: flavour, mode and the limits in force."""
        parts = [
            f"DJL {self.version}",
            f"mode={self.mode}",
            f"job_queue_size={self.job_queue_size}",
            f"predict_timeout={seconds(self.predict_timeout)}s",
        ]
        if self.mode == "rolling_batch":
            parts.append(f"max_rolling_batch_size={self.max_rolling_batch_size}")
            if self.version == "0.23":
                parts.append(f"content-type={self._rolling_content_type() or '(none)'}")
        if not standin.is_standin(self._djl):
            parts.append("real djl_python")
        return ", ".join(parts)

    def start(self) -> None:
        """Send the one empty init Input through the handler; raise InitError if its code is >= 300."""
        if self._started:
            raise RuntimeError("frontend already started")
        if self.mode == "async":
            self._loop = asyncio.new_event_loop()
            self._spawn("djl-async-loop", self._run_loop)
        init = self._python_input(self._with_handler(java_props(self._java_init_items())), [])
        output = self._run_init(init)
        if output.code >= 300:
            self.close()
            raise InitError(_init_failure(output))
        if self.mode == "rolling_batch":
            self._rolling = _RollingBatch(self)
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
        response = Response(request_id or str(uuid.uuid4()), always_chunked=self.version == "0.23")
        props = self._request_props(headers, response.request_id)
        if self.version == "newest" and "handler" in lower_keys(props) and not _handler_override_allowed():
            response.fail(400, "BadRequestException", "The handler can't be overridden in a request")
            return response
        content = [(key, value.encode("utf-8")) for key, value in query] + [("data", bytes(body))]
        self._enqueue(_Job(props, content, response))
        return response

    @property
    def healthy(self) -> bool:
        """False once the loop died or a worker (a tensor-parallel rank) is gone: /ping then answers 503."""
        return self.fatal_error is None and getattr(self._entry, "healthy", True)

    def active_requests(self) -> int:
        """Requests in the rolling batch right now (0 in other modes)."""
        return self._rolling.active() if self._rolling else 0

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

    # Java side: request intake, job queue, worker thread

    def _request_props(self, headers: Mapping[str, str] | Iterable[tuple[str, str]], request_id: str) -> dict[str, str]:
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        items: list[tuple[str, str]] = []
        for key, value in pairs:
            if key.lower() == _CUSTOM_ATTRIBUTES:
                items.extend(custom_attributes(value))
            else:
                items.append((key, value))
        if self.version == "newest":
            items.append(("requestId", request_id))
        return java_props(items)

    def _enqueue(self, job: _Job) -> None:
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

    def _dispatch(self, job: _Job) -> None:
        if self.version == "newest" and job.response.cancelled:
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
            props = java_props([*props.items(), ("handler", self._entry.handler_name)])
        return props

    def _rolling_content_type(self) -> str | None:
        formatter = self._init_props.get("output_formatter")
        if formatter is None or formatter == "json":
            return "application/json"
        return "application/jsonlines" if formatter == "jsonlines" else None

    # Python side: the engine process

    def _python_input(self, props: Mapping[str, str], content: list[tuple[str, bytes]]) -> Any:
        """The Input the Python engine hands the handler: Java's properties plus what the engine adds."""
        inputs = self._djl.Input()
        inputs.properties.update(props)
        for key, value in content:
            inputs.content.add(key=key, value=bytearray(value))
        inputs.function_name = inputs.properties.get("handler")
        inputs.properties["device_id"] = self._device_id
        if self.version == "newest":
            formatters = self._entry.formatters
            if "output_formatter" not in inputs.properties and "output_formatter" in formatters:
                inputs.properties["output_formatter"] = formatters["output_formatter"]
            if "input_formatter" in formatters:
                inputs.properties["input_formatter"] = formatters["input_formatter"]
        inputs.properties["model_dir"] = self._model_dir
        return inputs

    def _invoke(self, inputs: Any) -> Any:
        """Sync engine: call the handler; None → 204, other non-Output → 424, exception → 424/507."""
        Output = self._djl.Output
        try:
            output = getattr(self._entry.module, inputs.get_function_name())(inputs)
        except Exception as exc:
            logger.exception("Failed invoke service.invoke_handler()")
            return self._exception_output(exc)
        if output is None:
            return Output(code=204, message="No content")
        if not isinstance(output, Output):
            return Output().error(f"Invalid output type: {type(output)}")
        return output

    def _exception_output(self, exc: Exception, message: str | None = None) -> Any:
        Output = self._djl.Output
        texts = _OOM_TEXTS if self.version == "newest" else ()
        if type(exc).__name__ in _OOM_NAMES or any(text in str(exc) for text in texts):
            return Output(code=507, message=str(exc))
        return Output().error(str(exc)) if message is None else Output().error(str(exc), message=message)

    @staticmethod
    def _finalize(output: Any) -> None:
        try:
            output.execute_finalize()
        except Exception:
            logger.exception("Failed on finalize function")

    def _run_init(self, init: Any) -> Any:
        if self.mode != "async":
            return self._invoke(init)
        assert self._loop is not None  # async mode starts its loop first
        return asyncio.run_coroutine_threadsafe(self._init_async(init), self._loop).result()

    def _run_plain(self, job: _Job) -> None:
        output = self._invoke(self._python_input(self._with_handler(job.props), job.content))
        response = job.response
        response.set_status(output.code, output.message)
        response.put_headers(output.properties)
        if output.stream_content is None:
            response.complete(_output_body(output))
        else:
            self._stream(output, response)
        self._finalize(output)

    @staticmethod
    def _stream(output: Any, response: Response) -> None:
        """Python's `Output.send` streaming loop: format each item; on an exception send str(e) last."""
        while True:
            if response.cancelled and hasattr(output.stream_content, "close"):
                output.stream_content.close()
            try:
                data = next(output.stream_content)
                if output.stream_output_formatter is not None:
                    data = output.stream_output_formatter(data)
                response.emit(_chunk_bytes(output, data), False)
            except StopIteration:
                response.emit(b"", True)
                return
            except Exception as exc:
                logger.exception("Failed read streaming content from output")
                response.emit(str(exc).encode("utf-8"), True)
                return

    # Async mode (newest PythonAsyncEngine + Java AsyncRequestManager)

    def _submit_async(self, job: _Job) -> None:
        props = java_props([*job.props.items(), ("request_tracking_id", str(uuid.uuid4()))])
        inputs = self._python_input(self._with_handler(props), job.content)
        assert self._loop is not None  # async mode starts its loop first
        asyncio.run_coroutine_threadsafe(self._serve_async(inputs, _JavaRequest(job)), self._loop)

    async def _invoke_async(self, inputs: Any) -> Any:
        Output = self._djl.Output
        name = inputs.get_function_name()
        try:
            output = await getattr(self._entry.module, name)(inputs)
        except Exception as exc:
            logger.exception("Failed invoke service.invoke_handler_async()")
            output = self._exception_output(exc, "service.invoke_handler_async() failure")
        if output is None:
            return Output(code=204, message="No content")
        if not isinstance(output, (Output, types.AsyncGeneratorType)):
            return Output().error(
                f"Invalid type returned from {self._entry.module}.{name}. Received type {type(output)}, "
                "does not match expected type djl_python.outputs.Output or types.AsyncGenerator"
            )
        return output

    async def _init_async(self, init: Any) -> Any:
        output = await self._invoke_async(init)
        if isinstance(output, types.AsyncGeneratorType):
            output = await output.__anext__()
        return output

    async def _serve_async(self, inputs: Any, request: _JavaRequest) -> None:
        tracking_id = inputs.get_property("request_tracking_id")
        try:
            result = await self._invoke_async(inputs)
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

    def _async_output(self, output: Any, request: _JavaRequest) -> None:
        """Java `AsyncRequestManager.addOutput` for one Output of a request."""
        if output.code != 200:
            request.response.set_status(output.code)
            body = gson_output(output.code, f"Async Inference Failure {output.message}", self.version)
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
        error = json.loads(_output_body(output).decode("utf-8")).get("error")
        detail = f" ({error})" if error else ""
    except (ValueError, AttributeError):
        pass
    return f"Failed to initialize model: {output.message}{detail}"


def _output_body(output: Any) -> bytes:
    """Java `Output.getData()`: content "data", else the first item, else empty."""
    data = output.content.get("data")
    if data is None and not output.content.is_empty():
        data = output.content.value_at(0)
    return bytes(data or b"")


def _chunk_bytes(output: Any, data: Any) -> bytes:
    if type(data) is str:
        return data.encode("utf-8")
    if type(data) in (bytes, bytearray):
        return bytes(data)
    return bytes(output._encode_json(data))
