"""A project read once: where its parts live (serving.properties, requirements.txt, the model dir holding model.py),
its serving.properties as written, and the handler's own typed reading of those options.

Two layouts are accepted: the repository layout (serving.properties at the root, the handler in `model/`) and a
flat one (everything in one directory). Both become the same flat model.tar.gz. `Project.at` parses
serving.properties once; validate, images, tarball, deploy and serve take the `Project` it returns.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from .properties import init_properties, parse_properties

DEFAULT_ENTRY_POINT = "model.py"
#: option.tensor_parallel_degree as the host reads it: a GPU count, "max" (every GPU), or None (absent, or no count)
TensorParallelDegree = int | Literal["max"] | None


@dataclass(frozen=True)
class Project:
    """A project directory resolved to the files that ship in model.tar.gz, with its serving.properties read."""

    root: Path
    model_dir: Path
    #: serving.properties' keys as written (no environment overlay: the container adds it); empty without the file
    properties: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def at(cls, project_dir: Path | str) -> Project:
        """The project in `project_dir`, its serving.properties parsed."""
        root = Path(project_dir).resolve()
        model_dir = root / "model"
        located = cls(root=root, model_dir=model_dir if model_dir.is_dir() else root)
        path = located.serving_properties
        if not path.is_file():
            return located
        return located.with_properties(parse_properties(path.read_text(encoding="utf-8")))

    @classmethod
    def load(cls, project: Project | Path | str) -> Project:
        """`project` itself when it is one, else the project in that directory."""
        return project if isinstance(project, Project) else cls.at(project)

    def with_properties(self, properties: Mapping[str, str]) -> Project:
        """The same project with other properties (`lmi serve`'s, with the environment and local choices applied)."""
        return replace(self, properties=dict(properties))

    @property
    def serving_properties(self) -> Path:
        """serving.properties at the root, else in the model dir (the root path when neither exists)."""
        for directory in (self.root, self.model_dir):
            if (directory / "serving.properties").is_file():
                return directory / "serving.properties"
        return self.root / "serving.properties"

    @property
    def requirements(self) -> Path | None:
        for directory in (self.root, self.model_dir):
            if (directory / "requirements.txt").is_file():
                return directory / "requirements.txt"
        return None

    def entry_point(self) -> tuple[str, Path | None]:
        """(entry point as DJL sees it, local file that must ship) — no file for module paths, URLs, absolute paths."""
        name = self.properties.get("option.entryPoint", "").strip() or DEFAULT_ENTRY_POINT
        if not name.endswith(".py") or "://" in name or Path(name).is_absolute():
            return name, None
        return name, self.model_dir / name

    @property
    def tensor_parallel_degree(self) -> TensorParallelDegree:
        """option.tensor_parallel_degree as written: a count, `max` (every GPU), or None when absent or not a count
        (the handler's own reading, `config`, names the option then)."""
        degree = self.properties.get("option.tensor_parallel_degree", "").strip()
        if degree.lower() == "max":
            return "max"
        return int(degree) if degree.isdigit() else None

    @property
    def adapters_dir(self) -> Path:
        """Where the LoRA adapters are, one folder each (DJL's layout: `adapters/` in the model directory)."""
        return self.model_dir / "adapters"

    def handler_packages(self) -> list[Path]:
        """Python packages (directories with __init__.py) next to the entry point, sorted by name."""
        return sorted(p for p in self.model_dir.iterdir() if p.is_dir() and (p / "__init__.py").is_file())

    def handler_module(self, name: str) -> ModuleType:
        """`lmistream.<name>` as importable here, else the copy in the project's model dir."""
        qualified = f"lmistream.{name}"
        try:
            return importlib.import_module(qualified)
        except ModuleNotFoundError:
            sys.path.insert(0, str(self.model_dir))
            try:
                return importlib.import_module(qualified)
            finally:
                sys.path.remove(str(self.model_dir))

    @cached_property
    def config(self) -> Any:
        """The handler's own `HandlerConfig` of these options, read as the container's init Input carries them;
        raises the handler's ConfigError, naming the option, where they do not parse."""
        return self.handler_module("config").HandlerConfig.from_properties(
            init_properties(self.properties, self.model_dir)
        )
