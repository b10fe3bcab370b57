"""Where a project's parts live: serving.properties, requirements.txt, and the model dir holding model.py.

Two layouts are accepted: the repository layout (serving.properties at the root, the handler in `model/`) and a
flat one (everything in one directory). Both become the same flat model.tar.gz.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .properties import parse_properties

DEFAULT_ENTRY_POINT = "model.py"


@dataclass(frozen=True)
class Project:
    """A project directory resolved to the files that ship in model.tar.gz."""

    root: Path
    model_dir: Path

    @classmethod
    def at(cls, project_dir: Path | str) -> Project:
        root = Path(project_dir).resolve()
        model_dir = root / "model"
        return cls(root=root, model_dir=model_dir if model_dir.is_dir() else root)

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

    def properties(self) -> dict[str, str]:
        """The serving.properties keys as written (no environment overlay: that happens in the container)."""
        return parse_properties(self.serving_properties.read_text(encoding="utf-8"))

    def entry_point(self, props: dict[str, str]) -> tuple[str, Path | None]:
        """(entry point as DJL sees it, local file that must ship) — no file for module paths, URLs, absolute paths."""
        name = props.get("option.entryPoint", "").strip() or DEFAULT_ENTRY_POINT
        if not name.endswith(".py") or "://" in name or Path(name).is_absolute():
            return name, None
        return name, self.model_dir / name

    @property
    def adapters_dir(self) -> Path:
        """Where the LoRA adapters are, one folder each (DJL's layout: `adapters/` in the model directory)."""
        return self.model_dir / "adapters"

    def handler_packages(self) -> list[Path]:
        """Python packages (directories with __init__.py) next to the entry point, sorted by name."""
        return sorted(p for p in self.model_dir.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
