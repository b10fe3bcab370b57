"""Stand-ins for `djl_python.pair_list.PairList` and `djl_python.inputs.Input`, the request side a handler reads.

`Input` comes in the two flavours `standin` installs: 0.23 (the 0.23.0-dlc branch) and the newest (master). They
differ in the batch key encoding `get_batches` parses; the rest, shared, mirrors djl_python's methods one by one.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

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


class InputBase:
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


class Input023(InputBase):
    """0.23.0-dlc: keys `batch_<i>.<name>` (unpadded), regex-parsed; item i gets the `batch_<i>.` properties."""

    def get_batches(self) -> list[Input023]:
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


class InputNewest(InputBase):
    """Newest: keys `batch_%03d<sep><name>` parsed by position (index = key[6:9], name = key[10:])."""

    def get_batches(self) -> list[InputNewest]:
        if not self.is_batch():
            return [self]
        batch = [type(self)() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            if key.startswith("batch_") and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        for key, value in zip(self.content.keys, self.content.values):
            batch[int(key[6:9])].content.add(key[10:], value)
        return batch
