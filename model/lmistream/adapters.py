"""LoRA adapters: what an adapter directory declares, which adapters an endpoint serves, and which one a request names.

Free of torch and of weights (the host's `lmi build` reads adapters through it too). An adapter is a directory holding
PEFT's `adapter_config.json` beside its weights (`adapter_model.safetensors` or `adapter_model.bin`); the model
directory's `adapters/<name>/` folders are served under their folder names. A request names one by the body field
`adapters` (DJL's), the header `X-Amzn-SageMaker-Adapter-Identifier` (set by SageMaker's adapter inference components),
TGI's `parameters.adapter_id`, or an OpenAI chat body's `model`; a name that is no adapter is a 400 that lists the known
ones (a chat `model` that names no adapter is the base model, as OpenAI clients always send one).
What the engines cannot apply (DoRA, biases, extra trained modules, per-module ranks) is refused when the adapter is read.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidRequest

ADAPTERS_DIR = "adapters"
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: adapter_config.json settings that change the forward pass: each must be absent or at this value
_NEUTRAL_SETTINGS: dict[str, Any] = {
    "use_dora": False,
    "bias": "none",
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "fan_in_fan_out": False,
    "layers_to_transform": None,
}


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter as its config declares it."""

    name: str
    path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """The factor of the low-rank product, as PEFT computes it."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def weights_file(self) -> Path:
        directory = Path(self.path)
        return next((directory / n for n in WEIGHT_FILES if (directory / n).is_file()), directory / WEIGHT_FILES[0])


def read_adapter(name: str, path: str | Path, max_rank: int | None = None) -> AdapterSpec:
    """The adapter in a directory; ConfigError naming the adapter and what is wrong."""
    directory = Path(path)
    where = f"adapter {name!r} ({directory})"
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where}: no adapter_config.json (save the adapter with PEFT's save_pretrained)")
    if not any((directory / n).is_file() for n in WEIGHT_FILES):
        raise ConfigError(f"{where}: no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{where}: adapter_config.json is not readable JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: adapter_config.json must hold a JSON object")
    spec = _spec(name, directory, config, where)
    if max_rank is not None and spec.rank > max_rank:
        raise ConfigError(
            f"{where}: rank r={spec.rank} is above option.max_lora_rank={max_rank}; raise option.max_lora_rank"
        )
    return spec


def _spec(name: str, directory: Path, config: Mapping[str, Any], where: str) -> AdapterSpec:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ConfigError(f"{where}: peft_type {peft_type} is not served; only LORA adapters are")
    for key, neutral in _NEUTRAL_SETTINGS.items():
        value = config.get(key)
        if value is not None and value != neutral and not (neutral is None and value == []):
            raise ConfigError(f"{where}: {key}={json.dumps(value)} is not supported; only {json.dumps(neutral)} is")
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"{where}: r must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConfigError(f"{where}: lora_alpha must be a number, got {alpha!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise ConfigError(f"{where}: target_modules as a regular expression is not supported; list the module names")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{where}: target_modules must be a non-empty list of module names")
    return AdapterSpec(
        name, str(directory), rank, float(alpha), tuple(sorted(targets)), bool(config.get("use_rslora", False))
    )


def discover(model_dir: str | Path, max_rank: int | None = None) -> list[AdapterSpec]:
    """The adapters under `<model_dir>/adapters/`, by folder name (none when the folder is absent)."""
    root = Path(model_dir) / ADAPTERS_DIR
    if not root.is_dir():
        return []
    return [read_adapter(d.name, d, max_rank) for d in sorted(root.iterdir()) if d.is_dir()]


class AdapterRegistry:
    """The adapters an endpoint serves, by name (thread-safe: DJL registers adapters while requests run)."""

    def __init__(self, enabled: bool, specs: Sequence[AdapterSpec] = ()) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._specs = {spec.name: spec for spec in specs}

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._specs)

    def get(self, name: str) -> AdapterSpec | None:
        with self._lock:
            return self._specs.get(name)

    def add(self, spec: AdapterSpec) -> None:
        with self._lock:
            self._specs[spec.name] = spec

    def remove(self, name: str) -> None:
        with self._lock:
            if self._specs.pop(name, None) is None:
                raise ConfigError(f"adapter {name!r} is not registered; registered: {self._known()}")

    def resolve(self, name: str | None, field: str) -> str | None:
        """The adapter a request named (None: the base model); InvalidRequest naming the field otherwise."""
        if name is None:
            return None
        if not self.enabled:
            raise InvalidRequest(
                f"{field} names adapter {name!r}, but this endpoint serves no adapters (option.enable_lora=true "
                "turns them on)",
                param=field,
            )
        with self._lock:
            if name not in self._specs:
                raise InvalidRequest(f"{field}: unknown adapter {name!r}; known adapters: {self._known()}", param=field)
        return name

    def _known(self) -> str:
        return ", ".join(sorted(self._specs)) or "none"


def requested_adapter(
    payload: dict[str, Any], header: str | None, registry: AdapterRegistry, chat: bool
) -> tuple[dict[str, Any], str | None]:
    """The payload without its adapter fields, and the adapter the request names (validated; None: the base)."""
    body = dict(payload)
    named: list[tuple[str, Any]] = []
    if "adapters" in body:
        named.append(("adapters", _single(body.pop("adapters"))))
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and "adapter_id" in parameters:
        body["parameters"] = {k: v for k, v in parameters.items() if k != "adapter_id"}
        named.append(("parameters.adapter_id", parameters["adapter_id"]))
    if header:
        named.append((ADAPTER_HEADER, header))
    model = body.get("model")
    if chat and isinstance(model, str) and registry.get(model) is not None:
        named.append(("model", model))
    named = [(field, value) for field, value in named if value is not None]
    if not named:
        return body, None
    field, value = named[0]
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must name one adapter as a string, got {json.dumps(value)}", param=field)
    for other, other_value in named[1:]:
        if other_value != value:
            raise InvalidRequest(f"{field} names {value!r} but {other} names {other_value!r}; name one", param=field)
    return body, registry.resolve(value, field)


def _single(value: Any) -> Any:
    """DJL's `adapters` holds one name per input; one input, one name."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value
