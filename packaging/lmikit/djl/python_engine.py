"""The Python side of DJL's worker socket: what DJL's Python engine does around each handler call.

It builds the Input the handler receives (Java's properties plus `device_id`, `model_dir` and, in the newest
generation, the decorated formatters), calls the handler (sync or async), maps what comes back to an Output (None
is 204, another type or an exception 424, an out-of-memory error 507), runs the Output's finalizer and streams
`stream_content` item by item as `Output.send` does.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping
from typing import Any

from lmikit.djl import standin
from lmikit.djl.dialect import DjlVersion
from lmikit.djl.loader import EntryPoint
from lmikit.djl.response import Response

logger = logging.getLogger(__name__)
_OOM_NAMES = ("OutOfMemoryError", "MemoryError")


class PythonEngine:
    """DJL's Python engine for one loaded entry point, in the generation `version`."""

    def __init__(self, entry: EntryPoint, version: DjlVersion, device_id: str, model_dir: str) -> None:
        self.djl = standin.install(version)
        self._dialect = version.dialect
        self._entry = entry
        self._device_id = device_id
        self._model_dir = model_dir

    def input(self, props: Mapping[str, str], content: list[tuple[str, bytes]]) -> Any:
        """The Input the Python engine hands the handler: Java's properties plus what the engine adds."""
        inputs = self.djl.Input()
        inputs.properties.update(props)
        for key, value in content:
            inputs.content.add(key=key, value=bytearray(value))
        inputs.function_name = inputs.properties.get("handler")
        inputs.properties["device_id"] = self._device_id
        if self._dialect.decorated_formatters:
            formatters = self._entry.formatters
            if "output_formatter" not in inputs.properties and "output_formatter" in formatters:
                inputs.properties["output_formatter"] = formatters["output_formatter"]
            if "input_formatter" in formatters:
                inputs.properties["input_formatter"] = formatters["input_formatter"]
        inputs.properties["model_dir"] = self._model_dir
        return inputs

    def invoke(self, inputs: Any) -> Any:
        """Sync engine: call the handler; None → 204, other non-Output → 424, exception → 424/507."""
        Output = self.djl.Output
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

    async def invoke_async(self, inputs: Any) -> Any:
        """Async engine: await the handler; it may answer with an Output or an async generator of Outputs."""
        Output = self.djl.Output
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

    def _exception_output(self, exc: Exception, message: str | None = None) -> Any:
        Output = self.djl.Output
        if type(exc).__name__ in _OOM_NAMES or any(text in str(exc) for text in self._dialect.oom_texts):
            return Output(code=507, message=str(exc))
        return Output().error(str(exc)) if message is None else Output().error(str(exc), message=message)


def finalize(output: Any) -> None:
    """Run the Output's finalizer; its failure is logged, never the request's."""
    try:
        output.execute_finalize()
    except Exception:
        logger.exception("Failed on finalize function")


def stream(output: Any, response: Response) -> None:
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


def output_body(output: Any) -> bytes:
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
