"""HeadroomLayer: a transformers cache layer whose keys and values grow in place, for the portable engine's decode.

transformers' `DynamicLayer` appends a step's KV with `torch.cat`, which copies the layer's whole cache for every
token: at 16 rows of 1,500 tokens on SmolLM2 that is about a gigabyte copied per decode step, which on a CPU costs
more than the step's arithmetic. A `HeadroomLayer` keeps its keys and values in buffers with room for
`HEADROOM_TOKENS` more columns and appends by writing into them; `keys` and `values` stay views of the columns in
use, so whatever reads a `DynamicLayer` (the model's attention, the batch surgery in `batch`) reads it unchanged. When
the surgery replaces a layer's tensors (rows join or leave), the next append copies them into fresh buffers, once.
Written here because transformers' growing cache is the copying one and its `StaticCache` sizes every row for the
model's maximum length up front, which a rolling batch of rows of every length cannot afford. Only for transformers
with cache layers (`adopt` returns other caches as they are: the tuples of 4.30, LMI 0.23, grow as the model grows
them).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

#: columns a buffer holds beyond the tokens it was made for: one buffer copy per this many decode steps
HEADROOM_TOKENS = 64


class HeadroomLayer(DynamicLayer):
    """A `DynamicLayer` that appends into buffers with spare columns instead of concatenating."""

    #: the key and value buffers whose first columns `keys` and `values` view; None until the first append
    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held_keys, held_values = self.keys, self.values
        assert held_keys is not None and held_values is not None  # set by lazy_initialization
        held = held_keys.size(-2) if held_keys.dim() == 4 else 0  # an uninitialized layer holds an empty 1-D tensor
        length = held + key_states.size(-2)
        buffers = self._buffers
        if buffers is None or not _views_of(buffers, (held_keys, held_values), length):
            buffers = _with_room(held_keys, key_states, length), _with_room(held_values, value_states, length)
            self._buffers = buffers
        keys, values = buffers
        keys[:, :, held:length] = key_states
        values[:, :, held:length] = value_states
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        return self.keys, self.values


def _views_of(buffers: tuple[torch.Tensor, ...], held: tuple[torch.Tensor, ...], length: int) -> bool:
    """Whether the held tensors are still views of these buffers (no surgery replaced them) and the buffers hold
    `length` columns."""
    return all(
        tensor.data_ptr() == buffer.data_ptr()
        and tensor.shape[:2] == buffer.shape[:2]
        and tensor.stride() == buffer.stride()
        and buffer.size(2) >= length
        for tensor, buffer in zip(held, buffers)
    )


def _with_room(held: torch.Tensor, new: torch.Tensor, length: int) -> torch.Tensor:
    """A buffer for `length` columns and the headroom, shaped as `new` along the other dimensions, holding `held`."""
    batch, heads, _, width = new.shape
    buffer = new.new_empty((batch, heads, length + HEADROOM_TOKENS, width))
    if held.dim() == 4:
        buffer[:, :, : held.size(2)] = held
    return buffer


def adopt(cache: Any) -> Any:
    """This cache with each plain `DynamicLayer` made a `HeadroomLayer` holding the same tensors; a cache of any other
    kind as it is."""
    if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return cache
    cache.layers = [_headroom_layer(layer) for layer in cache.layers]
    return cache


def _headroom_layer(layer: DynamicLayer) -> HeadroomLayer:
    adopted = HeadroomLayer()  # type: ignore[no-untyped-call]  # transformers leaves its __init__ untyped
    keys, values = layer.keys, layer.values
    if layer.is_initialized and keys is not None and values is not None:
        adopted.lazy_initialization(keys, values)
        adopted.keys, adopted.values = keys, values
    return adopted
