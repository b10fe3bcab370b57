"""PortableEngine with the tiny trained model on whichever stack runs the tests (transformers 5.24 here, 4.30.2 in
the LMI 0.23 tier): requests joining at different steps, the batch bound, per-request seeds and repetition penalty,
the prompt's log-probabilities, cancellation. Every greedy continuation must equal that stack's own `generate`, token
for token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import transformers
from engine_support import Collector
from lmikit.embedded_model import ensure_tiny_model
from lmistream.config import HandlerConfig
from lmistream.engine import EngineUpdate
from lmistream.engines.portable import PortableEngine
from lmistream.errors import ConfigError
from lmistream.params import GenerationParams
from reference import ReferenceModel, penalties

pytestmark = pytest.mark.integration

PROMPTS = [
    ("Hello, my name is", 14),
    ("The quick brown fox", 9),
    ("1, 2, 3,", 20),
    ("Once upon a time, there was a little", 6),
    ("Why?", 11),
    ("def fibonacci(n):", 12),
]
SAMPLING = {"do_sample": True, "temperature": 0.9, "top_k": 40, "top_p": 0.95}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> ReferenceModel:
    return ReferenceModel(tiny_dir)


def _engine(
    model_dir: Path, observe: Callable[[PortableEngine], None] | None = None, **options: str
) -> tuple[PortableEngine, Collector]:
    """A started engine whose updates the collector gathers, `observe` seeing the engine at each of them."""
    engine = PortableEngine(HandlerConfig.from_properties({"model_id": str(model_dir), "dtype": "fp32", **options}))
    collector = Collector()

    def on_update(update: EngineUpdate) -> None:
        if observe is not None:
            observe(engine)
        collector(update)

    engine.start(on_update)
    return engine, collector


@pytest.fixture
def started(tiny_dir: Path) -> Iterator[tuple[PortableEngine, Collector]]:
    engine, collector = _engine(tiny_dir, max_rolling_batch_size="4")
    yield engine, collector
    engine.stop()


def _submit(engine: PortableEngine, request_id: str, prompt: str, **params) -> None:
    engine.submit(request_id, engine.tokenizer.encode(prompt), GenerationParams(**params))


def test_requests_joining_at_different_steps_each_equal_generate(started, reference: ReferenceModel) -> None:
    engine, collector = started
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS[:4]):
        _submit(engine, f"r{index}", prompt, max_new_tokens=max_new_tokens)
        # the next one joins while this one is mid-generation, at a later step
        name = f"r{index}"
        assert collector.wait_for(lambda name=name: len(collector.tokens(name)) >= 2 or collector.finished(name))
    collector.wait_finished(*(f"r{i}" for i in range(4)))
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS[:4]):
        assert tuple(collector.tokens(f"r{index}")) == reference(prompt, max_new_tokens).token_ids, prompt
    first_tokens = [len(collector.tokens(f"r{i}")) for i in range(4)]
    assert all(count > 0 for count in first_tokens)


def test_at_most_max_rolling_batch_size_rows_run_and_waiting_requests_join_later(
    tiny_dir: Path, reference: ReferenceModel
) -> None:
    running_counts = []
    engine, collector = _engine(
        tiny_dir, lambda engine: running_counts.append(engine.running), max_rolling_batch_size="2"
    )
    try:
        for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
            _submit(engine, f"r{index}", prompt, max_new_tokens=max_new_tokens)
        collector.wait_finished(*(f"r{i}" for i in range(len(PROMPTS))))
    finally:
        engine.stop()
    assert max(running_counts) == 2
    assert engine.idle()
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
        assert tuple(collector.tokens(f"r{index}")) == reference(prompt, max_new_tokens).token_ids, prompt


def test_a_seed_makes_sampling_reproducible_whatever_shares_the_batch(started) -> None:
    engine, collector = started
    # a hot temperature: the tiny model is confident enough that two seeds could otherwise draw alike
    hot = {"do_sample": True, "temperature": 3.0}
    _submit(engine, "alone", "Once upon a time", max_new_tokens=16, seed=7, **hot)
    collector.wait_finished("alone")
    _submit(engine, "busy", "Once upon a time", max_new_tokens=16, seed=7, **hot)
    _submit(engine, "other-seed", "Once upon a time", max_new_tokens=16, seed=8, **hot)
    _submit(engine, "neighbour", "The quick brown fox", max_new_tokens=16, **hot)
    collector.wait_finished("busy", "other-seed", "neighbour")
    assert collector.tokens("alone") == collector.tokens("busy")
    assert collector.tokens("other-seed") != collector.tokens("alone")
    log_probs = [p for u in collector.updates["alone"] for p in u.log_probs]
    assert all(p is not None and p <= 0.0 for p in log_probs)


def test_repetition_penalty_matches_generate(started, reference: ReferenceModel) -> None:
    engine, collector = started
    prompt = "Why?"
    _submit(engine, "penalized", prompt, max_new_tokens=16, repetition_penalty=3.0)
    _submit(engine, "plain", prompt, max_new_tokens=16)
    collector.wait_finished("penalized", "plain")
    expected = reference(prompt, 16, repetition_penalty=3.0).token_ids
    assert tuple(collector.tokens("penalized")) == expected
    assert expected != reference(prompt, 16).token_ids, "the penalty must change this continuation"


def test_frequency_and_presence_penalties_match_generate_with_vllms_definition(
    started, reference: ReferenceModel
) -> None:
    engine, collector = started
    prompt = "1, 2, 3,"
    _submit(engine, "penalized", prompt, max_new_tokens=20, frequency_penalty=2.0, presence_penalty=2.0)
    _submit(engine, "plain", prompt, max_new_tokens=20)
    collector.wait_finished("penalized", "plain")
    prompt_length = len(engine.tokenizer.encode(prompt))
    expected = reference(prompt, 20, check_gaps=False, **penalties(prompt_length, 2.0, 2.0)).token_ids
    assert tuple(collector.tokens("penalized")) == expected
    assert expected != tuple(collector.tokens("plain")), "the penalties must change this continuation"


def test_min_p_with_a_seed_draws_what_generate_draws(started, reference: ReferenceModel) -> None:
    if not hasattr(transformers, "MinPLogitsWarper"):
        pytest.skip(f"transformers {transformers.__version__} has no min_p to compare with")
    engine, collector = started
    prompt, sampled = "Once upon a time", {"do_sample": True, "temperature": 2.0, "seed": 11}
    _submit(engine, "floor", prompt, max_new_tokens=16, min_p=0.1, **sampled)
    _submit(engine, "no-floor", prompt, max_new_tokens=16, **sampled)
    collector.wait_finished("floor", "no-floor")
    expected = reference.sample(prompt, 16, seed=11, temperature=2.0, min_p=0.1)
    assert tuple(collector.tokens("floor")) == expected
    assert tuple(collector.tokens("no-floor")) == reference.sample(prompt, 16, seed=11, temperature=2.0)
    assert expected != tuple(collector.tokens("no-floor")), "min_p must change this draw"


def test_ignore_eos_generates_past_eos_as_generate_without_eos(started, reference: ReferenceModel) -> None:
    engine, collector = started
    _submit(engine, "on", "Why?", max_new_tokens=24, ignore_eos=True)
    collector.wait_finished("on")
    tokens = tuple(collector.tokens("on"))
    never = reference.model.config.vocab_size  # an eos id no token has: generate goes on past the real eos
    assert tokens == reference("Why?", 24, check_gaps=False, eos_token_id=never).token_ids
    assert len(tokens) == 24 and set(tokens[:-1]) & engine.tokenizer.eos_token_ids


def test_prompt_log_probabilities_are_the_models_own_forward_pass(started, reference: ReferenceModel) -> None:
    """decoder_input_details: on the request's first update, each prompt token with its log-probability given the
    tokens before it, as one forward pass of transformers gives them, beside a request of another length."""
    engine, collector = started
    prompt = "Once upon a time, there was a little"
    _submit(engine, "details", prompt, max_new_tokens=2, prompt_logprobs=True)
    _submit(engine, "plain", "Why?", max_new_tokens=2)
    collector.wait_finished("details", "plain")
    first, *rest = collector.updates["details"]
    expected = reference.prompt_log_probs(prompt)
    assert [i for i, _ in first.prefill] == [i for i, _ in expected] and first.prefill[0][1] is None
    assert [lp for _, lp in first.prefill[1:]] == pytest.approx([lp for _, lp in expected[1:]], abs=1e-4)
    assert all(not update.prefill for update in rest + collector.updates["plain"])
    assert tuple(collector.tokens("details")) == reference(prompt, 2).token_ids


def test_a_cancelled_request_leaves_the_batch_and_frees_its_slot(started, reference: ReferenceModel) -> None:
    engine, collector = started
    _submit(engine, "long", "1, 2, 3,", max_new_tokens=200)
    _submit(engine, "short", "Hello, my name is", max_new_tokens=14)
    assert collector.wait_for(lambda: len(collector.tokens("long")) >= 3)
    engine.cancel("long")
    collector.wait_finished("short")
    assert collector.wait_for(lambda: engine.running == 0)
    assert not collector.finished("long") and len(collector.tokens("long")) < 200
    assert tuple(collector.tokens("short")) == reference("Hello, my name is", 14).token_ids


def test_gpu_memory_utilization_on_a_cpu_is_refused_naming_the_option(tiny_dir: Path) -> None:
    config = HandlerConfig.from_properties({"model_id": str(tiny_dir), "gpu_memory_utilization": "0.5"})
    with pytest.raises(ConfigError, match=r"option\.gpu_memory_utilization=0\.5 .* runs on cpu"):
        PortableEngine(config)


@pytest.mark.parametrize("dtype", ["fp16", "float16"])
def test_fp16_on_a_cpu_loads_where_torch_multiplies_it_and_is_refused_naming_the_device_where_not(
    tiny_dir: Path, dtype: str
) -> None:
    """torch 2.0 (LMI 0.23's) has no fp16 matrix multiply on a CPU: the load is refused before the weights are read,
    instead of a warm-up failing with "addmm_impl_cpu_" not implemented for 'Half'. Newer torch runs it."""
    import torch

    if torch.__version__.startswith("2.0."):
        with pytest.raises(
            ConfigError, match=r"option\.dtype=fp16 cannot run on this device \(cpu\).*option\.dtype=fp32"
        ):
            _engine(tiny_dir, dtype=dtype)
        return
    engine, collector = _engine(tiny_dir, dtype=dtype)
    try:
        _submit(engine, "half", "Hello, my name is", max_new_tokens=3)
        collector.wait_finished("half")
        assert len(collector.tokens("half")) == 3
    finally:
        engine.stop()
