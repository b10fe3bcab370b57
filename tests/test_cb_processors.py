"""The row-skipping top-k / top-p processors of ContinuousBatchingEngine give transformers' per-request results, row for row."""

from __future__ import annotations

import pytest
import torch
from lmistream.engines.cb_processors import _RowwiseTopK, _RowwiseTopP, use_rowwise_processors
from transformers import TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)

VOCAB = 4096


def _scores(rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(rows, VOCAB, generator=generator) * 3
    scores[:, :8] = scores[:, :8].max(dim=-1, keepdim=True).values  # ties at the top of every row
    return scores


def _processors(base_k: int = 50, base_p: float = 0.9) -> list:
    processors = [
        ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(base_k)),
        ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(base_p)),
    ]
    use_rowwise_processors(processors)
    return processors


def test_processors_are_swapped_in_place_with_their_settings() -> None:
    top_k, top_p = _processors()
    assert type(top_k) is _RowwiseTopK and top_k.top_k == 50 and top_k.filter_value == -float("inf")
    assert type(top_p) is _RowwiseTopP and top_p.top_p == 0.9 and top_p.min_tokens_to_keep == 1


def test_top_k_matches_the_sort_based_processor() -> None:
    scores = _scores(6)
    ks = torch.tensor([1, 50, VOCAB, VOCAB + 7, 3, 1], dtype=torch.int32)  # greedy, sampled, neutral, ties
    reference = ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(50))(scores.clone(), ks)
    fast, _ = _processors()
    assert torch.equal(fast(scores.clone(), ks), reference)


def test_top_p_matches_the_sort_based_processor() -> None:
    scores = _scores(4)
    ps = torch.tensor([0.9, 1.0, 0.5, 1.0], dtype=torch.float32).view(torch.int32)
    reference = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(0.9))(scores.clone(), ps)
    _, fast = _processors()
    result = fast(scores.clone(), ps)
    assert torch.equal(result[[0, 2]], reference[[0, 2]])
    # top_p = 1 rows are left as they are: the sampling distribution is the same
    assert torch.equal(result[[1, 3]], scores[[1, 3]])
    assert torch.allclose(result.softmax(-1), reference.softmax(-1))


def test_all_neutral_rows_are_returned_untouched() -> None:
    scores = _scores(3)
    top_k, top_p = _processors()
    assert top_k(scores, torch.full((3,), VOCAB, dtype=torch.int32)) is scores
    assert top_p(scores, torch.ones(3).view(torch.int32)) is scores


@pytest.mark.integration
def test_a_cpu_engine_runs_with_the_row_skipping_processors() -> None:
    from lmikit.embedded_model import ensure_tiny_model
    from lmistream.config import HandlerConfig
    from lmistream.engines.continuous import ContinuousBatchingEngine

    engine = ContinuousBatchingEngine(
        HandlerConfig.from_properties({"model_id": str(ensure_tiny_model()), "max_rolling_batch_size": "2"})
    )
    engine.start(lambda update: None)
    try:
        kinds = {type(p) for p in engine.logits_processors}
    finally:
        engine.stop()
    assert {_RowwiseTopK, _RowwiseTopP} <= kinds
    assert not kinds & {ContinuousBatchingTopKLogitsWarper, ContinuousBatchingTopPLogitsWarper}
