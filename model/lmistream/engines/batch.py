"""DecodeBatch: the running rows of the portable engine as tensors, and the batch surgery between steps.

Rows are left-padded so that every row's newest token sits in the last column: one forward pass then decodes them
all. Joining rows are prefilled together, then concatenated (`extend`): the shorter cache is padded on the left with
masked zeros. A row may join with the KV of its first tokens already known (a cached prefix, or its earlier chunks):
those columns come first, padded per row, and the mask leaves a gap between them and the rest of the prompt. Finished or cancelled rows leave with `keep` (an index select on the batch dimension of every tensor),
after which columns that are padding in every remaining row are cut, so memory follows the live rows. This is the
filter / concatenate scheme of TGI's non-flash `CausalLMBatch`, over the cache object of whichever transformers is
installed: a tuple of `(keys, values)` per layer before transformers 4.36's cache classes, or a `DynamicCache` whose
layers hold `keys` / `values`. Both keep `(batch, heads, sequence, head_dim)` tensors; a model whose cache has any
other layout is refused at load (`check_layout`). Where the cache has layers, they are `kv_headroom` layers, which
append a decode step's column in place instead of copying the whole cache as `DynamicLayer` does.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch

from ..errors import ConfigError

LayerKV = tuple[torch.Tensor, torch.Tensor]


class ModelCaller:
    """One forward pass of a causal LM, whatever its transformers generation calls the cache and the logits slice."""

    def __init__(self, model: Any) -> None:
        self.model = model
        accepted = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._positions = "position_ids" in accepted
        self._keep = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in accepted), None)
        #: a cache the model made (set at load), the pattern `cache_of` copies
        self.template: Any = None

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits of the last position of every row, and the updated cache (a cache of the template's kind when none
        is given and there is a template)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            self._cache_arg: cache if cache is not None else self.empty_cache(),
            "use_cache": True,
            "return_dict": True,
        }
        if self._positions:
            positions = mask.long().cumsum(-1) - 1
            kwargs["position_ids"] = positions.clamp(min=0)[:, -input_ids.size(1) :]
        if self._keep is not None:
            kwargs[self._keep] = 1
        output = self.model(**kwargs)
        return output.logits[:, -1, :], getattr(output, self._cache_arg)

    def probe(self, device: torch.device) -> int:
        """A pass over two tokens at load: refuse a cache layout the batch surgery cannot handle (`check_layout`),
        keep the cache as the `template`, and return the KV bytes of one token on this rank."""
        with torch.inference_mode():
            _, cache = self(
                torch.zeros((1, 2), dtype=torch.long, device=device),
                torch.ones((1, 2), dtype=torch.long, device=device),
                None,
            )
        check_layout(cache, batch=1, length=2)
        if isinstance(cache, (tuple, list)):
            self.template = cache
        else:
            from . import kv_headroom  # transformers with cache layers only (4.30's tuples have none)

            self.template = kv_headroom.adopt(cache)
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers(cache)) // 2

    def prompt_log_probs(self, prompt_ids: list[int], device: torch.device) -> tuple[tuple[int, float | None], ...]:
        """Each prompt token with its log-probability under the model given the tokens before it (the first has
        none), as TGI's `decoder_input_details` reports them: log_softmax over the logits of the position before it.
        A pass of its own over the unpadded prompt with no cache kept, apart from the batch's prefill (whose cache
        may skip the prompt's start), paid only by the requests that ask."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": False, "return_dict": True}
        if self._keep is not None:
            kwargs[self._keep] = 0  # every position
        log_probs = self.model(**kwargs).logits[0, :-1].float().log_softmax(dim=-1)
        picked = log_probs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1).tolist()
        return tuple(zip(prompt_ids, [None, *picked]))

    def cache_of(self, tensors: list[LayerKV]) -> Any:
        """A cache holding these tensors, of the class this model's transformers uses."""
        if self.template is None or isinstance(self.template, (tuple, list)):
            return tuple(tensors)
        return with_layers(copy.deepcopy(self.template), tensors)

    def empty_cache(self) -> Any:
        """None (the model makes its own) before the probe and for tuple caches; else an empty copy of the template,
        so that a prefill from nothing decodes into `kv_headroom` layers too."""
        if self.template is None or isinstance(self.template, (tuple, list)):
            return None
        empty = copy.deepcopy(self.template)
        empty.layers = [type(layer)() for layer in empty.layers]
        return empty


def layers(cache: Any) -> list[LayerKV]:
    if isinstance(cache, (tuple, list)):
        return [(layer[0], layer[1]) for layer in cache]
    return [(layer.keys, layer.values) for layer in cache.layers]


def with_layers(cache: Any, tensors: list[LayerKV]) -> Any:
    if isinstance(cache, (tuple, list)):
        return tuple(tensors)
    for layer, (keys, values) in zip(cache.layers, tensors):
        layer.keys, layer.values = keys, values
    return cache


def check_layout(cache: Any, batch: int, length: int) -> None:
    """Refuse a cache this module cannot pad and slice (sliding-window, quantized, fused or transposed layouts)."""
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", ())}
    if kinds - {"DynamicLayer"}:
        raise ConfigError(
            f"the portable engine needs a plain dynamic KV cache; this model uses {sorted(kinds)}: use "
            "option.generation_engine=continuous"
        )
    for keys, values in layers(cache):
        for tensor in (keys, values):
            if tensor.dim() != 4 or tensor.size(0) != batch or tensor.size(2) != length:
                raise ConfigError(
                    f"the portable engine needs KV tensors shaped (batch, heads, sequence, head_dim); "
                    f"this model's are {tuple(tensor.shape)}: use option.generation_engine=continuous"
                )


class DecodeBatch:
    """Left-padded rows: the attention mask (1 = real token), the KV cache and each row's next input token."""

    def __init__(self, mask: torch.Tensor, cache: Any, next_tokens: torch.Tensor) -> None:
        self.mask = mask
        self.cache = cache
        self.next_tokens = next_tokens

    def __len__(self) -> int:
        return self.mask.size(0)

    @classmethod
    def prefill(
        cls,
        call: ModelCaller,
        prompts: list[list[int]],
        pad_id: int,
        device: torch.device,
        pasts: list[list[LayerKV] | None] | None = None,
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts (left-padded) through the model; the batch and each row's next-token logits. A row's
        `pasts` entry is the KV, per layer `(heads, tokens, head_dim)`, of tokens before its prompt (a cached
        prefix, or the chunks already prefilled): those columns come first, each row's left-padded apart."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            mask[row, width - len(prompt) :] = 1
        known = [past for past in pasts or () if past is not None]
        cache = None
        if known:
            past_mask, tensors = _stack_pasts(pasts or [], known[0])
            mask, cache = torch.cat([past_mask, mask], dim=1), call.cache_of(tensors)
        logits, cache = call(ids, mask, cache)
        return cls(mask, cache, ids[:, -1:]), logits

    @classmethod
    def of_prompts(cls, caches: list[Any], lengths: list[int], call: ModelCaller) -> DecodeBatch:
        """Rows over prompts prefilled each into a cache of its own (one row, `lengths[i]` tokens, no padding),
        left-padded to one width (one prompt's cache is taken as it is); their next tokens yet unset."""
        width = max(lengths)
        device = layers(caches[0])[0][0].device
        mask = torch.zeros((len(caches), width), dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        if len(caches) == 1:
            return cls(mask, caches[0], mask[:, -1:])
        tensors = []
        for layer in zip(*(layers(cache) for cache in caches)):  # one layer's (keys, values) of every prompt
            keys = torch.cat([_pad_left(k, width, 2) for k, _ in layer])
            values = torch.cat([_pad_left(v, width, 2) for _, v in layer])
            tensors.append((keys, values))
        return cls(mask, call.cache_of(tensors), mask[:, -1:])

    def row_kv(self, row: int) -> list[LayerKV]:
        """One row's KV per layer `(heads, tokens, head_dim)`, its padding left out, oldest token first."""
        columns = self.mask[row].nonzero().squeeze(-1)
        return [(k[row].index_select(1, columns), v[row].index_select(1, columns)) for k, v in layers(self.cache)]

    def decode(self, call: ModelCaller) -> torch.Tensor:
        """One step for every row: feed `next_tokens`; returns the next-token logits."""
        self.grow()
        logits, self.cache = call(self.next_tokens, self.mask, self.cache)
        return logits

    def grow(self) -> None:
        """A column for the step about to run: every row's `next_tokens`."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)

    def trim(self, columns: int) -> None:
        """Keep the first `columns` columns: undo a `grow` (and whatever KV its step appended) of a failed pass."""
        self.mask = self.mask[:, :columns]
        self.cache = with_layers(self.cache, [(k[:, :, :columns], v[:, :, :columns]) for k, v in layers(self.cache)])

    def set_next_tokens(self, tokens: list[int]) -> None:
        self.next_tokens = torch.tensor(tokens, dtype=torch.long, device=self.mask.device).unsqueeze(-1)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then drop the columns that are padding in all of them."""
        if len(rows) == len(self):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        used = self.mask.index_select(0, index).any(dim=0).nonzero()
        start = int(used[0]) if len(rows) and used.numel() else self.mask.size(1)
        self.mask = self.mask.index_select(0, index)[:, start:]
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.cache = with_layers(
            self.cache,
            [
                (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                for k, v in layers(self.cache)
            ],
        )

    def extend(self, other: DecodeBatch) -> None:
        """Append `other`'s rows after this batch's; the shorter history is padded on the left."""
        width = max(self.mask.size(1), other.mask.size(1))
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)], dim=0)
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens], dim=0)
        self.cache = with_layers(
            self.cache,
            [
                (
                    torch.cat([_pad_left(k, width, 2), _pad_left(ok, width, 2)]),
                    torch.cat([_pad_left(v, width, 2), _pad_left(ov, width, 2)]),
                )
                for (k, v), (ok, ov) in zip(layers(self.cache), layers(other.cache))
            ],
        )


def _stack_pasts(pasts: list[list[LayerKV] | None], like: list[LayerKV]) -> tuple[torch.Tensor, list[LayerKV]]:
    """The rows' past KV as batch tensors, each row left-padded to the longest (a row without one: all padding),
    and the mask of those columns."""
    width = max(past[0][0].size(1) for past in pasts if past is not None)
    mask = torch.zeros((len(pasts), width), dtype=torch.long, device=like[0][0].device)
    for row, past in enumerate(pasts):
        if past is not None:
            mask[row, width - past[0][0].size(1) :] = 1
    tensors = []
    for layer, (keys, values) in enumerate(like):
        empty = keys[:, :0], values[:, :0]
        rows = [past[layer] if past is not None else empty for past in pasts]
        tensors.append(
            (
                torch.stack([_pad_left(k, width, 1) for k, _ in rows]),
                torch.stack([_pad_left(v, width, 1) for _, v in rows]),
            )
        )
    return mask, tensors


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.size(dim)
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
