"""`lmi build`'s check of the LoRA adapters under `adapters/` against the base model, before anything is uploaded.

Torch-free: each adapter's `adapter_config.json` is read by the handler's own `lmistream.adapters` (the rules the
container applies, `option.max_lora_rank` included), and the tensor shapes come from the safetensors headers of the
adapter and of the base model (a JSON header after an 8-byte length, so no weights are loaded). Every lora_A / lora_B
pair must adapt a linear weight the base model has, with the adapter's rank: `(r, in)` and `(out, r)` against the
base's `(out, in)`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

_PREFIX = "base_model.model."


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a .safetensors file's header."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def base_shapes(model_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """Every weight's shape of a local model (one file or an index of shards); None without safetensors weights."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        return safetensors_shapes(single)
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        return None
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        shapes.update(safetensors_shapes(model_dir / shard))
    return shapes


def adapter_problems(spec: Any, base: dict[str, tuple[int, ...]]) -> list[str]:
    """What does not fit the base model in one adapter (`spec`: an `lmistream.adapters.AdapterSpec`)."""
    weights = Path(spec.weights_file)
    if weights.suffix != ".safetensors":
        return [f"{weights.name}: shapes are checked in safetensors files only; save with safe_serialization=True"]
    problems = []
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in safetensors_shapes(weights).items():
        name = key.removeprefix(_PREFIX)
        part = next((p for p in ("lora_A", "lora_B") if f".{p}." in name), None)
        if part is None:
            problems.append(f"tensor {key} is not a LoRA A/B weight")
            continue
        pairs.setdefault(name.split(f".{part}.", 1)[0], {})[part] = shape
    for module, pair in sorted(pairs.items()):
        target = base.get(f"{module}.weight")
        if target is None or len(target) != 2:
            problems.append(f"{module} is not a linear layer of the base model")
            continue
        out_features, in_features = target
        expected = {"lora_A": (spec.rank, in_features), "lora_B": (out_features, spec.rank)}
        if pair != expected:
            problems.append(
                f"{module}: {pair} does not fit the base model's {target} at r={spec.rank} (want {expected})"
            )
    targeted = {module.rsplit(".", 1)[-1] for module in pairs}
    missing = sorted(set(spec.target_modules) - targeted)
    if missing:
        problems.append(f"target_modules {missing} have no weights in {weights.name}")
    return problems


def check_adapters(adapters_module: ModuleType, adapters_dir: Path, model_dir: Path | None, max_rank: int) -> list[str]:
    """One line per problem, each naming the adapter; [] when every adapter fits."""
    problems = []
    base = base_shapes(model_dir) if model_dir is not None else None
    for directory in sorted(d for d in adapters_dir.iterdir() if d.is_dir()):
        try:
            spec = adapters_module.read_adapter(directory.name, directory, max_rank)
        except adapters_module.ConfigError as error:
            problems.append(error.message)
            continue
        if base is not None:
            problems += [f"adapter {spec.name!r}: {problem}" for problem in adapter_problems(spec, base)]
    return problems
