"""LoraLayers: several LoRA adapters applied in one batched forward pass, each row with its own (or none).

Every linear layer an adapter targets gets a forward hook. Before each forward pass the engine routes the batch
(`route`: one adapter name or None per row); the hook then adds `scaling * (x @ A.T) @ B.T` to the rows of each adapter,
computed on those rows alone, so rows on the base model pay nothing but the hook's check, and a batch with no adapter
rows skips every hook at once. At most `max_loras` adapters hold weights on the model's device (the scheduler lets no
batch hold more); `max_cpu_loras` more stay in host memory, and the others are read again from their directory when
a request names them.

Written by hand rather than through PEFT: PEFT's LoRA layers replace the model's modules (`PeftModel` wraps the model
and changes its forward signature, which the batch code inspects), its mixed-batch `adapter_names` forward arrived
in releases that need a newer accelerate than LMI 0.23's image ships, and its adapter loading goes through
`PeftModel`'s hub machinery. Reading PEFT's saved files takes a few lines here: `adapter_config.json` is read by the
torch-free `lmistream.adapters`, the weights by safetensors (or `torch.load` for `adapter_model.bin`), and every
tensor is checked against the module it adapts before an adapter is served. The tests compare each adapter's tokens
with PEFT's own `merge_and_unload()` model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from ..adapters import AdapterSpec
from ..errors import ConfigError

_PREFIX = "base_model.model."
#: module name -> (A, B, scaling)
Weights = dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def load_weights(spec: AdapterSpec, modules: dict[str, Any], dtype: torch.dtype) -> Weights:
    """An adapter's low-rank pairs on the host, each checked against the base model's module; ConfigError if not."""
    where = f"adapter {spec.name!r} ({spec.path})"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(spec, where).items():
        module, part = _split_key(key, where)
        pairs.setdefault(module, {})[part] = tensor
    if not pairs:
        raise ConfigError(f"{where}: its weights hold no lora_A / lora_B tensors")
    weights: Weights = {}
    for name, pair in sorted(pairs.items()):
        a, b = pair.get("lora_A"), pair.get("lora_B")
        if a is None or b is None:
            raise ConfigError(f"{where}: module {name} has {sorted(pair)} but needs both lora_A and lora_B")
        _check(spec, where, name, modules.get(name), a, b)
        weights[name] = (a.to(dtype), b.to(dtype), spec.scaling)
    return weights


def _read_tensors(spec: AdapterSpec, where: str) -> dict[str, torch.Tensor]:
    path = spec.weights_file
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"{where}: {path.name} could not be read: {error}") from None
    return dict(loaded)


def _split_key(key: str, where: str) -> tuple[str, str]:
    """`base_model.model.<module>.lora_A[.<adapter>].weight` -> (module, "lora_A")."""
    name = key.removeprefix(_PREFIX)
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in name and name.endswith(".weight"):
            return name.split(marker, 1)[0], part
    raise ConfigError(f"{where}: tensor {key} is not a LoRA A/B weight (embeddings and biases are not supported)")


def _check(spec: AdapterSpec, where: str, name: str, module: Any, a: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(module, torch.nn.Linear):
        found = "no such module" if module is None else type(module).__name__
        raise ConfigError(f"{where}: it adapts {name}, which in the base model is {found}, not a linear layer")
    if name.rsplit(".", 1)[-1] not in spec.target_modules and name not in spec.target_modules:
        raise ConfigError(
            f"{where}: it holds weights for {name}, outside its target_modules {list(spec.target_modules)}"
        )
    expected_a, expected_b = (spec.rank, module.in_features), (module.out_features, spec.rank)
    if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
        raise ConfigError(
            f"{where}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; the base model and r={spec.rank} "
            f"need {expected_a} and {expected_b} (an adapter of another base model?)"
        )


class LoraLayers:
    """The registered adapters of one model and the per-row routing of its next forward pass."""

    def __init__(self, model: Any, device: torch.device, max_loras: int, max_cpu_loras: int) -> None:
        self._modules = dict(model.named_modules())
        self._dtype = next(model.parameters()).dtype
        self._device = device
        self._max_loras = max_loras
        self._max_cpu_loras = max_cpu_loras
        self._lock = threading.Lock()
        self._specs: dict[str, AdapterSpec] = {}
        self._host: OrderedDict[str, Weights] = OrderedDict()
        self._resident: OrderedDict[str, Weights] = OrderedDict()
        self._hooked: set[str] = set()
        self._groups: list[tuple[torch.Tensor, Weights]] = []

    def add(self, spec: AdapterSpec) -> None:
        """Validate an adapter against the model and serve it (any thread); ConfigError leaves the others as they were."""
        weights = load_weights(spec, self._modules, self._dtype)
        with self._lock:
            self._specs[spec.name] = spec
            self._resident.pop(spec.name, None)
            self._keep(self._host, spec.name, weights, self._max_cpu_loras)

    def remove(self, name: str) -> None:
        """Forget an adapter (any thread); rows still generating with it finish with the weights they have."""
        with self._lock:
            self._specs.pop(name, None)
            self._host.pop(name, None)

    def route(self, adapters: Sequence[str | None]) -> None:
        """Set the adapter of each row of the next forward pass (the engine's loop thread)."""
        rows: dict[str, list[int]] = {}
        for row, name in enumerate(adapters):
            if name is not None:
                rows.setdefault(name, []).append(row)
        groups = []
        for name, indices in rows.items():
            weights = self._on_device(name)
            self._hook(weights)
            groups.append((torch.tensor(indices, dtype=torch.long, device=self._device), weights))
        self._groups = groups

    def _on_device(self, name: str) -> Weights:
        weights = self._resident.get(name)
        if weights is not None:
            self._resident.move_to_end(name)
            return weights
        with self._lock:
            host, spec = self._host.get(name), self._specs.get(name)
        if host is None:
            if spec is None:
                raise ConfigError(f"adapter {name!r} was unregistered while a request still needed it")
            host = load_weights(spec, self._modules, self._dtype)
            with self._lock:
                self._keep(self._host, name, host, self._max_cpu_loras)
        weights = {m: (a.to(self._device), b.to(self._device), s) for m, (a, b, s) in host.items()}
        self._keep(self._resident, name, weights, self._max_loras)
        return weights

    @staticmethod
    def _keep(cache: OrderedDict[str, Weights], name: str, weights: Weights, capacity: int) -> None:
        """Put an adapter in an LRU cache, dropping the least recently used beyond its capacity."""
        cache[name] = weights
        cache.move_to_end(name)
        while len(cache) > capacity:
            cache.popitem(last=False)

    def _hook(self, weights: Weights) -> None:
        for name in weights:
            if name not in self._hooked:
                self._modules[name].register_forward_hook(self._delta(name))
                self._hooked.add(name)

    def _delta(self, module_name: str) -> Any:
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            for index, weights in self._groups:
                pair = weights.get(module_name)
                if pair is not None:
                    a, b, scaling = pair
                    rows = inputs[0].index_select(0, index)
                    output.index_add_(0, index, (rows @ a.t()) @ b.t(), alpha=scaling)
            return output

        return hook
