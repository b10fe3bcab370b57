"""PrefixCache: the portable engine's KV of prompt prefixes it has already computed, shared between requests.

A `PrefixIndex` (pure: block keys, longest match, LRU) holds, per full block of `BLOCK_TOKENS` prompt tokens, that
block's keys and values in every layer, as two `(layers, heads, block, head_dim)` tensors on the model's device (one
copy per block to store, one concatenation per prefix to read back; the engine caches only models whose layers all
have one KV shape, `uniform_layers`). Its capacity in
blocks is `option.prefix_cache_bytes` over the bytes one block takes on this rank, which every tensor-parallel rank
computes alike (the heads divide evenly between them), so the ranks, executing the same plans, keep the same blocks
and find the same hits: each rank caches its own shard. A prompt takes the longest cached prefix of its blocks and
prefills the rest; once it is prefilled whole, its full blocks are stored.
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
        self._index: PrefixIndex[LayerKV] = PrefixIndex(capacity_bytes // self.block_bytes, block_tokens)

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
        blocks = self._index.match(keys, prompt_tokens)
        if not blocks:
            return None
        keys_, values = (torch.cat([block[part] for block in blocks], dim=2) for part in (0, 1))
        return list(zip(keys_.unbind(0), values.unbind(0)))

    def store(self, keys: Sequence[bytes], prompt_kv: list[LayerKV]) -> None:
        """Keep the full blocks of a prompt prefilled whole (`prompt_kv`: its KV per layer, all its tokens)."""
        size = self._index.block_tokens

        def block(position: int) -> LayerKV:
            span = slice(position * size, (position + 1) * size)
            return torch.stack([k[:, span] for k, _ in prompt_kv]), torch.stack([v[:, span] for _, v in prompt_kv])

        self._index.insert(keys, block)


def uniform_layers(cache: object) -> bool:
    """Whether every layer of this cache has keys of one shape and values of one shape (so blocks stack)."""
    tensors = layers(cache)
    return len({k.shape[1:] for k, _ in tensors}) == 1 and len({v.shape[1:] for _, v in tensors}) == 1
