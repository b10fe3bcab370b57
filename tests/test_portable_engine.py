"""PortableEngine with the tiny trained model on whichever stack runs the tests (transformers 5.24 here, 4.30.2 in
the LMI 0.23 tier): requests joining at different steps, the batch bound, per-request seeds and repetition penalty,
cancellation. Every greedy continuation must equal that stack's own `generate`, token for token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import Collector
from lmikit.embedded_model import ensure_tiny_model
from lmistream.config import HandlerConfig
from lmistream.engines.portable import PortableEngine
from lmistream.params import GenerationParams
from reference import ReferenceModel

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


def _engine(model_dir: Path, **options: str) -> tuple[PortableEngine, Collector]:
    engine = PortableEngine(HandlerConfig.from_properties({"model_id": str(model_dir), "dtype": "fp32", **options}))
    collector = Collector()
    engine.start(collector)
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
    engine, collector = _engine(tiny_dir, max_rolling_batch_size="2")
    running_counts = []
    inner = collector.__call__

    def observe(update):
        running_counts.append(engine._scheduler.running)
        inner(update)

    engine._on_update = observe
    try:
        for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
            _submit(engine, f"r{index}", prompt, max_new_tokens=max_new_tokens)
        collector.wait_finished(*(f"r{i}" for i in range(len(PROMPTS))))
    finally:
        engine.stop()
    assert max(running_counts) == 2
    assert engine._scheduler.running == 0 and engine._batch is None
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
        assert tuple(collector.tokens(f"r{index}")) == reference(prompt, max_new_tokens).token_ids, prompt


def test_a_seed_makes_sampling_reproducible_whatever_shares_the_batch(started) -> None:
    engine, collector = started
    _submit(engine, "alone", "Once upon a time", max_new_tokens=16, seed=7, **SAMPLING)
    collector.wait_finished("alone")
    _submit(engine, "busy", "Once upon a time", max_new_tokens=16, seed=7, **SAMPLING)
    _submit(engine, "other-seed", "Once upon a time", max_new_tokens=16, seed=8, **SAMPLING)
    _submit(engine, "neighbour", "The quick brown fox", max_new_tokens=16, **SAMPLING)
    collector.wait_finished("busy", "other-seed", "neighbour")
    assert collector.tokens("alone") == collector.tokens("busy")
    assert collector.tokens("other-seed") != collector.tokens("alone")
    log_probs = [p for u in collector.updates["alone"] for p in u.log_probs]
    assert all(p is not None and p <= 0.0 for p in log_probs)


def test_repetition_penalty_matches_generate(started, reference: ReferenceModel) -> None:
    engine, collector = started
    prompt = "Why?"
    _submit(engine, "penalized", prompt, max_new_tokens=16, repetition_penalty=1.3)
    _submit(engine, "plain", prompt, max_new_tokens=16)
    collector.wait_finished("penalized", "plain")
    expected = reference(prompt, 16, repetition_penalty=1.3).token_ids
    assert tuple(collector.tokens("penalized")) == expected
    assert expected != reference(prompt, 16).token_ids, "the penalty must change this continuation"


def test_a_cancelled_request_leaves_the_batch_and_frees_its_slot(started, reference: ReferenceModel) -> None:
    engine, collector = started
    _submit(engine, "long", "1, 2, 3,", max_new_tokens=200)
    _submit(engine, "short", "Hello, my name is", max_new_tokens=14)
    assert collector.wait_for(lambda: len(collector.tokens("long")) >= 3)
    engine.cancel("long")
    collector.wait_finished("short")
    assert collector.wait_for(lambda: engine._scheduler.running == 0)
    assert not collector.finished("long") and len(collector.tokens("long")) < 200
    assert tuple(collector.tokens("short")) == reference("Hello, my name is", 14).token_ids
