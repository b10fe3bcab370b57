"""packed_attention: one pass over a decode batch's rows and prompts' segments gives the logits, and leaves the KV, of
the passes it replaces (the rows' decode step, each segment's prefill), with and without rows, from a prompt's start
and after tokens already known, for one segment and for several of different lengths; on a grouped-query model (heads
folded over each segment) and on the tiny trained one. transformers with the attention interface and cache layers
only: elsewhere (the LMI 0.23 tier) the engine prefills in passes of its own, and `supports_packing` says so."""

from __future__ import annotations

import copy

import pytest
import torch

cache_utils = pytest.importorskip("transformers.cache_utils")
if not hasattr(cache_utils, "DynamicLayer"):
    pytest.skip("this transformers keeps tuples, not cache layers", allow_module_level=True)

from lmikit.embedded_model import ensure_tiny_model
from lmistream.engines.batch import DecodeBatch, ModelCaller, layers
from lmistream.engines.packed_attention import PackedPass, Segment, supports_packing
from reference import DTYPE_KEYWORD
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

CPU = torch.device("cpu")


def _grouped_query_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def _tiny_model() -> object:
    return AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model()), **{DTYPE_KEYWORD: torch.float32}).eval()


@pytest.fixture(scope="module", params=["grouped-query", "tiny"])
def model(request: pytest.FixtureRequest) -> object:
    return _grouped_query_model() if request.param == "grouped-query" else _tiny_model()


def _caller(model: object) -> ModelCaller:
    call = ModelCaller(model)
    call.probe(CPU)
    return call


def _prompt(generator: torch.Generator, length: int) -> list[int]:
    return torch.randint(3, 90, (length,), generator=generator).tolist()


@pytest.mark.parametrize("rows", [0, 3])
@pytest.mark.parametrize("known", [0, 21])
def test_a_packed_pass_equals_the_decode_step_and_the_chunk_prefill_apart(model, rows: int, known: int) -> None:
    call, generator = _caller(model), torch.Generator().manual_seed(rows + known)
    assert supports_packing(model, call.template)
    packed = PackedPass(model)
    prompt = _prompt(generator, known + 9)
    with torch.inference_mode():
        batch = None
        if rows:  # rows of different lengths, left-padded, one decode step already taken
            batch, logits = DecodeBatch.prefill(call, [_prompt(generator, n) for n in (7, 12, 4)][:rows], 0, CPU)
            batch.set_next_tokens(logits.argmax(-1).tolist())
            batch.set_next_tokens(batch.decode(call).argmax(-1).tolist())
        chunk_cache = call.empty_cache()
        if known:
            _, chunk_cache = call(torch.tensor([prompt[:known]]), torch.ones((1, known), dtype=torch.long), None)
        expected_batch, expected_chunk_cache = copy.deepcopy(batch), copy.deepcopy(chunk_cache)
        expected_rows = expected_batch.decode(call) if expected_batch is not None else None
        mask = torch.ones((1, len(prompt)), dtype=torch.long)
        expected_chunk, expected_chunk_cache = call(torch.tensor([prompt[known:]]), mask, expected_chunk_cache)

        row_logits, (chunk_logits,) = packed(batch, [Segment(prompt[known:], chunk_cache, known, last=True)])

    assert chunk_logits is not None and torch.allclose(chunk_logits, expected_chunk[0], atol=1e-4)
    _assert_same_kv(chunk_cache, expected_chunk_cache)
    if rows:
        assert row_logits is not None and torch.allclose(row_logits, expected_rows, atol=1e-4)
        assert torch.equal(batch.mask, expected_batch.mask)
        _assert_same_kv(batch.cache, expected_batch.cache)
    else:
        assert row_logits is None


def test_a_chunk_before_the_prompts_end_returns_only_the_rows_logits(model) -> None:
    call, generator = _caller(model), torch.Generator().manual_seed(5)
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(call, [_prompt(generator, 6)], 0, CPU)
        batch.set_next_tokens(logits.argmax(-1).tolist())
        row_logits, (chunk_logits,) = PackedPass(model)(
            batch, [Segment(_prompt(generator, 8), call.empty_cache(), 0, False)]
        )
    assert chunk_logits is None and row_logits is not None and row_logits.shape[0] == 1
    # the model's own attention is back once the pass is over
    assert model.config._attn_implementation != "lmistream_packed"


def test_several_prompts_packed_with_the_rows_equal_their_prefills_apart(model) -> None:
    """Prompts of different lengths, from their start and after known tokens, in one pass with the rows' step: each
    gets the logits and the KV of its own prefill, and the rows theirs."""
    call, generator = _caller(model), torch.Generator().manual_seed(11)
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(call, [_prompt(generator, n) for n in (5, 9)], 0, CPU)
        batch.set_next_tokens(logits.argmax(-1).tolist())
        expected_batch = copy.deepcopy(batch)
        expected_rows = expected_batch.decode(call)
        segments, expected = [], []
        for known, length in ((0, 7), (13, 4), (6, 11)):
            prompt = _prompt(generator, known + length)
            cache = call.empty_cache()
            if known:
                _, cache = call(torch.tensor([prompt[:known]]), torch.ones((1, known), dtype=torch.long), None)
            alone = copy.deepcopy(cache)
            mask = torch.ones((1, len(prompt)), dtype=torch.long)
            expected.append(call(torch.tensor([prompt[known:]]), mask, alone))
            segments.append(Segment(prompt[known:], cache, known, last=True))
        row_logits, prompt_logits = PackedPass(model)(batch, segments)

    assert row_logits is not None and torch.allclose(row_logits, expected_rows, atol=1e-4)
    _assert_same_kv(batch.cache, expected_batch.cache)
    for segment, logits, (expected_logits, expected_cache) in zip(segments, prompt_logits, expected, strict=True):
        assert logits is not None and torch.allclose(logits, expected_logits[0], atol=1e-4)
        _assert_same_kv(segment.cache, expected_cache)


def _assert_same_kv(cache: object, expected: object) -> None:
    for (keys, values), (expected_keys, expected_values) in zip(layers(cache), layers(expected), strict=True):
        assert torch.allclose(keys, expected_keys, atol=1e-4) and torch.allclose(values, expected_values, atol=1e-4)
