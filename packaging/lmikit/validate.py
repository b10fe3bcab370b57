"""Pre-build checks of a project's serving.properties, entry point and model config: one finding per problem.

Option types and ranges come from the handler's own `HandlerConfig.from_properties`, so the host check and the
container agree. Each finding names the key it is about.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from .project import Project
from .properties import init_properties

#: serving.properties keys without the `option.` prefix that DJL reads (djl-serving-contract §6).
SERVER_KEYS = (
    "engine",
    "batch_size",
    "max_batch_delay",
    "job_queue_size",
    "minWorkers",
    "maxWorkers",
    "gpu.minWorkers",
    "gpu.maxWorkers",
    "cpu.minWorkers",
    "cpu.maxWorkers",
    "load_on_devices",
    "max_idle_time",
    "chunked_read_timeout",
)
#: option.* keys read by DJL's Python engine itself rather than by the handler.
DJL_OPTIONS = ("pythonExecutable", "env", "enable_venv", "parallel_loading", "mpi_mode")
ENGINES = ("Python", "MPI", "DeepSpeed", "FasterTransformer")
#: integer server keys and their smallest allowed value.
INTEGER_KEYS = {
    "batch_size": 1,
    "max_batch_delay": 0,
    "job_queue_size": 1,
    "minWorkers": 0,
    "maxWorkers": 0,
    "gpu.minWorkers": 0,
    "gpu.maxWorkers": 0,
    "cpu.minWorkers": 0,
    "cpu.maxWorkers": 0,
    "max_idle_time": 0,
    "chunked_read_timeout": 0,
}
HEAD_KEYS = ("num_attention_heads", "n_head")
KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")


@dataclass(frozen=True)
class Finding:
    """One problem found before a build; errors stop the build, warnings are printed."""

    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def validate_project(project_dir: Path | str) -> list[Finding]:
    """All findings for the project at `project_dir` (empty when it is ready to build)."""
    project = Project.at(project_dir)
    if not project.serving_properties.is_file():
        return [Finding("error", "serving.properties", f"not found in {project.root} or {project.model_dir}")]
    props = project.properties()
    config_module = _handler_config_module(project.model_dir)
    checks: list[Callable[[], list[Finding]]] = [
        lambda: _unknown_keys(props, _known_options(config_module)),
        lambda: _server_values(props),
        lambda: _entry_point(project, props),
        lambda: _handler_options(project, props, config_module),
    ]
    return [finding for check in checks for finding in check()]


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def _handler_config_module(model_dir: Path) -> ModuleType:
    """`lmistream.config` as importable here, else the copy in the project's model dir."""
    try:
        return importlib.import_module("lmistream.config")
    except ModuleNotFoundError:
        sys.path.insert(0, str(model_dir))
        try:
            return importlib.import_module("lmistream.config")
        finally:
            sys.path.remove(str(model_dir))


def _known_options(config_module: ModuleType) -> tuple[str, ...]:
    return tuple(config_module.HANDLER_OPTIONS) + DJL_OPTIONS


def _unknown_keys(props: dict[str, str], options: tuple[str, ...]) -> list[Finding]:
    findings = []
    for key in props:
        is_option = key.startswith("option.")
        name = key[len("option.") :] if is_option else key
        known = options if is_option else SERVER_KEYS
        if name in known:
            continue
        prefix = "option." if is_option else ""
        match = _closest(name, known)
        if match:
            findings.append(Finding("error", key, f"unknown key; did you mean {prefix}{match}?"))
        else:
            findings.append(Finding("warning", key, "unknown key: neither DJL nor this handler reads it"))
    return findings


def _closest(name: str, known: tuple[str, ...]) -> str | None:
    by_lower = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[matches[0]] if matches else None


def _server_values(props: dict[str, str]) -> list[Finding]:
    findings = []
    engine = props.get("engine")
    if engine is not None and engine not in ENGINES:
        findings.append(Finding("error", "engine", f"{engine!r} is not one of {', '.join(ENGINES)}"))
    for key, minimum in INTEGER_KEYS.items():
        value = props.get(key)
        if value is not None and not (value.strip().isdigit() and int(value) >= minimum):
            findings.append(Finding("error", key, f"{value!r} must be an integer >= {minimum}"))
    return findings


def _entry_point(project: Project, props: dict[str, str]) -> list[Finding]:
    name, path = project.entry_point(props)
    key = "option.entryPoint" if "option.entryPoint" in props else "model.py"
    if path is not None and not path.is_file():
        return [Finding("error", key, f"entry point {name} not found in {project.model_dir}")]
    if path is not None and "engine" not in props:
        return [
            Finding(
                "error",
                "engine",
                f"missing while a custom {name} is present: set engine=Python "
                "(LMI 0.23 may silently pick MPI/DeepSpeed and run the handler under mpirun)",
            )
        ]
    return []


def _handler_options(project: Project, props: dict[str, str], config_module: ModuleType) -> list[Finding]:
    try:
        config = config_module.HandlerConfig.from_properties(init_properties(props, project.model_dir))
    except config_module.ConfigError as exc:
        match = re.match(r"option\.(\w+)", exc.message)
        return [Finding("error", f"option.{match.group(1)}" if match else "serving.properties", exc.message)]
    findings = _tensor_parallel(project, config) + _python_engine_ranks(props, config)
    if config.trust_remote_code:
        findings.append(
            Finding(
                "warning",
                "option.trust_remote_code",
                "true runs Python code from the model repository inside the container",
            )
        )
    return findings


def _tensor_parallel(project: Project, config: Any) -> list[Finding]:
    tp = config.tensor_parallel_degree
    model_config = _model_config(project, config.model_id)
    if tp is None or model_config is None:
        return []
    heads = {key: model_config[key] for key in HEAD_KEYS + KV_HEAD_KEYS if isinstance(model_config.get(key), int)}
    bad = [f"{key}={count}" for key, count in heads.items() if count % tp]
    if not bad:
        return []
    return [Finding("error", "option.tensor_parallel_degree", f"{tp} does not divide the model's {' and '.join(bad)}")]


def _python_engine_ranks(props: dict[str, str], config: Any) -> list[Finding]:
    """engine=Python with a degree above 1 starts no ranks in DJL: one process sees all N GPUs."""
    degree = config.tensor_parallel_degree
    if props.get("engine") != "Python" or (degree is not None and degree <= 1):
        return []
    shown = "max" if degree is None else degree
    return [
        Finding(
            "error",
            "option.tensor_parallel_degree",
            f"{shown} with engine=Python: DJL then runs one Python process that sees {shown} GPUs and starts "
            "no ranks, so nothing is sharded (the handler refuses it at load); set engine=MPI for tensor "
            "parallelism",
        )
    ]


def local_model_dir(project: Project, model_id: str) -> Path | None:
    """The local directory of `model_id` holding a config.json (absolute, or relative to the project or model dir)."""
    candidates = (
        [Path(model_id)] if Path(model_id).is_absolute() else [project.root / model_id, project.model_dir / model_id]
    )
    return next((directory for directory in candidates if (directory / "config.json").is_file()), None)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _model_config(project: Project, model_id: str) -> dict[str, Any] | None:
    directory = local_model_dir(project, model_id)
    return None if directory is None else read_json(directory / "config.json")
