"""Faithful stand-ins for `djl_python` (`PairList`, `Input`, `Output`) in the two flavours a handler can meet.

0.23 follows the 0.23.0-dlc branch and the newest follows master (0.36): they differ in the batch key encoding
`get_batches` parses, the default `Output.error` message, and the newest-only `Output.binary_encode`,
`get_properties` and `get_property`. Handlers feature-detect with `hasattr(Output, "binary_encode")`.

`install(version)` registers the flavour as `djl_python` (plus `djl_python.inputs`, `.outputs`, `.pair_list`)
unless a real djl_python is importable, in which case the real package is returned untouched.

One module of about 450 lines, because it mirrors the public surface of three djl_python modules method by method
(a handler may call any of them); splitting it would scatter one API across files that do not match the real ones.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import io
import json
import logging
import re
import struct
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lmikit.djl.dialect import DjlVersion

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

_MARK = "__lmikit_standin__"
_BATCH_KEY_023 = re.compile(r"batch_(\d+)\.(.*)")


class PairList:
    """Ordered key/value list; `add` silently ignores a None value, like djl_python."""

    def __init__(
        self,
        keys: list[Any] | None = None,
        values: list[Any] | None = None,
        pair_list: list[tuple[Any, Any]] | None = None,
        pair_map: dict[Any, Any] | None = None,
    ) -> None:
        self.keys: list[Any] = []
        self.values: list[Any] = []
        if keys and values:
            if len(keys) != len(values):
                raise ValueError("key value size mismatch.")
            self.keys, self.values = keys, values
        for key, value in pair_list or []:
            self.add(key, value)
        for key, value in (pair_map or {}).items():
            self.add(key, value)

    def add(
        self, key: Any = None, value: Any = None, index: int | None = None, pair: tuple[Any, Any] | None = None
    ) -> None:
        if index is not None and value is not None:
            self.keys.insert(index, key)
            self.values.insert(index, value)
        elif pair:
            self.keys.append(pair[0])
            self.values.append(pair[1])
        elif value is not None:
            self.keys.append(key)
            self.values.append(value)

    def add_all(self, other: PairList | None) -> None:
        if other:
            self.keys.extend(other.keys)
            self.values.extend(other.values)

    def size(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return self.size() == 0

    def get(self, key: Any) -> Any:
        if key not in self.keys:
            return None
        return self.values[self.keys.index(key)]

    def key_at(self, index: int) -> Any:
        return self.keys[index]

    def value_at(self, index: int) -> Any:
        return self.values[index]

    def get_keys(self) -> list[Any]:
        return self.keys

    def get_values(self) -> list[Any]:
        return self.values


class _InputBase:
    """What both flavours of `djl_python.Input` share; subclasses define `get_batches`."""

    def __init__(self) -> None:
        self.function_name: str | None = None
        self.properties: dict[str, Any] = {}
        self.content = PairList()

    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_function_name(self) -> str | None:
        return self.function_name

    def get_properties(self) -> dict[str, Any]:
        return self.properties

    def get_content(self) -> PairList:
        return self.content

    def get_property(self, key: str) -> Any:
        return next((v for k, v in self.properties.items() if k.lower() == key.lower()), None)

    def contains_key(self, key: str) -> bool:
        return self.content.get(key) is not None

    def is_empty(self) -> bool:
        return self.content.is_empty()

    def get_data(self, key: str | None = None) -> Any:
        content_type = self.get_property("content-type")
        if content_type == "tensor/ndlist":
            return self.get_as_numpy(key)
        if content_type == "tensor/npz":
            return self.get_as_npz(key)
        if content_type is not None and content_type.startswith("application/json"):
            return self.get_as_json(key)
        if content_type is not None and content_type.startswith("text/"):
            return self.get_as_string(key)
        if content_type is not None and content_type.startswith("image/"):
            return self.get_as_image(key)
        if self.content.is_empty():
            return None
        return self.get_as_bytes(key=key)

    def get_as_bytes(self, key: str | None = None) -> Any:
        if self.content.is_empty():
            return None
        if key:
            value = self.content.get(key)
            if value is None:
                raise KeyError(f"requested data for key:{key} is not found!")
            return value
        value = self.content.get("data")
        return self.content.value_at(0) if value is None else value

    def get_as_string(self, key: str | None = None) -> str:
        text: str = self.get_as_bytes(key=key).decode("utf-8")
        return text

    def get_as_json(self, key: str | None = None) -> Any:
        return json.loads(self.get_as_bytes(key=key).decode("utf-8"))

    def get_as_image(self, key: str | None = None) -> Any:
        from PIL import Image

        return Image.open(io.BytesIO(self.get_as_bytes(key=key)))

    def get_as_numpy(self, key: str | None = None) -> list[Any]:
        raise NotImplementedError("the tensor/ndlist codec is not emulated by the djl_python stand-in")

    def get_as_npz(self, key: str | None = None) -> list[Any]:
        import numpy

        npz = numpy.load(io.BytesIO(self.get_as_bytes(key=key)))
        return [npz[name] for name in npz.files]

    def get_as_csv(self, key: str | None = None) -> list[dict[str | Any, str | Any]]:
        import csv

        return list(csv.DictReader(io.StringIO(self.get_as_string(key=key))))


class _Input023(_InputBase):
    """0.23.0-dlc: keys `batch_<i>.<name>` (unpadded), regex-parsed; item i gets the `batch_<i>.` properties."""

    def get_batches(self) -> list[_Input023]:
        if not self.is_batch():
            return [self]
        batch = [type(self)() for _ in range(self.get_batch_size())]
        for i, item in enumerate(batch):
            prefix = f"batch_{i}."
            for key, value in self.properties.items():
                if key.startswith(prefix):
                    item.properties[key[len(prefix) :]] = value
        for key, value in zip(self.content.keys, self.content.values):
            match = _BATCH_KEY_023.match(key)
            if match is None:
                raise ValueError(f"Unexpected key in batch input: {key}")
            batch[int(match.group(1))].content.add(match.group(2), value)
        return batch


class _InputNewest(_InputBase):
    """Newest: keys `batch_%03d<sep><name>` parsed by position (index = key[6:9], name = key[10:])."""

    def get_batches(self) -> list[_InputNewest]:
        if not self.is_batch():
            return [self]
        batch = [type(self)() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            if key.startswith("batch_") and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        for key, value in zip(self.content.keys, self.content.values):
            batch[int(key[6:9])].content.add(key[10:], value)
        return batch


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


class _OutputBase:
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


class _Output023(_OutputBase):
    """0.23.0-dlc Output: no binary_encode, no get_properties."""

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> _Output023:
        return self._error(error, code, message)


class _OutputNewest(_OutputBase):
    """Newest Output: adds get_properties/get_property and the static binary_encode used by rolling batch."""

    def error(self, error: str, code: int = 424, message: str = "invoke handler failure") -> _OutputNewest:
        return self._error(error, code, message)

    def get_properties(self) -> dict[str, Any]:
        return self.properties

    def get_property(self, key: str) -> Any:
        return self.properties.get(key)

    @staticmethod
    def binary_encode(data: dict[str, Any]) -> bytearray:
        msg = bytearray(struct.pack(">h", len(data)))
        for key, value in data.items():
            _OutputNewest.write_utf8(msg, key)
            _OutputNewest.write_utf8(msg, str(value))
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


_FLAVOURS = {DjlVersion.LMI_0_23: (_Input023, _Output023), DjlVersion.NEWEST: (_InputNewest, _OutputNewest)}
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
