"""packed_attention: one forward pass over the decode batch's rows and a chunk of a prompt, for chunked prefill.

A chunk prefilled in a pass of its own costs the running rows a second pass per step, and on a CPU a pass has a
fixed part (the whole model's weights streamed once, the small matrix products) about as large as the 16-row decode
step itself, so their inter-token latency doubles whatever the chunk's size. Packed, the rows' newest tokens and the
chunk's tokens go through the model's layers as one sequence of `rows + chunk` tokens, and only attention runs apart:
the attention function registered here with transformers' `AttentionInterface` splits each layer's queries, keys and
values, appends the keys and values to each part's own cache in place (the batch's left-padded rows, the prompt's one
row: `kv_headroom` layers) and runs SDPA on each part with its mask: transformers' own for the rows' single positions,
and for the chunk torch's with grouped query heads folded into positions (transformers copies the keys per query head
there, which over a long prompt costs more than the arithmetic).

Written here because transformers' attention over packed sequences is flash-attention's (GPUs only) or its paged
continuous batching's, neither of which reads the portable engine's left-padded dynamic cache. Only where transformers
has the interface, the model dispatches its attention through it and nothing else in a layer mixes positions
(`supports_packing`); elsewhere (LMI 0.23's transformers 4.30) a chunk keeps a pass of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .batch import DecodeBatch

#: the name the attention function is registered under; a model's configs name it only during a packed pass
NAME = "lmistream_packed"
#: the keyword argument of the model's forward that carries the pass's `_Parts` to every attention layer
PARTS_ARG = "lmistream_parts"


@dataclass
class _Parts:
    """What each layer's attention needs to split a packed pass: the decode rows' cache and mask, the prompt's."""

    rows: int
    rows_cache: Any
    rows_mask: torch.Tensor | None  # (rows, 1, 1, columns) bool, the new column included
    chunk_cache: Any
    #: (1, 1, groups * chunk, known + chunk) additive: causal after the tokens already known, tiled once per pass for
    #: the query heads each key head serves (`_chunk_attention`)
    chunk_mask: torch.Tensor


def supports_packing(model: Any, cache: Any) -> bool:
    """Whether this model can run packed passes over caches like `cache` (the one it made at load): transformers'
    attention interface, a model that dispatches through it and takes position ids and a tensor of logits to keep,
    a cache of layers, and no sliding window or logit soft-capping (which the masks here do not apply)."""
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: F401
        from transformers.modeling_utils import AttentionInterface  # noqa: F401
    except ImportError:
        return False
    config = getattr(model.config, "text_config", None) or model.config
    accepted = inspect.signature(model.forward).parameters
    return bool(
        getattr(model, "_supports_attention_backend", False)
        and {"position_ids", "logits_to_keep"} <= accepted.keys()
        and hasattr(cache, "layers")
        and getattr(config, "sliding_window", None) is None
        and getattr(config, "attn_logit_softcapping", None) is None
    )


class PackedPass:
    """Runs packed passes over one model: registers the attention function once, and switches the model's configs to
    it for the length of each pass."""

    def __init__(self, model: Any) -> None:
        from transformers import PretrainedConfig
        from transformers.modeling_utils import AttentionInterface

        AttentionInterface.register(NAME, _packed_attention)
        self.model = model
        config = getattr(model.config, "text_config", None) or model.config
        self._groups = config.num_attention_heads // (
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        )
        self._configs = list(
            {
                id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)
            }.values()
        )

    def __call__(
        self, batch: DecodeBatch | None, chunk: list[int], chunk_cache: Any, known: int, last: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Decode every row of `batch` once and prefill `chunk` (the prompt's tokens after its first `known`, whose KV
        `chunk_cache` holds and which the chunk's is appended to). Returns the rows' next-token logits (None without a
        batch) and, for the prompt's `last` chunk, its next-token logits."""
        device = self.model.device
        rows = len(batch) if batch is not None else 0
        positions = torch.arange(known, known + len(chunk), device=device)
        ids = torch.tensor(chunk, dtype=torch.long, device=device)
        rows_mask = None
        if batch is not None:
            batch.grow()
            rows_mask = batch.mask.bool()[:, None, None, :]
            positions = torch.cat([batch.mask.sum(-1) - 1, positions])
            ids = torch.cat([batch.next_tokens.squeeze(-1), ids])
        chunk_mask = self._chunk_mask(known, len(chunk))
        keep = torch.arange(rows, device=device)
        if last:
            keep = torch.cat([keep, keep.new_tensor([rows + len(chunk) - 1])])
        parts = _Parts(rows, batch.cache if batch is not None else None, rows_mask, chunk_cache, chunk_mask)
        with self._packed():
            output = self.model(
                input_ids=ids[None],
                position_ids=positions[None],
                use_cache=False,
                return_dict=True,
                logits_to_keep=keep,
                **{PARTS_ARG: parts},
            )
        logits = output.logits[0]
        return (logits[:rows] if rows else None), (logits[rows] if last else None)

    def _chunk_mask(self, known: int, chunk: int) -> torch.Tensor:
        """The chunk's additive causal mask, built once per pass rather than per layer: SDPA reads a float mask a
        little faster than a boolean one, and a layer's tiling of it would write it once more per layer."""
        columns = torch.arange(known + chunk, device=self.model.device)
        visible = columns[None, :] <= columns[known:, None]
        mask = torch.zeros(visible.shape, dtype=self.model.dtype, device=visible.device)
        mask.masked_fill_(~visible, torch.finfo(mask.dtype).min)
        return mask.repeat(self._groups, 1)[None, None]

    @contextmanager
    def _packed(self) -> Iterator[None]:
        saved = [config._attn_implementation_internal for config in self._configs]
        for config in self._configs:
            config._attn_implementation_internal = NAME
        try:
            yield
        finally:
            for config, implementation in zip(self._configs, saved):
                config._attn_implementation_internal = implementation


def _packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """One layer's attention over a packed pass: (1, heads, rows + chunk, dim) in, (1, rows + chunk, heads, dim) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    parts: _Parts = kwargs.pop(PARTS_ARG)
    layer, rows = module.layer_idx, parts.rows
    outputs = []
    if rows:
        row_keys, row_values = parts.rows_cache.layers[layer].update(
            _as_rows(key[:, :, :rows]), _as_rows(value[:, :, :rows])
        )
        row_output, _ = sdpa_attention_forward(
            module, _as_rows(query[:, :, :rows]), row_keys, row_values, parts.rows_mask, **kwargs
        )
        outputs.append(row_output.transpose(0, 1))  # (rows, 1, heads, dim) -> (1, rows, heads, dim)
    chunk_keys, chunk_values = parts.chunk_cache.layers[layer].update(key[:, :, rows:], value[:, :, rows:])
    outputs.append(
        _chunk_attention(query[:, :, rows:], chunk_keys, chunk_values, parts.chunk_mask, kwargs.get("scaling"))
    )
    return torch.cat(outputs, dim=1), None


def _chunk_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """The chunk's attention with each key head's query heads folded into its query positions, so that grouped-query
    attention reads the keys once instead of copying them per query head (`repeat_kv`, as transformers does for more
    than one query position); `mask` is already tiled for the folded positions. (1, heads, chunk, dim) in,
    (1, chunk, heads, dim) out."""
    _, heads, chunk, dim = query.shape
    kv_heads = keys.size(1)
    groups = heads // kv_heads
    folded = query.reshape(1, kv_heads, groups * chunk, dim)
    output = torch.nn.functional.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=scaling)
    return output.reshape(1, heads, chunk, dim).transpose(1, 2)


def _as_rows(packed: torch.Tensor) -> torch.Tensor:
    """(1, heads, rows, dim) -> (rows, heads, 1, dim): each decode row's one token as a batch row."""
    return packed[0].transpose(0, 1).unsqueeze(2)
