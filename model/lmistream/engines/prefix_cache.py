"""PrefixCache: the portable engine's KV of prompt prefixes it has already computed, shared between requests.

A `PrefixIndex` (pure: block keys, longest match, LRU) names, per full block of `BLOCK_TOKENS` prompt tokens, a slot
of two pools on the model's device, one for keys and one for values, `(slots, layers, heads, block, head_dim)` each
(the engine caches only models whose layers all have one KV shape, `uniform_layers`). The pools are made whole at the
first store, a slot per block the capacity allows; a new block is written into a free slot or the one its eviction
frees, so storing copies a block once and never allocates, and the allocator sees no blocks come and go between the
decode steps' own tensors; reading a prefix back is one concatenation. The capacity in blocks is
`option.prefix_cache_bytes` over the bytes one block takes on this rank, which every tensor-parallel rank computes
alike (the heads divide evenly between them), so the ranks, executing the same plans, keep the same blocks and find
the same hits: each rank caches its own shard. A prompt takes the longest cached prefix of its blocks and prefills
the rest; once it is prefilled whole, its full blocks are stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import LayerKV, layers
from .prefix_index import BLOCK_TOKENS, PrefixIndex, block_keys

#: option.prefix_cache_bytes when not given
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


class PrefixCache:
    """Cached KV blocks of prompt prefixes, bounded by bytes; counts the prompt tokens asked for and found."""

    def __init__(self, capacity_bytes: int, token_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_bytes = token_bytes * block_tokens
        self._index: PrefixIndex[int] = PrefixIndex(capacity_bytes // self.block_bytes, block_tokens)
        self._pools: LayerKV | None = None  # keys and values, (slots, layers, heads, block, head_dim) each
        self._slots_used = 0

    @property
    def cached_bytes(self) -> int:
        return len(self._index) * self.block_bytes

    @property
    def hit_rate(self) -> float:
        return self._index.hit_rate

    def keys(self, prompt: Sequence[int]) -> list[bytes]:
        return block_keys(prompt, self._index.block_tokens)

    def match(self, keys: Sequence[bytes], prompt_tokens: int) -> list[LayerKV] | None:
        """The KV of the longest cached prefix of a prompt, per layer `(heads, tokens, head_dim)`; None on a miss."""
        slots = self._index.match(keys, prompt_tokens)
        if not slots:
            return None
        assert self._pools is not None  # a block was stored
        keys_, values = (torch.cat([pool[slot] for slot in slots], dim=2) for pool in self._pools)
        return list(zip(keys_.unbind(0), values.unbind(0)))

    def store(self, keys: Sequence[bytes], prompt_kv: list[LayerKV]) -> None:
        """Keep the full blocks of a prompt prefilled whole (`prompt_kv`: its KV per layer, all its tokens)."""
        size = self._index.block_tokens
        pools = self._pools or self._allocate(prompt_kv)

        def block(position: int, evicted: int | None) -> int:
            slot = self._next_slot() if evicted is None else evicted
            span = slice(position * size, (position + 1) * size)
            for pool, part in zip(pools, (0, 1)):
                torch.stack([layer[part][:, span] for layer in prompt_kv], out=pool[slot])
            return slot

        self._index.insert(keys, block)

    def _allocate(self, prompt_kv: list[LayerKV]) -> LayerKV:
        """Key and value pools of every slot the capacity allows, shaped after the prompt's KV (`torch.empty`: on
        CPU their pages are only taken as blocks are written)."""

        def pool(like: torch.Tensor) -> torch.Tensor:
            shape = (self._index.capacity, len(prompt_kv), like.size(0), self._index.block_tokens, like.size(2))
            return torch.empty(shape, dtype=like.dtype, device=like.device)

        keys, values = prompt_kv[0]
        self._pools = pool(keys), pool(values)
        return self._pools

    def _next_slot(self) -> int:
        self._slots_used += 1
        return self._slots_used - 1


def uniform_layers(cache: object) -> bool:
    """Whether every layer of this cache has keys of one shape and values of one shape (so blocks stack)."""
    tensors = layers(cache)
    return len({k.shape[1:] for k, _ in tensors}) == 1 and len({v.shape[1:] for _, v in tensors}) == 1
