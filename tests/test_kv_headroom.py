"""kv_headroom: appending in place holds exactly what transformers' concatenating `DynamicLayer` holds, across a
buffer's end and after the batch surgery replaces a layer's tensors; and the tiny model decodes the same logits through
`ModelCaller` with headroom layers as with its own cache. transformers with cache layers only: the LMI 0.23 tier's
4.30 keeps tuples, which `ModelCaller` leaves to the model (`test_portable_engine` covers the engine there)."""

from __future__ import annotations

import pytest
import torch

cache_utils = pytest.importorskip("transformers.cache_utils")
if not hasattr(cache_utils, "DynamicLayer"):
    pytest.skip("this transformers keeps tuples, not cache layers", allow_module_level=True)

from lmikit.embedded_model import ensure_tiny_model
from lmistream.engines.batch import DecodeBatch, ModelCaller, layers
from lmistream.engines.kv_headroom import HEADROOM_TOKENS, HeadroomLayer
from reference import DTYPE_KEYWORD
from transformers import AutoModelForCausalLM


def _states(generator: torch.Generator, batch: int = 2, tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, tokens, 8, generator=generator), torch.randn(batch, 3, tokens, 8, generator=generator)


def _both(ours: HeadroomLayer, theirs: object, states: tuple[torch.Tensor, torch.Tensor]) -> None:
    keys, values = ours.update(*states)
    expected_keys, expected_values = theirs.update(*states)  # type: ignore[attr-defined]
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    assert ours.get_seq_length() == theirs.get_seq_length()  # type: ignore[attr-defined]


def test_appends_equal_concatenation_across_the_buffer_end() -> None:
    generator = torch.Generator().manual_seed(0)
    ours, theirs = HeadroomLayer(), cache_utils.DynamicLayer()
    _both(ours, theirs, _states(generator, tokens=5))
    buffer = ours.keys.data_ptr()
    for step in range(HEADROOM_TOKENS + 3):
        _both(ours, theirs, _states(generator))
        # within the headroom a step writes into the same buffer; past it, one copy into a new one
        assert (ours.keys.data_ptr() == buffer) == (step < HEADROOM_TOKENS)


def test_tensors_replaced_by_the_surgery_are_copied_into_a_new_buffer() -> None:
    generator = torch.Generator().manual_seed(1)
    ours, theirs = HeadroomLayer(), cache_utils.DynamicLayer()
    _both(ours, theirs, _states(generator, tokens=4))
    # a row leaves (DecodeBatch.keep): both layers now hold a fresh tensor of one row
    for layer in (ours, theirs):
        layer.keys, layer.values = layer.keys[1:].clone(), layer.values[1:].clone()
    for _ in range(3):
        _both(ours, theirs, _states(generator, batch=1))


def test_the_model_decodes_alike_through_headroom_layers() -> None:
    model = AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model()), **{DTYPE_KEYWORD: torch.float32}).eval()
    call = ModelCaller(model)
    call.probe(torch.device("cpu"))
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(call, prompts, 0, torch.device("cpu"))
        assert {type(layer).__name__ for layer in batch.cache.layers} == {"HeadroomLayer"}
        mask, cache = batch.mask, cache_utils.DynamicCache()
        for layer, (keys, values) in enumerate(layers(batch.cache)):
            cache.update(keys.clone(), values.clone(), layer)
        assert {type(layer) for layer in cache.layers} == {cache_utils.DynamicLayer}
        for _ in range(HEADROOM_TOKENS + 2):
            tokens = logits.argmax(-1).tolist()
            batch.set_next_tokens(tokens)
            logits = batch.decode(call)
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            plain, cache = call(batch.next_tokens, mask, cache)
            assert torch.allclose(logits, plain, atol=1e-5)
