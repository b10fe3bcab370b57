"""Faithful stand-ins for `djl_python` (`PairList`, `Input`, `Output`) in the two flavours a handler can meet.

0.23 follows the 0.23.0-dlc branch and the newest follows master (0.36): they differ in the batch key encoding
`get_batches` parses, the default `Output.error` message, and the newest-only `Output.binary_encode`,
`get_properties` and `get_property`. Handlers feature-detect with `hasattr(Output, "binary_encode")`.

This module holds `Output` (and `decode_binary`, the Java side's reading of `binary_encode`) and assembles the
package; `PairList` and `Input`, the request side, are in `standin_inputs`. `install(version)` registers the flavour
as `djl_python` (plus `djl_python.inputs`, `.outputs`, `.pair_list`) unless a real djl_python is importable, in which
case the real package is returned untouched.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import io
import json
import logging
import struct
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lmikit.djl.dialect import DjlVersion
from lmikit.djl.standin_inputs import Input023, InputNewest, PairList

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

_MARK = "__lmikit_standin__"


class _JSONEncoder(json.JSONEncoder):
    """djl_python's encoder: datetimes as str, numpy scalars and arrays as Python values."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, datetime.datetime):
            return str(obj)
        try:
            import numpy as np
        except ImportError:
            return super().default(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return super().default(obj)


def _default_stream_output_formatter(token_texts: Any) -> bytearray:
    return bytearray((json.dumps({"outputs": token_texts}) + "\n").encode("utf-8"))


class OutputBase:
    """What both flavours of `djl_python.Output` share; subclasses define `error` with their default message."""

    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code = code
        self.message = message
        self.properties: dict[str, Any] = {}
        self.content = PairList()
        self.stream_content: Iterator[Any] | None = None
        self.finalize_function: Callable[..., Any] | None = None
        self.finalize_args: tuple[Any, ...] | None = None
        self.stream_output_formatter: Callable[..., Any] | None = None

    def __str__(self) -> str:
        content = {k: "type: " + str(type(v)) for k, v in zip(self.content.keys, self.content.values)}
        return json.dumps(
            {"code": self.code, "message": self.message, "properties": self.properties, "content": content}, indent=2
        )

    def set_code(self, code: int) -> Self:
        self.code = code
        return self

    def set_message(self, message: str) -> Self:
        self.message = message
        return self

    def _error(self, error: str, code: int, message: str) -> Self:
        self.code = code
        self.message = message
        self.add_property("content-type", "application/json")
        return self.add_as_json({"code": self.code, "message": self.message, "error": error})

    def add_property(self, key: str, val: Any) -> Self:
        self.properties[key] = val
        return self

    def add(self, value: Any, key: Any = None, batch_index: int | None = None) -> Self:
        if key is not None and type(key) is not str:
            logging.warning(f"Output key should be str type, got {type(key)}")  # noqa: LOG015 (as djl_python does)
            key = str(key)
        if batch_index is not None:
            key = f"batch_{batch_index}.{'' if key is None else key}"
        if type(value) is str:
            self.content.add(key=key, value=value.encode("utf-8"))
        elif type(value) is bytearray:
            self.content.add(key=key, value=value)
        elif type(value) is bytes:
            self.content.add(key=key, value=bytearray(value))
        else:
            self.content.add(key=key, value=self._encode_json(value))
        return self

    def add_as_numpy(self, np_list: list[Any], key: Any = None, batch_index: int | None = None) -> Self:
        raise NotImplementedError("the tensor/ndlist codec is not emulated by the djl_python stand-in")

    def add_as_npz(self, np_list: list[Any], key: Any = None, batch_index: int | None = None) -> Self:
        import numpy as np

        memory_file = io.BytesIO()
        np.savez(memory_file, *np_list)
        return self.add(memory_file.getvalue(), key=key, batch_index=batch_index)

    def add_as_json(self, val: Any, key: Any = None, batch_index: int | None = None) -> Self:
        return self.add(self._encode_json(val), key=key, batch_index=batch_index)

    def add_stream_content(
        self,
        stream_content: Iterator[Any],
        output_formatter: Callable[..., Any] | None = _default_stream_output_formatter,
    ) -> Self:
        self.stream_content = stream_content
        self.stream_output_formatter = output_formatter
        return self

    @staticmethod
    def _encode_json(val: Any) -> bytearray:
        return bytearray(
            json.dumps(
                val, ensure_ascii=False, allow_nan=False, indent=2, cls=_JSONEncoder, separators=(",", ":")
            ).encode("utf-8")
        )

    def finalize(self, finalize_function: Callable[..., Any], *args: Any) -> Self:
        self.finalize_function = finalize_function
        self.finalize_args = args
        return self

    def execute_finalize(self) -> Any:
        if self.finalize_function:
            assert self.finalize_args is not None  # finalize() sets both
            return self.finalize_function(*self.finalize_args)
        return None


class Output023(OutputBase):
    """0.23.0-dlc Output: no binary_encode, no get_properties."""

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> Output023:
        return self._error(error, code, message)


class OutputNewest(OutputBase):
    """Newest Output: adds get_properties/get_property and the static binary_encode used by rolling batch."""

    def error(self, error: str, code: int = 424, message: str = "invoke handler failure") -> OutputNewest:
        return self._error(error, code, message)

    def get_properties(self) -> dict[str, Any]:
        return self.properties

    def get_property(self, key: str) -> Any:
        return self.properties.get(key)

    @staticmethod
    def binary_encode(data: dict[str, Any]) -> bytearray:
        msg = bytearray(struct.pack(">h", len(data)))
        for key, value in data.items():
            OutputNewest.write_utf8(msg, key)
            OutputNewest.write_utf8(msg, str(value))
        return msg

    @staticmethod
    def write_utf8(msg: bytearray, val: str | None) -> None:
        if val is None:
            msg += struct.pack(">i", -1)
            return
        buf = val.encode("utf-8")
        msg += struct.pack(">i", len(buf))
        msg += buf


def decode_binary(data: bytes) -> dict[str | None, str | None]:
    """Decode `Output.binary_encode` bytes like Java's `Request.addResponse` (a length of -1 reads as null, for a key
    too); raises ValueError when truncated."""
    view = memoryview(bytes(data))
    result: dict[str | None, str | None] = {}
    try:
        (count,) = struct.unpack_from(">h", view, 0)
        offset = 2
        for _ in range(max(count, 0)):
            key, offset = _read_utf8(view, offset)
            value, offset = _read_utf8(view, offset)
            result[key] = value
    except struct.error as exc:
        raise ValueError(f"truncated binary-encoded item: {exc}") from None
    return result


def _read_utf8(view: memoryview, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">i", view, offset)
    offset += 4
    if length < 0:
        return None, offset
    if offset + length > len(view):
        raise ValueError("truncated binary-encoded item: string runs past the end")
    return bytes(view[offset : offset + length]).decode("utf-8"), offset + length


_FLAVOURS = {DjlVersion.LMI_0_23: (Input023, Output023), DjlVersion.NEWEST: (InputNewest, OutputNewest)}
_BUILT: dict[DjlVersion, ModuleType] = {}


def _named(cls: type, name: str, module: str) -> type:
    """A subclass carrying djl_python's public name and module, so reprs and messages read like the real ones."""
    return type(name, (cls,), {"__module__": module, "__qualname__": name})


def _build(version: DjlVersion) -> ModuleType:
    input_cls, output_cls = _FLAVOURS[version]
    package = ModuleType("djl_python", f"djl_python stand-in ({version.value}) from lmikit")
    package.__path__ = []
    setattr(package, _MARK, version.value)
    pair_list_cls = _named(PairList, "PairList", "djl_python.pair_list")
    input_public = _named(input_cls, "Input", "djl_python.inputs")
    output_public = _named(output_cls, "Output", "djl_python.outputs")
    pair_list = _module("djl_python.pair_list", PairList=pair_list_cls)
    inputs = _module("djl_python.inputs", Input=input_public)
    outputs = _module("djl_python.outputs", Output=output_public)
    package.__dict__.update(pair_list=pair_list, inputs=inputs, outputs=outputs)
    package.__dict__.update(PairList=pair_list_cls, Input=input_public, Output=output_public)
    return package


def _module(name: str, **attributes: Any) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _real_djl_python() -> ModuleType | None:
    current = sys.modules.get("djl_python")
    if current is not None:
        return None if getattr(current, _MARK, None) else current
    if importlib.util.find_spec("djl_python") is None:
        return None
    return importlib.import_module("djl_python")


def install(version: DjlVersion) -> ModuleType:
    """Make `import djl_python` yield the `version` flavour (one module object per flavour, reused on
    re-install); if a real djl_python is importable, return it untouched instead."""
    version = DjlVersion(version)  # a ValueError names an unknown flavour
    real = _real_djl_python()
    if real is not None:
        return real
    package = _BUILT.get(version) or _BUILT.setdefault(version, _build(version))
    sys.modules["djl_python"] = package
    for name in ("pair_list", "inputs", "outputs"):
        sys.modules[f"djl_python.{name}"] = getattr(package, name)
    return package


def is_standin(module: ModuleType) -> bool:
    """True when `module` is one of this file's stand-ins rather than the real djl_python."""
    return bool(getattr(module, _MARK, None))
