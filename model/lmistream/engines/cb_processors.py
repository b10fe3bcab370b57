"""Row-skipping replacements for transformers' per-request top-k / top-p processors of continuous batching.

Transformers' per-request top-k and top-p processors sort every row of the logits (the whole vocabulary, for every
request, greedy ones included) at each step, which on a CPU can cost more than a small model's decode step.
`_RowwiseTopK` / `_RowwiseTopP` replace them with exact equivalents that skip the rows where the setting is neutral
and find the top-k threshold with `torch.topk`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)


class _RowwiseTopK(ContinuousBatchingTopKLogitsWarper):
    """Per-request top-k without sorting the vocabulary: rows with top_k >= vocab are left alone, the others get their
    k-th largest score from one `torch.topk` (k = the largest top_k among them; greedy rows need only k = 1). The
    threshold and the mask (`score < threshold`, ties kept) are the ones transformers computes with a full sort."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_k = tensor_arg[: scores.size(0)].clamp(max=scores.size(-1))
        rows = (top_k < scores.size(-1)).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return scores
        k = top_k[rows].long().unsqueeze(-1)
        selected = scores[rows]
        largest = torch.topk(selected, int(k.max()), dim=-1).values  # sorted descending
        thresholds = largest.gather(-1, k - 1)
        return scores.index_put((rows,), selected.masked_fill(selected < thresholds, self.filter_value))


class _RowwiseTopP(ContinuousBatchingTopPLogitsWarper):
    """Per-request top-p on the rows with top_p < 1 only (transformers' sort-based code, on those rows). With top_p = 1
    it would only mask tokens whose probability is already 0, which sampling never picks."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        rows = (top_p < 1.0).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return scores
        return scores.index_put((rows,), super().__call__(scores[rows], tensor_arg[rows]))


def use_rowwise_processors(processors: list[Any]) -> None:
    """Swap the manager's per-request top-k / top-p processors (in place) for the row-skipping versions, keeping their
    settings and their positions (each owns one row of the manager's per-request argument tensor)."""
    replacements: dict[type[Any], type[Any]] = {
        ContinuousBatchingTopKLogitsWarper: _RowwiseTopK,
        ContinuousBatchingTopPLogitsWarper: _RowwiseTopP,
    }
    for index, processor in enumerate(processors):
        cheaper = replacements.get(type(processor))
        if cheaper is not None:
            replacement = object.__new__(cheaper)
            replacement.__dict__.update(vars(processor))
            processors[index] = replacement
