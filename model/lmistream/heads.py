"""The tensor-parallel rule on attention heads: every head count a model's config gives must divide by the degree.

Pure, no torch: the handler applies it to the loaded config before sharding, and `lmi build` to the config.json of
a local model, so both read the same keys (the names differ between model families).
"""

from __future__ import annotations

from collections.abc import Callable

#: the config keys of query and key/value head counts across model families
HEAD_KEYS = ("num_attention_heads", "num_key_value_heads", "n_head", "num_kv_heads", "n_head_kv")


def undivided_heads(read: Callable[[str], object | None], degree: int) -> list[str]:
    """`key=count` for each head count `read(key)` gives that `degree` does not divide."""
    counts = {key: read(key) for key in HEAD_KEYS}
    return [f"{key}={count}" for key, count in counts.items() if isinstance(count, int) and count % degree]


def heads_error(degree: int, undivided: list[str]) -> str:
    """The message naming the option and each head count it does not divide."""
    return f"option.tensor_parallel_degree={degree} does not divide the model's {' and '.join(undivided)}"
