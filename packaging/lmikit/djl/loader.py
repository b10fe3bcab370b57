"""Load a model dir's entry point the way DJL's Python engine does, in this process.

0.23: `importlib.import_module("model")` with the model dir on sys.path (a fresh import each load).
The newest: `spec_from_file_location("model_<md5(path)[:8]>", path)`, executed once for the handler and twice
more while the engine looks for `@output_formatter` / `@input_formatter` functions, so top-level code runs
three times and the decorated functions come from other module instances than the handler.

DJL also runs the worker with cwd = model dir; `model_environment` (scoped, for tests) and
`enter_model_environment` (process-wide, for a server process) provide that.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lmikit.djl import standin
from lmikit.djl.dialect import DjlVersion

_FORMATTER_ATTRIBUTES = {"output_formatter": "is_output_formatter", "input_formatter": "is_input_formatter"}


@dataclass(frozen=True)
class EntryPoint:
    """A loaded entry point. `formatters` are the newest engine's decorated functions, which it injects into
    every request's properties (`output_formatter` unless already present, and `input_formatter`)."""

    module: ModuleType
    model_dir: str
    handler_name: str = "handle"
    formatters: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def handler(self) -> Callable[..., Any]:
        """The function named by the `handler` property; AttributeError naming the module if it is missing."""
        function: object = getattr(self.module, self.handler_name, None)
        if not callable(function):
            raise AttributeError(f"entry point {self.module.__file__} has no handler function {self.handler_name!r}")  # noqa: TRY004
        return function


def enter_model_environment(model_dir: str | os.PathLike[str]) -> None:
    """Process-wide: put the model dir first on sys.path and make it the cwd, as DJL's worker process has it."""
    path = str(Path(model_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    os.chdir(path)


@contextmanager
def model_environment(model_dir: str | os.PathLike[str]) -> Iterator[None]:
    """`enter_model_environment` for the duration of a with-block; sys.path and cwd are restored afterwards."""
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    enter_model_environment(model_dir)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        os.chdir(saved_cwd)


def load_entry_point(
    model_dir: str | os.PathLike[str], version: DjlVersion, handler: str = "handle", entry_point: str = "model.py"
) -> EntryPoint:
    """Install the `version` djl_python stand-in (unless a real one exists) and load the entry point.

    `entry_point` is a file name relative to the model dir, an absolute path, or a module path. The caller
    provides the model environment (sys.path and cwd) first; import errors propagate, as they stop DJL's worker.
    """
    standin.install(version)
    directory = str(Path(model_dir).resolve())
    if not DjlVersion(version).dialect.decorated_formatters:
        module = _load_023(directory, entry_point)
        return EntryPoint(module, directory, handler)
    module = _load_newest(directory, entry_point)
    formatters = {}
    for key, attribute in _FORMATTER_ATTRIBUTES.items():
        found = _decorated_function(directory, attribute)
        if found is not None:
            formatters[key] = found
    return EntryPoint(module, directory, handler, formatters)


def _entry_file(model_dir: str, entry_point: str) -> str | None:
    if os.path.isabs(entry_point):
        path = entry_point
    elif entry_point.endswith(".py"):
        path = os.path.join(model_dir, entry_point)
    else:
        return None
    if not os.path.exists(path):
        raise ValueError(f"entry-point file not found {path}.")
    return path


def _load_023(model_dir: str, entry_point: str) -> ModuleType:
    path = _entry_file(model_dir, entry_point)
    if path is not None and os.path.isabs(entry_point):
        return _exec_file("model", path)
    name = entry_point.removesuffix(".py")
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def _load_newest(model_dir: str, entry_point: str) -> ModuleType:
    path = _entry_file(model_dir, entry_point)
    if path is None:
        return importlib.import_module(entry_point)
    return _exec_file(_hashed_name(path), path)


def _hashed_name(path: str) -> str:
    return f"model_{hashlib.md5(path.encode()).hexdigest()[:8]}"


def _exec_file(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"no module loader for {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _decorated_function(model_dir: str, attribute: str) -> Callable[..., Any] | None:
    """Newest `get_annotated_function`: re-execute model.py and return the first function flagged `attribute`."""
    try:
        path = _entry_file(model_dir, "model.py")
    except ValueError:
        return None
    if path is None:  # never: "model.py" names a file
        return None
    module = _exec_file(_hashed_name(path), path)
    for name in dir(module):
        candidate: object = getattr(module, name)
        if callable(candidate) and getattr(candidate, attribute, False):
            return candidate
    return None
