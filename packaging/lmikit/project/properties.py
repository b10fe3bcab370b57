"""serving.properties read the way DJL's Java side reads it, and the init properties DJL hands to model.py.

Java `Properties` syntax: `key=value`, `key: value` or `key value`; `#`/`!` comments; a trailing backslash
continues the line. `OPTION_<NAME>` environment variables are overlaid with putIfAbsent, so the file wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

_SEPARATOR = re.compile(r"(?<!\\)[=:\s]")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java Properties text into an ordered dict (later keys win, as in Java)."""
    result: dict[str, str] = {}
    for line in _logical_lines(text):
        match = _SEPARATOR.search(line)
        if match is None:
            key, value = line, ""
        else:
            key, rest = line[: match.start()], line[match.end() :].lstrip(" \t\f")
            if match.group() in " \t\f" and rest[:1] in ("=", ":"):
                rest = rest[1:].lstrip(" \t\f")
            value = rest
        result[_unescape(key)] = _unescape(value)
    return result


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def with_option_environment(serving: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """serving.properties' keys (as written) with `OPTION_*` env overlaid as DJL does (the file wins)."""
    props = dict(serving)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith("OPTION_"):
            props.setdefault("option." + name[len("OPTION_") :].lower(), value)
    return props


def init_properties(serving: Mapping[str, str], model_dir: Path, device_id: int = -1) -> dict[str, str]:
    """The properties of DJL's init Input: option.* stripped of the prefix, the other keys as they are."""
    props: dict[str, str] = {}
    for key, value in serving.items():
        props[key.removeprefix("option.")] = value
    props.setdefault("handler", "handle")
    props["device_id"] = str(device_id)
    props["model_dir"] = str(Path(model_dir).resolve())
    return props
