"""packed_attention: one forward pass over the decode batch's rows and the prompts joining it, without padding.

A prompt prefilled in a pass of its own costs the running rows a second pass per step, and on a CPU a pass has a
fixed part (the whole model's weights streamed once, the small matrix products) about as large as the 16-row decode
step itself, so their inter-token latency doubles whatever the prompt's size. Several prompts prefilled together in a
rectangular batch pay for their padding, and transformers copies the keys of a grouped-query model per query head
there (`repeat_kv`), which over a long cached prefix costs more than the arithmetic. Packed, the rows' newest tokens
and each prompt's segment (the whole of its uncached part, or a chunk of it) go through the model's layers as one
sequence, and only attention runs apart: the attention function registered here with transformers'
`AttentionInterface` splits each layer's queries, keys and values, appends the keys and values to each part's own
cache in place (the batch's left-padded rows, each prompt's one row: `kv_headroom` layers) and runs SDPA on each part
with its mask: transformers' own for the rows' single positions, and for a segment torch's with grouped query heads
folded into positions, so the keys are read once.

Written here because transformers' attention over packed sequences is flash-attention's (GPUs only) or its paged
continuous batching's, neither of which reads the portable engine's left-padded dynamic cache. Only where transformers
has the interface, the model dispatches its attention through it and nothing else in a layer mixes positions
(`supports_packing`); elsewhere (LMI 0.23's transformers 4.30) prompts are prefilled in passes of their own.
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
class Segment:
    """A prompt's part of a packed pass: its `tokens` after the `known` ones whose KV `cache` holds (theirs is
    appended to it); `last` when they end the prompt, whose next-token logits the pass then returns."""

    tokens: list[int]
    cache: Any
    known: int
    last: bool


@dataclass
class _Parts:
    """What each layer's attention needs to split a packed pass: the decode rows' cache and mask, and per segment its
    length, cache and mask."""

    rows: int
    rows_cache: Any
    rows_mask: torch.Tensor | None  # (rows, 1, 1, columns) bool, the new column included
    #: per segment: its tokens, its cache, and its (1, 1, groups * tokens, known + tokens) additive mask, causal
    #: after the tokens already known and tiled once per pass for the query heads each key head serves
    segments: list[tuple[int, Any, torch.Tensor]]


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
        self, batch: DecodeBatch | None, segments: list[Segment]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """Decode every row of `batch` once and prefill each segment. Returns the rows' next-token logits (None
        without a batch) and, per segment, the next-token logits of its prompt where it is the `last` (else None)."""
        device = self.model.device
        rows = len(batch) if batch is not None else 0
        positions = [torch.arange(s.known, s.known + len(s.tokens), device=device) for s in segments]
        ids = [torch.tensor(s.tokens, dtype=torch.long, device=device) for s in segments]
        rows_mask = None
        if batch is not None:
            batch.grow()
            rows_mask = batch.mask.bool()[:, None, None, :]
            positions.insert(0, batch.mask.sum(-1) - 1)
            ids.insert(0, batch.next_tokens.squeeze(-1))
        masks: dict[tuple[int, int], torch.Tensor] = {}  # segments alike share one
        parts = _Parts(rows, batch.cache if batch is not None else None, rows_mask, [])
        keep, end = list(range(rows)), rows
        for segment in segments:
            shape = (segment.known, len(segment.tokens))
            if shape not in masks:
                masks[shape] = self._segment_mask(*shape)
            mask = masks[shape]
            parts.segments.append((len(segment.tokens), segment.cache, mask))
            end += len(segment.tokens)
            if segment.last:
                keep.append(end - 1)
        with self._packed():
            output = self.model(
                input_ids=torch.cat(ids)[None],
                position_ids=torch.cat(positions)[None],
                use_cache=False,
                return_dict=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device),
                **{PARTS_ARG: parts},
            )
        logits = output.logits[0]
        lasts = iter(logits[rows:])
        return (logits[:rows] if rows else None), [next(lasts) if segment.last else None for segment in segments]

    def _segment_mask(self, known: int, tokens: int) -> torch.Tensor:
        """A segment's additive causal mask, built once per pass rather than per layer: SDPA reads a float mask a
        little faster than a boolean one, and a layer's tiling of it would write it once more per layer."""
        columns = torch.arange(known + tokens, device=self.model.device)
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
    """One layer's attention over a packed pass: (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
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
    start = rows
    for length, cache, mask in parts.segments:
        span = slice(start, start + length)
        keys, values = cache.layers[layer].update(key[:, :, span], value[:, :, span])
        outputs.append(_segment_attention(query[:, :, span], keys, values, mask, kwargs.get("scaling")))
        start += length
    return torch.cat(outputs, dim=1), None


def _segment_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """A segment's attention with each key head's query heads folded into its query positions, so that grouped-query
    attention reads the keys once instead of copying them per query head (`repeat_kv`, as transformers does for more
    than one query position); `mask` is already tiled for the folded positions. (1, heads, tokens, dim) in,
    (1, tokens, heads, dim) out."""
    _, heads, tokens, dim = query.shape
    kv_heads = keys.size(1)
    groups = heads // kv_heads
    folded = query.reshape(1, kv_heads, groups * tokens, dim)
    output = torch.nn.functional.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=scaling)
    return output.reshape(1, heads, tokens, dim).transpose(1, 2)


def _as_rows(packed: torch.Tensor) -> torch.Tensor:
    """(1, heads, rows, dim) -> (rows, heads, 1, dim): each decode row's one token as a batch row."""
    return packed[0].transpose(0, 1).unsqueeze(2)
