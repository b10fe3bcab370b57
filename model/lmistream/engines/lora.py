"""LoraLayers: several LoRA adapters applied in one batched forward pass, each row with its own (or none).

Every linear layer an adapter targets gets a forward hook. The resident adapters' weights are stacked per module, one
slot per adapter (A transposed, B transposed with its scaling folded in, ranks zero-padded to the largest). Before
each forward pass the engine routes the batch (`route`: one adapter name or None per row), which gathers each adapter
row's slot once per batch composition; the hook then adds `(x @ A) @ B` for all adapter rows in two batched matmuls
(`torch.bmm`), whatever the number of adapters, so rows on the base model pay nothing but the hook's check, and a
batch with no adapter rows skips every hook at once. At most `max_loras` adapters hold weights on the model's device
(the scheduler lets no batch hold more); `max_cpu_loras` more stay in host memory, and the others are read again
from their directory when a request names them.

Under transformers' tensor parallelism (`tp_plan`) each rank's linear holds a shard, and each adapter is sliced to
match from the model's plan: a `colwise` module keeps a slice of its output features, so B keeps those rows; a
`rowwise` module keeps a slice of its input features and transformers all-reduces its output inside the module's
forward (which a forward hook runs after), so A keeps those columns and the rank-partial `x @ A` is summed over the
ranks (one all_reduce of the small rank-wide tensor) before `@ B`. Every rank routes the same rows, so the ranks
meet in the same all_reduces. An adapter of a module with another layout is refused.

Written by hand rather than through PEFT: PEFT's LoRA layers replace the model's modules (`PeftModel` wraps the model
and changes its forward signature, which the batch code inspects), its mixed-batch `adapter_names` forward arrived
in releases that need a newer accelerate than LMI 0.23's image ships, and its adapter loading goes through
`PeftModel`'s hub machinery. Reading PEFT's saved files takes a few lines here: `adapter_config.json` is read by the
torch-free `lmistream.adapters`, the weights by safetensors (or `torch.load` for `adapter_model.bin`), and every
tensor is checked against the module it adapts before an adapter is served. The tests compare each adapter's tokens
with PEFT's own `merge_and_unload()` model.
"""

from __future__ import annotations

import re
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
#: the tp_plan layouts whose shards an adapter can follow
COLWISE, ROWWISE = "colwise", "rowwise"


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

    def __init__(
        self, model: Any, device: torch.device, max_loras: int, max_cpu_loras: int, shard: tuple[int, int] | None = None
    ) -> None:
        """`shard`: (rank, degree) when the model is sharded by transformers' tp_plan."""
        self._modules = dict(model.named_modules())
        self._shards = Shards(model, shard)
        self._dtype = next(model.parameters()).dtype
        self._device = device
        self._max_loras = max_loras
        self._max_cpu_loras = max_cpu_loras
        self._lock = threading.Lock()
        self._specs: dict[str, AdapterSpec] = {}
        self._host: OrderedDict[str, Weights] = OrderedDict()
        self._resident: OrderedDict[str, Weights] = OrderedDict()
        self._stale = False  # an adapter was re-registered: the stacks may hold its old weights
        self._slots: dict[str, int] = {}
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooked: set[str] = set()
        self._routes: OrderedDict[tuple[str | None, ...], _Route | None] = OrderedDict()
        self._route: _Route | None = None

    def add(self, spec: AdapterSpec) -> None:
        """Validate an adapter against the model and serve it (any thread); ConfigError leaves the others as they were."""
        weights = self._load(spec)
        with self._lock:
            self._specs[spec.name] = spec
            self._stale = self._stale or spec.name in self._resident
            self._keep(self._host, spec.name, weights, self._max_cpu_loras)

    def _load(self, spec: AdapterSpec) -> Weights:
        """The adapter's weights, checked at their full shapes, then sliced to this rank's shards."""
        where = f"adapter {spec.name!r} ({spec.path})"
        return {
            name: self._shards.slice(where, name, pair)
            for name, pair in load_weights(spec, self._modules, self._dtype).items()
        }

    def remove(self, name: str) -> None:
        """Forget an adapter (any thread); rows still generating with it finish with the weights they have."""
        with self._lock:
            self._specs.pop(name, None)
            self._host.pop(name, None)

    def route(self, adapters: Sequence[str | None]) -> None:
        """Set the adapter of each row of the next forward pass (the engine's loop thread)."""
        with self._lock:
            stale, self._stale = self._stale, False
        if stale:
            self._resident.clear()
        key = tuple(adapters)
        if key not in self._routes:
            self._routes[key] = self._new_route(key)
            while len(self._routes) > _ROUTES_KEPT:
                self._routes.popitem(last=False)
        self._route = self._routes[key]

    def _new_route(self, adapters: tuple[str | None, ...]) -> _Route | None:
        """Each adapter row's slice of the stacked weights of every module its adapter targets."""
        names = list(dict.fromkeys(name for name in adapters if name is not None))
        if not names:
            return None
        if any(name not in self._resident for name in names):
            for name in names:
                self._make_resident(name)
            self._restack()
        rows = [(row, name) for row, name in enumerate(adapters) if name is not None]
        slots = torch.tensor([self._slots[name] for _, name in rows], dtype=torch.long, device=self._device)
        pairs = {}
        for module in sorted({module for name in names for module in self._resident[name]}):
            a, b = self._stacks[module]
            pairs[module] = (a.index_select(0, slots), b.index_select(0, slots))
        every = len(rows) == len(adapters)
        index = None if every else torch.tensor([row for row, _ in rows], dtype=torch.long, device=self._device)
        return _Route(index, pairs)

    def _make_resident(self, name: str) -> None:
        """The adapter's host weights among the `max_loras` that the stacks hold (read again if no longer cached)."""
        if name in self._resident:
            self._resident.move_to_end(name)
            return
        with self._lock:
            host, spec = self._host.get(name), self._specs.get(name)
        if host is None:
            if spec is None:
                raise ConfigError(f"adapter {name!r} was unregistered while a request still needed it")
            host = self._load(spec)
            with self._lock:
                self._keep(self._host, name, host, self._max_cpu_loras)
        self._keep(self._resident, name, host, self._max_loras)

    def _restack(self) -> None:
        """Every targeted module's resident adapters as two stacks on the device, one slot per adapter: A transposed
        (slots, in, rank) and B transposed with its scaling folded in (slots, rank, out), ranks zero-padded to the
        largest, zeros for an adapter that leaves the module alone."""
        names = list(self._resident)
        self._slots = {name: slot for slot, name in enumerate(names)}
        rank = max(a.shape[0] for weights in self._resident.values() for a, _, _ in weights.values())
        self._stacks = {}
        for module in sorted({module for weights in self._resident.values() for module in weights}):
            width_in, width_out = next(
                (pair[0].shape[1], pair[1].shape[0])
                for weights in self._resident.values()
                if (pair := weights.get(module))
            )
            a_stack = torch.zeros(len(names), width_in, rank, dtype=self._dtype)
            b_stack = torch.zeros(len(names), rank, width_out, dtype=self._dtype)
            for slot, name in enumerate(names):
                pair = self._resident[name].get(module)
                if pair is not None:
                    a, b, scaling = pair
                    a_stack[slot, :, : a.shape[0]] = a.t()
                    b_stack[slot, : b.shape[1]] = b.t() * scaling
            self._stacks[module] = (a_stack.to(self._device), b_stack.to(self._device))
            if module not in self._hooked:
                self._modules[module].register_forward_hook(self._delta(module, self._shards.layout(module)))
                self._hooked.add(module)
        self._routes.clear()

    @staticmethod
    def _keep(cache: OrderedDict[str, Weights], name: str, weights: Weights, capacity: int) -> None:
        """Put an adapter in an LRU cache, dropping the least recently used beyond its capacity."""
        cache[name] = weights
        cache.move_to_end(name)
        while len(cache) > capacity:
            cache.popitem(last=False)

    def _delta(self, module_name: str, layout: str | None) -> Any:
        reduce = layout == ROWWISE

        def hook(_module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            route = self._route
            pair = route.pairs.get(module_name) if route is not None else None
            if route is None or pair is None:
                return output
            a, b = pair
            x = inputs[0] if route.rows is None else inputs[0].index_select(0, route.rows)
            low = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), a)
            if reduce:  # this rank's input features only: the sum over the ranks is the whole x @ A
                torch.distributed.all_reduce(low)
            delta = torch.bmm(low, b)
            if route.rows is None:
                return output.add_(delta.view(output.shape))
            return output.index_add_(0, route.rows, delta.view((-1, *output.shape[1:])))

        return hook


class Shards:
    """This rank's slice of each adapted module under transformers' tp_plan (every module whole without one)."""

    def __init__(self, model: Any, shard: tuple[int, int] | None) -> None:
        self._modules = dict(model.named_modules())
        self._plan: dict[str, str] = dict(getattr(model, "tp_plan", None) or {}) if shard is not None else {}
        self._rank, self._degree = shard or (0, 1)

    def layout(self, module: str) -> str | None:
        """The module's tp_plan style (its layer numbers are the plan's `*`), None when it is not sharded."""
        return self._plan.get(re.sub(r"\.\d+(\.|$)", r".*\1", module)) if self._plan else None

    def slice(
        self, where: str, module: str, pair: tuple[torch.Tensor, torch.Tensor, float]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """A and B cut to the module's shard on this rank: B's rows for colwise, A's columns for rowwise."""
        a, b, scaling = pair
        layout = self.layout(module)
        if layout is None:
            return pair
        if layout not in (COLWISE, ROWWISE):
            raise ConfigError(
                f"{where}: it adapts {module}, which tensor parallelism shards as {layout!r}; adapters follow only "
                f"{COLWISE!r} and {ROWWISE!r} modules (serve it with option.tensor_parallel_degree=1)"
            )
        weight = self._modules[module].weight
        local = weight.to_local() if hasattr(weight, "to_local") else weight
        dim = 0 if layout == COLWISE else 1
        full = b if layout == COLWISE else a.t()
        pieces = torch.arange(full.shape[0]).chunk(self._degree)
        rows = pieces[self._rank] if self._rank < len(pieces) else torch.arange(0)
        if len(rows) != local.shape[dim]:
            raise ConfigError(
                f"{where}: {module}'s shard on rank {self._rank} holds {local.shape[dim]} of {full.shape[0]} features, "
                f"not the {len(rows)} an even split gives; adapters cannot follow this sharding"
            )
        if layout == COLWISE:
            return a, b.index_select(0, rows).contiguous(), scaling
        return a.index_select(1, rows).contiguous(), b, scaling


#: routings kept ready (a step's prefill and the running batch's decode alternate)
_ROUTES_KEPT = 4


class _Route:
    """One forward pass's adapter rows (None: every row) and, per module, those rows' A and B slices."""

    def __init__(self, rows: torch.Tensor | None, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.rows = rows
        self.pairs = pairs
