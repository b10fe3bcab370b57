"""PrefixCache: the portable engine's KV of prompt prefixes it has already computed, shared between requests.

A `PrefixIndex` (pure: block keys, longest match, LRU) holds, per full block of `BLOCK_TOKENS` prompt tokens, that
block's keys and values in every layer, as `(heads, block, head_dim)` tensors on the model's device. Its capacity in
blocks is `option.prefix_cache_bytes` over the bytes one block takes on this rank, which every tensor-parallel rank
computes alike (the heads divide evenly between them), so the ranks, executing the same plans, keep the same blocks
and find the same hits: each rank caches its own shard. A prompt takes the longest cached prefix of its blocks and
prefills the rest; once it is prefilled whole, its full blocks are stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import LayerKV
from .prefix_index import BLOCK_TOKENS, PrefixIndex, block_keys

#: option.prefix_cache_bytes when not given
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


class PrefixCache:
    """Cached KV blocks of prompt prefixes, bounded by bytes; counts the prompt tokens asked for and found."""

    def __init__(self, capacity_bytes: int, token_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_bytes = token_bytes * block_tokens
        self._index: PrefixIndex[list[LayerKV]] = PrefixIndex(capacity_bytes // self.block_bytes, block_tokens)

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
        return [
            (
                torch.cat([block[layer][0] for block in blocks], dim=1),
                torch.cat([block[layer][1] for block in blocks], 1),
            )
            for layer in range(len(blocks[0]))
        ]

    def store(self, keys: Sequence[bytes], prompt_kv: list[LayerKV]) -> None:
        """Keep the full blocks of a prompt prefilled whole (`prompt_kv`: its KV per layer, all its tokens)."""
        size = self._index.block_tokens

        def block(position: int) -> list[LayerKV]:
            span = slice(position * size, (position + 1) * size)
            return [(k[:, span].clone(), v[:, span].clone()) for k, v in prompt_kv]

        self._index.insert(keys, block)
