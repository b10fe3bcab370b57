"""The portable and continuous engines on the GPU in fp16 and bf16, with the tiny trained model: the weights sit on the
device in the asked dtype, and the greedy text of requests batched together equals transformers' own `generate` of
each alone on the same device and dtype (compared up to the first near-tie of `generate`'s logits, where half
precision may break the tie either way)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import Collector
from lmistream.config import HandlerConfig
from lmistream.engines import FACTORIES, continuous_unavailable
from lmistream.engines.loading import DTYPES
from lmistream.params import GenerationParams
from transformers import AutoModelForCausalLM

PROMPTS = [
    ("Hello, my name is", 20),
    ("The quick brown fox", 20),
    ("1, 2, 3,", 24),
    ("Once upon a time, there was a little", 16),
    ("Why?", 16),
    ("def fibonacci(n):", 20),
    ("Roses are", 16),
    ("The capital of France is", 16),
]
#: a reference token must lead its runner-up by this many logits to be compared (half precision rounds near 1e-2)
NEAR_TIE = 0.05


def reference(model, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], int]:
    """`generate`'s greedy tokens for one prompt alone, and how many of the first ones are decisive."""
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_scores=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt_ids) :].tolist()
    gaps = [float(scores[0].float().topk(2).values.diff().abs()) for scores in out.scores]
    decisive = next((index for index, gap in enumerate(gaps) if gap < NEAR_TIE), len(tokens))
    return tokens, decisive


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["portable", "continuous"])
def test_batched_greedy_text_equals_generate_on_the_same_device_and_dtype(
    name: str, dtype: str, tiny_dir: Path, device: torch.device, device_id: str, record
) -> None:
    if name == "continuous" and continuous_unavailable():
        pytest.skip(f"transformers' continuous batching cannot load here: {continuous_unavailable()}")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=DTYPES[dtype]).to(device).eval()
    expected_bytes = sum(p.numel() for p in model.parameters()) * DTYPES[dtype].itemsize
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    config = HandlerConfig.from_properties(
        {"model_id": str(tiny_dir), "dtype": dtype, "device_id": device_id, "max_rolling_batch_size": "8"}
    )
    engine = FACTORIES[name](config)
    held = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else expected_bytes
    collector = Collector()
    engine.start(collector)
    try:
        encoded = [(engine.tokenizer.encode(prompt), count) for prompt, count in PROMPTS]
        for index, (ids, count) in enumerate(encoded):
            engine.submit(f"r{index}", ids, GenerationParams(max_new_tokens=count))
        collector.wait_finished(*(f"r{i}" for i in range(len(PROMPTS))), timeout=120)
    finally:
        engine.stop()
    compared = 0
    for index, (ids, count) in enumerate(encoded):
        tokens, decisive = reference(model, ids, count)
        got = collector.tokens(f"r{index}")
        assert got[:decisive] == tokens[:decisive], (PROMPTS[index][0], engine.tokenizer.decode(got))
        compared += decisive
    assert engine.parameter_bytes == expected_bytes, "the weights are not in the asked dtype"
    assert held >= expected_bytes, f"the weights are not on {device}: {held} bytes allocated there"
    assert compared >= sum(count for _, count in PROMPTS) // 2, "too few decisive tokens to compare"
    record(tokens_compared=compared, of_tokens=sum(len(collector.tokens(f"r{i}")) for i in range(len(PROMPTS))))
