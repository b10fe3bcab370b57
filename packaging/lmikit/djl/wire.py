"""Inputs and Outputs as plain data, to cross between `lmi serve` and its rank processes (pickled by
`multiprocessing.connection`). Streams and coroutines cannot cross: ranks serve the rolling-batch and plain modes."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def from_input(inputs: Any) -> dict[str, Any]:
    return {
        "function": inputs.function_name,
        "properties": {k: v for k, v in inputs.properties.items() if not callable(v)},
        "content": [(key, bytes(value)) for key, value in zip(inputs.content.keys, inputs.content.values)],
    }


def to_input(djl: ModuleType, data: dict[str, Any]) -> Any:
    inputs = djl.Input()
    inputs.function_name = data["function"]
    inputs.properties.update(data["properties"])
    for key, value in data["content"]:
        inputs.content.add(key=key, value=bytearray(value))
    return inputs


def from_output(output: Any) -> dict[str, Any]:
    if getattr(output, "stream_content", None) is not None:
        raise TypeError("a streamed Output cannot leave its rank: use rolling batch with tensor parallelism")
    return {
        "code": output.code,
        "message": output.message,
        "properties": dict(output.properties),
        "content": [
            (key, bytes(value) if isinstance(value, (bytes, bytearray)) else value)
            for key, value in zip(output.content.keys, output.content.values)
        ],
    }


def to_output(djl: ModuleType, data: dict[str, Any]) -> Any:
    output = djl.Output(code=data["code"], message=data["message"])
    output.properties.update(data["properties"])
    for key, value in data["content"]:
        output.content.add(key=key, value=value)
    return output
