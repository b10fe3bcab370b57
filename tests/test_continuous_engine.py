"""ContinuousBatchingEngine over transformers' continuous batching, with real models (no mocks).

The tiny random model checks the mechanics in seconds: streaming deltas, routing, counts, cancellation, stop. Greedy
output is compared with `model.generate` only up to the first near-tie of the reference logits, since a random model
can have top-1 / top-2 gaps within float noise there. The slow test does the same with the real SmolLM2, exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_support import Collector
from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model
from lmistream.config import HandlerConfig
from lmistream.engines.continuous import ContinuousBatchingEngine
from lmistream.errors import ConfigError, EngineError, InvalidRequest
from lmistream.params import GenerationParams
from lmistream.structured import Constraint
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.integration

#: reference tokens whose top-1 / top-2 logit gap is below this are near-ties: comparison stops before them
NEAR_TIE = 1e-4


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return ensure_smollm2()


def _started(model_dir: Path, **options: str) -> tuple[ContinuousBatchingEngine, Collector]:
    engine = ContinuousBatchingEngine(HandlerConfig.from_properties({"model_id": str(model_dir), **options}))
    collector = Collector()
    engine.start(collector)
    return engine, collector


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[tuple[ContinuousBatchingEngine, Collector]]:
    engine, collector = _started(tiny_model_dir)
    yield engine, collector
    engine.stop()


def _reference_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy `generate`, cut before the first near-tie of its logits."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = model.generate(
        torch.tensor([prompt_ids]),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        output_scores=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt_ids) :].tolist()
    for index, scores in enumerate(out.scores):
        top2 = scores[0].topk(2).values
        if (top2[0] - top2[1]).item() < NEAR_TIE:
            return tokens[:index]
    return tokens


def _assert_well_formed(collector: Collector, request_id: str, max_new_tokens: int, eos: frozenset[int]) -> None:
    updates = collector.updates[request_id]
    assert [u.finished for u in updates].count(True) == 1 and updates[-1].finished
    assert all(u.error is None for u in updates)
    assert all(u.token_ids for u in updates)  # every update carries new tokens
    assert all(len(u.log_probs) == len(u.token_ids) for u in updates)
    tokens = collector.tokens(request_id)
    if len(tokens) < max_new_tokens:  # the only legitimate early end: the model emitted an eos token
        assert tokens[-1] in eos, (request_id, tokens)
    else:
        assert len(tokens) == max_new_tokens


def test_tokenizer_adapter_and_limits(tiny: tuple[ContinuousBatchingEngine, Collector]) -> None:
    engine, _ = tiny
    ids = engine.tokenizer.encode("Hello world")
    assert engine.tokenizer.decode(ids) == "Hello world"
    assert engine.tokenizer.eos_token_ids == frozenset({2})  # <|im_end|>
    assert {0, 1, 2} <= engine.tokenizer.special_token_ids
    assert engine.tokenizer.decode([1, 2]) == "<|im_start|><|im_end|>"  # special tokens kept as text
    assert engine.max_sequence_length == 2048


def test_concurrent_requests_stream_their_own_tokens(
    tiny: tuple[ContinuousBatchingEngine, Collector], tiny_model_dir: Path
) -> None:
    engine, collector = tiny
    prompts = {
        "greedy-a": ("Once upon a time, there was a little", GenerationParams(max_new_tokens=12)),
        "greedy-b": ("The capital of France is", GenerationParams(max_new_tokens=20)),
        "sample-c": ("def fibonacci(n):", GenerationParams(max_new_tokens=7, do_sample=True, temperature=0.8)),
        "sample-d": ("1, 2, 3,", GenerationParams(max_new_tokens=16, do_sample=True, top_k=40, top_p=0.9)),
    }
    prompt_ids = {rid: engine.tokenizer.encode(text) for rid, (text, _) in prompts.items()}
    for rid, (_, params) in prompts.items():
        engine.submit(rid, prompt_ids[rid], params)
    collector.wait_finished(*prompts)

    for rid, (_, params) in prompts.items():
        _assert_well_formed(collector, rid, params.max_new_tokens, engine.tokenizer.eos_token_ids)
    # greedy requests ran in the same batches as the others, yet each got exactly its own continuation
    for rid in ("greedy-a", "greedy-b"):
        reference = _reference_greedy(tiny_model_dir, prompt_ids[rid], prompts[rid][1].max_new_tokens)
        assert len(reference) >= 8, "too many near-ties in the tiny model for a meaningful comparison"
        assert collector.tokens(rid)[: len(reference)] == reference
    assert collector.tokens("greedy-a") != collector.tokens("greedy-b")[:12]
    # greedy has no meaningful log-probability (top_k=1); sampled tokens carry the sampling distribution's
    assert all(lp is None for u in collector.updates["greedy-a"] for lp in u.log_probs)
    assert all(lp is not None and lp <= 0.0 for u in collector.updates["sample-c"] for lp in u.log_probs)


def test_ignore_eos_generates_past_eos_as_generate_without_eos(
    tiny: tuple[ContinuousBatchingEngine, Collector], tiny_model_dir: Path
) -> None:
    engine, collector = tiny
    prompt_ids = engine.tokenizer.encode("Why?")
    engine.submit("past-eos", prompt_ids, GenerationParams(max_new_tokens=24, ignore_eos=True))
    collector.wait_finished("past-eos")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reference = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=24, eos_token_id=None)
    tokens = collector.tokens("past-eos")
    assert tokens == reference[0, len(prompt_ids) :].tolist()
    assert len(tokens) == 24 and set(tokens[:-1]) & engine.tokenizer.eos_token_ids


REFUSED = [
    pytest.param({"repetition_penalty": 1.2}, "parameters.repetition_penalty", id="repetition_penalty"),
    pytest.param({"min_p": 0.1}, "parameters.min_p", id="min_p"),
    pytest.param({"frequency_penalty": 0.5}, "parameters.frequency_penalty", id="frequency_penalty"),
    pytest.param({"presence_penalty": -1.0}, "parameters.presence_penalty", id="presence_penalty"),
    pytest.param({"logprobs": True}, "logprobs with greedy decoding", id="greedy-logprobs"),
    pytest.param({"do_sample": True, "seed": 7}, "parameters.seed is not supported with do_sample=true", id="seed"),
    pytest.param({"prompt_logprobs": True}, "parameters.decoder_input_details", id="decoder_input_details"),
]


@pytest.mark.parametrize("fields,named", REFUSED)
def test_refuses_what_continuous_batching_cannot_honour_by_name(
    tiny: tuple[ContinuousBatchingEngine, Collector], fields: dict, named: str
) -> None:
    engine, _ = tiny
    with pytest.raises(InvalidRequest, match=named) as refused:
        engine.validate(GenerationParams(max_new_tokens=4, **fields))
    assert refused.value.status == 400 and "option.generation_engine=portable" in refused.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"seed": 7},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40},
        {"do_sample": True, "logprobs": True},
        {"stop_sequences": ("x",), "details": True},
    ],
)
def test_accepts_what_continuous_batching_honours(tiny: tuple[ContinuousBatchingEngine, Collector], fields) -> None:
    assert tiny[0].validate(GenerationParams(max_new_tokens=4, **fields)) is None


def test_top_log_probabilities_are_refused_by_name(tiny: tuple[ContinuousBatchingEngine, Collector]) -> None:
    engine, _ = tiny
    with pytest.raises(InvalidRequest) as caught:
        engine.validate(GenerationParams(max_new_tokens=4, do_sample=True, top_logprobs=3))
    assert caught.value.param == "top_logprobs" and "generation_engine=portable" in caught.value.message


def test_cancel_frees_the_only_slot(tiny_model_dir: Path) -> None:
    engine, collector = _started(tiny_model_dir, max_rolling_batch_size="1")
    try:
        prompt = engine.tokenizer.encode("Once upon a time")
        engine.submit("long", prompt, GenerationParams(max_new_tokens=1900, ignore_eos=True))
        assert collector.wait_for(lambda: len(collector.updates["long"]) >= 3)
        engine.submit("waiting", prompt, GenerationParams(max_new_tokens=5))
        assert collector.wait_for(lambda: len(collector.updates["long"]) >= 6)
        assert not collector.updates["waiting"]  # one slot, held by "long"

        engine.cancel("long")
        seen_at_cancel = len(collector.updates["long"])
        collector.wait_finished("waiting")
        _assert_well_formed(collector, "waiting", 5, engine.tokenizer.eos_token_ids)
        engine.submit("after", prompt, GenerationParams(max_new_tokens=3))
        collector.wait_finished("after")
        # at most the update that was being delivered while cancel() ran; never a finished one
        assert len(collector.updates["long"]) <= seen_at_cancel + 1
        assert not collector.finished("long")
        assert len(collector.tokens("long")) < 1900
    finally:
        engine.stop()


def test_stop_fails_unfinished_requests_and_refuses_new_ones(tiny_model_dir: Path) -> None:
    engine, collector = _started(tiny_model_dir)
    engine.submit(
        "running", engine.tokenizer.encode("Once upon a time"), GenerationParams(max_new_tokens=1900, ignore_eos=True)
    )
    assert collector.wait_for(lambda: len(collector.updates["running"]) >= 2)
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 10
    last = collector.updates["running"][-1]
    assert last.finished and last.error
    with pytest.raises(EngineError):
        engine.submit("late", [1, 2, 3], GenerationParams(max_new_tokens=2))
    engine.stop()  # idempotent


@pytest.mark.slow
def test_smollm2_greedy_matches_generate_and_knows_paris(smollm2_dir: Path) -> None:
    chat = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt_ids = list(
        chat.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    reference = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=40)
    expected = reference[0, len(prompt_ids) :].tolist()

    engine, collector = _started(smollm2_dir)
    try:
        engine.submit("paris", prompt_ids, GenerationParams(max_new_tokens=40))
        collector.wait_finished("paris", timeout=120)
    finally:
        engine.stop()
    tokens = collector.tokens("paris")
    assert tokens == expected
    assert "Paris" in engine.tokenizer.decode(tokens)


def test_gpu_memory_utilization_on_a_cpu_is_refused_naming_the_option(tiny_model_dir: Path) -> None:
    config = HandlerConfig.from_properties({"model_id": str(tiny_model_dir), "gpu_memory_utilization": "0.5"})
    with pytest.raises(ConfigError, match=r"option\.gpu_memory_utilization=0\.5 .* runs on cpu"):
        ContinuousBatchingEngine(config)


def test_structured_output_is_refused_naming_the_field_and_the_engines_that_have_it(tiny) -> None:
    engine, _ = tiny
    constraint = Constraint("regex", "[0-9]+", "parameters.structured_outputs.regex")
    with pytest.raises(InvalidRequest) as refused:
        engine.validate(GenerationParams(max_new_tokens=4, constraint=constraint))
    assert refused.value.param == "parameters.structured_outputs.regex"
    assert "option.generation_engine=portable" in refused.value.message
    assert "structured output is not supported by the continuous-batching engine" in refused.value.message
