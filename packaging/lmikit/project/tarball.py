"""Deterministic model.tar.gz: serving.properties, the entry point, handler packages and requirements.txt at the root.

requirements.txt is the project's file, or the text the caller passes (what `lmi build --image` writes for the
image); passed text always ships, even empty, so the archive's layout does not depend on it.

The archive is flat (SageMaker extracts it into /opt/ml/model). Entries are sorted, owners and modes fixed, mtimes
set to SOURCE_DATE_EPOCH (default 0) and the gzip header carries no name or time, so the same tree always gives
the same bytes. Secrets, caches, virtualenvs and build outputs never go in.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .layout import Project

EXCLUDED_NAMES = (
    ".git",
    ".env",
    ".env.*",
    ".aws",
    "*.pem",
    "*.key",
    "*credentials*",
    "__pycache__",
    "*.pyc",
    "*.pyo",
    ".pytest_cache",
    ".mypy_cache",
    ".hypothesis",
    ".venv",
    "venv",
    "dist",
    ".DS_Store",
)
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass
class BuildReport:
    """What a build wrote: the archive, its entries in order, its size, and what was left out."""

    path: Path
    entries: list[str] = field(default_factory=list)
    size: int = 0
    excluded: list[str] = field(default_factory=list)


def build_tarball(project: Project | Path | str, out_path: Path | str, requirements: str | None = None) -> BuildReport:
    """Write the model.tar.gz of the project (or of the one in that directory) to `out_path` (atomically) and report
    its contents.

    `requirements` is the requirements.txt to ship; None ships the project's own file, if it has one.
    """
    project = Project.load(project)
    report = BuildReport(path=Path(out_path))
    sources = _collect(project, report)
    if requirements is not None:
        sources["requirements.txt"] = requirements.encode("utf-8")
    data = _archive(sources, _mtime())
    report.path.parent.mkdir(parents=True, exist_ok=True)
    partial = report.path.with_name(report.path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(report.path)
    report.entries = sorted(sources)
    report.size = len(data)
    return report


def is_excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in EXCLUDED_NAMES)


def _collect(project: Project, report: BuildReport) -> dict[str, Path | bytes]:
    """Archive name → source path (directories included) for everything that ships."""
    sources: dict[str, Path | bytes] = {"serving.properties": project.serving_properties}
    if project.requirements is not None:
        sources["requirements.txt"] = project.requirements
    name, entry_file = project.entry_point()
    if entry_file is not None:
        sources[name] = entry_file
    for package in project.handler_packages():
        if is_excluded(package.name):
            report.excluded.append(package.name)
            continue
        sources.update(_walk(package, package.name, report))
    if project.adapters_dir.is_dir():
        sources.update(_walk(project.adapters_dir, project.adapters_dir.name, report))
    return sources


def _walk(directory: Path, arcname: str, report: BuildReport) -> dict[str, Path]:
    found = {arcname: directory}
    for child in sorted(directory.iterdir()):
        child_name = f"{arcname}/{child.name}"
        if is_excluded(child.name) or child.is_symlink():
            report.excluded.append(child_name)
        elif child.is_dir():
            found.update(_walk(child, child_name, report))
        elif child.is_file():
            found[child_name] = child
    return found


def _mtime() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def _archive(sources: dict[str, Path | bytes], mtime: int) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name in sorted(sources):
            _add(tar, name, sources[name], mtime)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, source: Path | bytes, mtime: int) -> None:
    """One entry: a directory, a file's bytes, or bytes given as they are."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
    if isinstance(source, Path) and source.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
        tar.addfile(info)
        return
    data = source.read_bytes() if isinstance(source, Path) else source
    info.mode, info.size = FILE_MODE, len(data)
    tar.addfile(info, io.BytesIO(data))
