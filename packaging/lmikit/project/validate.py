"""Pre-build checks of a project's serving.properties, entry point and model config: one finding per problem.

Option types and ranges come from the handler's own `HandlerConfig.from_properties`, so the host check and the
container agree. Each finding names the key it is about.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from .adapter_check import check_adapters
from .layout import Project
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
ENGINES = ("Python", "MPI", "DeepSpeed", "FasterTransformer")
UNKNOWN_OPTION = (
    "unknown key: neither DJL's LMI properties nor this handler read it; the vLLM engine passes it to vLLM if it "
    "names one of vLLM's engine arguments (as DJL does), the other engines warn at load that it has no effect"
)
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


@dataclass(frozen=True)
class Finding:
    """One problem found before a build; errors stop the build, warnings are printed."""

    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def validate_project(project: Project | Path | str) -> list[Finding]:
    """All findings for the project (or the one in that directory); empty when it is ready to build."""
    project = Project.load(project)
    if not project.serving_properties.is_file():
        return [Finding("error", "serving.properties", f"not found in {project.root} or {project.model_dir}")]
    props = project.properties
    options_module = project.handler_module("options")
    checks: list[Callable[[], list[Finding]]] = [
        lambda: _unknown_keys(props, tuple(option.key for option in options_module.TABLE)),
        lambda: _refused_options(project, options_module),
        lambda: _server_values(props),
        lambda: _entry_point(project),
        lambda: _handler_options(project),
    ]
    return [finding for check in checks for finding in check()]


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def _unknown_keys(props: Mapping[str, str], options: tuple[str, ...]) -> list[Finding]:
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
        elif is_option:
            findings.append(Finding("warning", key, UNKNOWN_OPTION))
        else:
            findings.append(Finding("warning", key, "unknown key: DJL reads no such server setting"))
    return findings


def _closest(name: str, known: tuple[str, ...]) -> str | None:
    """The known key `name` is a typo of: close in spelling and at most two characters longer or shorter."""
    by_lower = {k.lower(): k for k in known}
    similar = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.8)
    matches = [match for match in similar if abs(len(match) - len(name)) <= 2]
    return by_lower[matches[0]] if matches else None


def _refused_options(project: Project, options_module: ModuleType) -> list[Finding]:
    """Options the engine these options ask for refuses at load; with the engine left to auto, those every engine
    refuses (`lmi build --image` adds those of the engine that image runs)."""
    props = project.properties
    choice = project.handler_module("engine_choice")
    try:
        engine = choice.requested(props.get("option.rolling_batch"), props.get("option.generation_engine", "auto"))[0]
    except choice.ConfigError:
        return []  # images.check_image reports the disagreement
    if engine != "auto" and engine not in options_module.ENGINES:
        return []  # the option's own check names the bad engine
    return refusal_findings(options_module.refusals(init_properties(props, project.model_dir), engine))


def refusal_findings(refused: list[Any]) -> list[Finding]:
    """One error per refused option (the handler's ConfigErrors), under its key."""
    return [Finding("error", error.param, error.message) for error in refused]


def _server_values(props: Mapping[str, str]) -> list[Finding]:
    findings = []
    engine = props.get("engine")
    if engine is not None and engine not in ENGINES:
        findings.append(Finding("error", "engine", f"{engine!r} is not one of {', '.join(ENGINES)}"))
    for key, minimum in INTEGER_KEYS.items():
        value = props.get(key)
        if value is not None and not (value.strip().isdigit() and int(value) >= minimum):
            findings.append(Finding("error", key, f"{value!r} must be an integer >= {minimum}"))
    return findings


def _entry_point(project: Project) -> list[Finding]:
    name, path = project.entry_point()
    key = "option.entryPoint" if "option.entryPoint" in project.properties else "model.py"
    if path is not None and not path.is_file():
        return [Finding("error", key, f"entry point {name} not found in {project.model_dir}")]
    if path is not None and "engine" not in project.properties:
        return [
            Finding(
                "error",
                "engine",
                f"missing while a custom {name} is present: set engine=Python "
                "(LMI 0.23 may silently pick MPI/DeepSpeed and run the handler under mpirun)",
            )
        ]
    return []


def _handler_options(project: Project) -> list[Finding]:
    try:
        config = project.config
    except project.handler_module("errors").ConfigError as exc:
        return [Finding("error", exc.param or "serving.properties", exc.message)]
    findings = _tensor_parallel(project, config) + _python_engine_ranks(project, config) + _adapters(project, config)
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
    heads = project.handler_module("heads")
    undivided = heads.undivided_heads(model_config.get, tp)
    return [Finding("error", "option.tensor_parallel_degree", heads.heads_error(tp, undivided))] if undivided else []


def _adapters(project: Project, config: Any) -> list[Finding]:
    """Each adapter under adapters/ as the handler reads it, and its shapes against the base model's weights."""
    if not project.adapters_dir.is_dir():
        return []
    if not config.enable_lora:
        return [Finding("warning", "option.enable_lora", "adapters/ ships, but is served only with true")]
    module = project.handler_module("adapters")
    base = local_model_dir(project, config.model_id)
    problems = check_adapters(module, project.adapters_dir, base, config.max_lora_rank)
    findings = [Finding("error", "adapters", problem) for problem in problems]
    if base is None:
        findings.append(
            Finding("warning", "adapters", f"the base model {config.model_id} is not local: shapes are not checked")
        )
    return findings


def _python_engine_ranks(project: Project, config: Any) -> list[Finding]:
    """engine=Python with a degree above 1 starts no ranks in DJL: one process sees all N GPUs."""
    degree = config.tensor_parallel_degree
    if project.properties.get("engine") != "Python" or (degree is not None and degree <= 1):
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
