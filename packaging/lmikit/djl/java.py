"""What DJL's Java side does to values, as pure functions: Gson's JSON reading and writing (HTML-safe escapes,
lenient types), Java's int parsing, property maps with case-insensitive keys, the binary item codec's checks, and
the SageMaker custom-attributes header split into properties."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lmikit.djl import standin
from lmikit.djl.dialect import DjlDialect

HTML_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "=": "\\u003d",
        "'": "\\u0027",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
JAVA_INT = re.compile(r"[+-]?\d+")


class Malformed(Exception):
    """An item the Java side cannot parse; it kills the thread that read it."""


def java_props(items: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """A Java case-insensitive TreeMap: later values win, the first spelling of a key stays, sorted."""
    merged: dict[str, tuple[str, str]] = {}
    for key, value in items:
        first = merged.get(key.lower(), (key, None))[0]
        merged[key.lower()] = (first, value)
    return {key: value for _, (key, value) in sorted(merged.items())}


def put_case_insensitive(target: dict[str, str], key: str, value: str) -> None:
    existing = next((k for k in target if k.lower() == key.lower()), key)
    target[existing] = value


def lower_keys(props: Mapping[str, Any]) -> set[str]:
    return {key.lower() for key in props}


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        element = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed(f"rolling-batch item is not JSON: {raw[:80]!r}") from exc
    if not isinstance(element, dict):
        raise Malformed(f"rolling-batch item is not a JSON object: {raw[:80]!r}")
    return element


def decode_item(raw: bytes) -> dict[str | None, str]:
    try:
        fields = standin.decode_binary(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"undecodable binary item: {exc}") from exc
    checked: dict[str | None, str] = {}
    for key, value in fields.items():
        if value is None:
            raise Malformed("binary item has a null value")
        checked[key] = value
    return checked


def gson_bool(value: Any) -> bool:
    """GSON `getAsBoolean()`: a boolean, or a string parsed with Boolean.parseBoolean; otherwise it throws."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int, float)):
        return str(value).lower() == "true"
    raise Malformed(f"item field 'last' is {value!r}")


def gson_str(value: Any) -> str:
    """GSON `getAsString()` of a primitive; missing, null, objects and arrays throw."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise Malformed(f"item field is {value!r}")


def gson_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return java_int(value) if isinstance(value, str) else None


def java_int(text: str) -> int | None:
    """Integer.parseInt, or None where it would throw."""
    return int(text) if JAVA_INT.fullmatch(text) else None


def gson(value: Any, pretty: bool = False) -> str:
    """JSON as DJL's Gson writes it: compact (or 2-space pretty) with HTML-safe escapes."""
    text = json.dumps(
        value, ensure_ascii=False, indent=2 if pretty else None, separators=(",", ": ") if pretty else (",", ":")
    )
    return text.translate(HTML_ESCAPES)


def gson_output(code: int, message: str, dialect: DjlDialect) -> str:
    """`JsonUtils.GSON.toJson(new Output(code, message))`, the error chunk of the rolling-batch failure branch."""
    body: dict[str, Any] = {"code": code, "message": message, "properties": {}, "content": {"keys": [], "values": []}}
    if dialect.output_cancelled_field:
        body["cancelled"] = False
    return gson(body)


def batch_headers(props: Mapping[str, Any]) -> dict[int, dict[str, str]]:
    """Newest: Output properties `batch_<i>_<Name>` become request i's headers."""
    result: dict[int, dict[str, str]] = {}
    for key, value in java_props(props.items()).items():
        if not key.startswith("batch_"):
            continue
        pos = key.find("_", 7)
        if pos > 0:
            index = java_int(key[6:pos])
            if index is None:
                raise Malformed(f"batch property {key!r} has no integer index")
            result.setdefault(index, {})[key[pos + 1 :]] = str(value)
    return result


def custom_attributes(value: str) -> list[tuple[str, str]]:
    pairs = [token.split("=", 1) for token in value.split(";")]
    return [(pair[0].strip(), pair[1].strip()) for pair in pairs if len(pair) == 2]


def input_data(content: list[tuple[str, bytes]]) -> bytes:
    """Java `Input.getData()` on a request: "data", else the first item."""
    return next((value for key, value in content if key == "data"), content[0][1] if content else b"")


def seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
