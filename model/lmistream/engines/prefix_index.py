"""PrefixIndex: which prompt prefixes have their KV cached, by fixed-size token blocks, with LRU eviction. Pure.

A prompt is cut into blocks of `block_tokens` tokens; each full block is named by a hash chain (`block_keys`): the
key of block i hashes block i's tokens with the key of block i-1, so one key names a whole prefix, as vLLM's
automatic prefix caching does. The index maps keys to whatever the engine stores per block (its KV tensors) and
holds at most `capacity` blocks. Every use touches a block's whole chain, deepest block first, so a block is always
more recently used than its descendants: eviction takes leaves first and the stored keys stay closed under
prefixes (a cached block's parent is cached). Nothing here reads a clock or a memory size: the same operations in the
same order give the same index, which is what keeps tensor-parallel ranks, each holding its own shard, in agreement.
Written here because the engine's cache holds tensors of its own layout that no general cache library knows.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable, Generic, TypeVar

Value = TypeVar("Value")
#: tokens per block (vLLM's default block size)
BLOCK_TOKENS = 16


def block_keys(token_ids: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[bytes]:
    """The chain keys of the full blocks of `token_ids` (a trailing partial block has none)."""
    keys: list[bytes] = []
    parent = b""
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        block = array("q", token_ids[start : start + block_tokens]).tobytes()
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        keys.append(parent)
    return keys


def reusable_blocks(prompt_tokens: int, block_tokens: int = BLOCK_TOKENS) -> int:
    """The most blocks a prompt may take from the cache: its last token is always computed, for its logits."""
    return max(prompt_tokens - 1, 0) // block_tokens


class PrefixIndex(Generic[Value]):
    """Cached blocks by chain key, least recently used first; counts the prompt tokens asked for and found."""

    def __init__(self, capacity: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.capacity = capacity
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[bytes, Value] = OrderedDict()
        self.prompt_tokens = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def match(self, keys: Sequence[bytes], prompt_tokens: int) -> list[Value]:
        """The stored values of the longest cached prefix of a prompt (its chain `keys`), at most
        `reusable_blocks(prompt_tokens)` blocks; the match counts as a use, and in the hit rate."""
        found: list[Value] = []
        for key in keys[: reusable_blocks(prompt_tokens, self.block_tokens)]:
            value = self._blocks.get(key)
            if value is None:
                break
            found.append(value)
        self._touch(keys[: len(found)])
        self.prompt_tokens += prompt_tokens
        self.hit_tokens += len(found) * self.block_tokens
        return found

    def insert(self, keys: Sequence[bytes], value_of: Callable[[int, Value | None], Value]) -> None:
        """Store the blocks of the chain `keys` not stored yet, evicting the least recently used blocks of other
        chains first: `value_of(i, evicted)` makes block i's value, given the value of the block it evicts (None
        while the index has room), whose storage it may reuse. A chain longer than the capacity keeps its first
        blocks."""
        chain = keys[: self.capacity]
        self._touch(chain)
        for position, key in enumerate(chain):
            if key not in self._blocks:
                evicted = self._blocks.popitem(last=False)[1] if len(self._blocks) >= self.capacity else None
                self._blocks[key] = value_of(position, evicted)
        self._touch(chain)

    def _touch(self, chain: Sequence[bytes]) -> None:
        """Mark a chain used, deepest block first, so that each block ends more recent than its descendants."""
        for key in reversed(chain):
            if key in self._blocks:
                self._blocks.move_to_end(key)
