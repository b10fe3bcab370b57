"""The portable engine's prefix cache and chunked prefill, with the tiny trained model on whichever stack runs the tests
(transformers 5.24's cache classes here, 4.30.2's tuples in the LMI 0.23 tier): greedy output with the cache, under
eviction, and with chunks equals the output of an engine without them, token for token; a cancelled prompt stores
nothing, and a prompt whose join fails fails alone; running rows decode between the chunks of a long prompt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_support import Collector
from lmikit.embedded_model import ensure_tiny_model
from lmistream.config import HandlerConfig
from lmistream.engine import EngineUpdate
from lmistream.engines.portable import PortableEngine
from lmistream.params import GenerationParams

pytestmark = pytest.mark.integration

SYSTEM = (
    "You are a helpful assistant for a small bakery. You answer questions about bread, cakes and opening hours "
    "politely and briefly, and you never make up prices that you do not know. When a customer asks for something "
    "the bakery does not sell, you say so and suggest the closest thing it does sell. "
)
QUESTIONS = ["When do you open?", "Do you sell rye bread?", "Can I order a cake for Sunday?"]
NEW_TOKENS = 6


class Timeline(Collector):
    """A collector that also keeps the order in which the updates of all requests arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[EngineUpdate] = []

    def __call__(self, update: EngineUpdate) -> None:
        with self._cond:
            self.order.append(update)
        super().__call__(update)


def _start(**options: str) -> tuple[PortableEngine, Timeline]:
    properties = {"model_id": str(ensure_tiny_model()), "dtype": "fp32", "max_rolling_batch_size": "4", **options}
    engine = PortableEngine(HandlerConfig.from_properties(properties))
    collector = Timeline()
    engine.start(collector)
    return engine, collector


@pytest.fixture(scope="module")
def plain() -> Iterator[tuple[PortableEngine, Timeline]]:
    engine, collector = _start(enable_prefix_caching="false")
    yield engine, collector
    engine.stop()


@pytest.fixture(scope="module")
def cached() -> Iterator[tuple[PortableEngine, Timeline]]:
    engine, collector = _start()
    yield engine, collector
    engine.stop()


@pytest.fixture(scope="module")
def chunked() -> Iterator[tuple[PortableEngine, Timeline]]:
    engine, collector = _start(max_rolling_batch_prefill_tokens="16")
    yield engine, collector
    engine.stop()


def _run(started: tuple[PortableEngine, Timeline], request_id: str, prompt: list[int], **params) -> list[int]:
    engine, collector = started
    assert request_id not in collector.updates, f"{request_id} already ran on this engine: its wait would not wait"
    engine.submit(request_id, prompt, GenerationParams(**{"max_new_tokens": NEW_TOKENS, **params}))
    collector.wait_finished(request_id)
    return collector.tokens(request_id)


def _cached_tokens(collector: Timeline, request_id: str) -> int:
    return collector.updates[request_id][0].cached_tokens


def _prompts(engine: PortableEngine) -> list[list[int]]:
    ids = [engine.tokenizer.encode(SYSTEM + question) for question in QUESTIONS]
    exact = ids[0][: 16 * (len(ids[0]) // 16)]  # whole blocks only: its last block is computed again, for logits
    return [*ids, ids[0], exact]


def test_a_shared_system_prompt_is_taken_from_the_cache_and_the_output_is_unchanged(plain, cached) -> None:
    engine, collector = cached
    prompts = _prompts(engine)
    expected = [_run(plain, f"p{i}", prompt) for i, prompt in enumerate(prompts)]
    assert [_cached_tokens(plain[1], f"p{i}") for i in range(len(prompts))] == [0] * len(prompts)
    assert [_run(cached, f"c{i}", prompt) for i, prompt in enumerate(prompts)] == expected
    hits = [_cached_tokens(collector, f"c{i}") for i in range(len(prompts))]
    assert hits[0] == 0 and all(hit >= 48 and hit % 16 == 0 for hit in hits[1:]), hits
    assert hits[3] == 16 * ((len(prompts[3]) - 1) // 16)  # the repeated prompt: all but its last token's block
    assert hits[4] == len(prompts[4]) - 16
    assert engine.prefix_cache is not None and 0 < engine.prefix_cache.hit_rate < 1
    # joining together: rows with cached prefixes of different lengths beside a row without one
    together = [prompts[1], prompts[2][:-3], engine.tokenizer.encode("Something else entirely")]
    for index, prompt in enumerate(together):
        engine.submit(f"t{index}", prompt, GenerationParams(max_new_tokens=NEW_TOKENS))
    collector.wait_finished("t0", "t1", "t2")
    assert [collector.tokens(f"t{i}") for i in range(3)] == [
        _run(plain, f"tp{i}", prompt) for i, prompt in enumerate(together)
    ]


def test_a_small_cache_evicts_the_least_recent_prefix_and_stays_exact(plain, cached) -> None:
    block_bytes = cached[0].prefix_cache.block_bytes  # type: ignore[union-attr]
    small = _start(prefix_cache_bytes=str(4 * block_bytes))
    try:
        engine, collector = small
        assert engine.prefix_cache is not None
        first, second = (engine.tokenizer.encode(text * 12) for text in ("Bread and butter. ", "Tea or coffee? "))
        outputs = [_run(small, name, prompt) for name, prompt in (("a", first), ("b", second), ("a2", first))]
        assert engine.prefix_cache.cached_bytes <= 4 * block_bytes
        assert len(first) > 48 and len(second) > 48  # three blocks each, for four in the cache
        assert _cached_tokens(collector, "a2") == 16  # `first` lost its deepest blocks to `second`, its first stayed
        assert outputs == [
            _run(plain, name, prompt) for name, prompt in (("ea", first), ("eb", second), ("ea2", first))
        ]
    finally:
        small[0].stop()


def test_running_rows_decode_between_the_chunks_of_a_long_prompt_and_its_output_is_unchanged(plain, chunked) -> None:
    engine, collector = chunked
    long_prompt = engine.tokenizer.encode("The history of bread begins with wild grains. " * 12)
    chunks = -(-len(long_prompt) // 16)
    assert chunks >= 6
    engine.submit("running", engine.tokenizer.encode("1, 2, 3,"), GenerationParams(max_new_tokens=60, ignore_eos=True))
    assert collector.wait_for(lambda: len(collector.tokens("running")) >= 1)
    with collector.holding():
        submitted = len(collector.order)
        engine.submit("long", long_prompt, GenerationParams(max_new_tokens=NEW_TOKENS))
    collector.wait_finished("long", "running")
    arrivals = collector.order[submitted:]
    first_long = next(i for i, update in enumerate(arrivals) if update.request_id == "long")
    between = sum(len(update.token_ids) for update in arrivals[:first_long] if update.request_id == "running")
    assert between >= chunks - 1  # one decode step per chunk before the last
    assert collector.tokens("long") == _run(plain, "long", long_prompt)


def test_a_prompt_cancelled_between_its_chunks_stores_nothing(plain, chunked) -> None:
    engine, collector = chunked
    assert engine.prefix_cache is not None
    long_prompt = engine.tokenizer.encode("Cancelled before it was ever prefilled whole. " * 40)  # 28 chunks
    engine.submit("busy", engine.tokenizer.encode("Why?"), GenerationParams(max_new_tokens=60, ignore_eos=True))
    assert collector.wait_for(lambda: len(collector.tokens("busy")) >= 1)
    stored = engine.prefix_cache.cached_bytes
    engine.submit("cut", long_prompt, GenerationParams(max_new_tokens=NEW_TOKENS))
    # the running row's tokens wake the wait while the prompt goes through its chunks (after its second, well
    # before its last)
    assert collector.wait_for(lambda: engine.prefilling.get("cut", 0) >= 32)
    engine.cancel("cut")
    collector.wait_finished("busy")
    assert not collector.tokens("cut") and engine.prefix_cache.cached_bytes == stored
    assert _run(chunked, "again", long_prompt) == _run(plain, "again", long_prompt)
    assert _cached_tokens(collector, "again") == 0


def test_a_long_prompt_chunked_after_its_cached_prefix_is_unchanged(plain, chunked) -> None:
    engine, collector = chunked
    prompts = [engine.tokenizer.encode(SYSTEM * 2 + question) for question in QUESTIONS[:2]]
    assert len(prompts[1]) > 4 * 16  # chunks after the cached prefix
    outputs = [_run(chunked, f"chunked-{i}", prompt) for i, prompt in enumerate(prompts)]
    assert _cached_tokens(collector, "chunked-1") >= 64
    assert outputs == [_run(plain, f"whole-{i}", prompt) for i, prompt in enumerate(prompts)]


def test_a_chunk_that_fails_mid_pass_fails_its_prompt_alone_and_the_running_rows_go_on(plain, chunked) -> None:
    """Where the chunk and the rows' step share a pass, a failure in a layer after the first (some of the rows' KV
    already appended) is undone: the rows decode that step again on their own and their output is unchanged."""
    engine, collector = chunked
    countdown = [3]  # the third pass of more than one position (a chunk's) fails

    def fail_in_the_second_layer(_layer: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.size(1) > 1 and countdown[0] > 0:
            countdown[0] -= 1
            if countdown[0] == 0:
                raise RuntimeError("injected chunk fault")

    running, params = engine.tokenizer.encode("1, 2, 3,"), {"max_new_tokens": 40, "ignore_eos": True}
    engine.submit("steady", running, GenerationParams(**params))
    assert collector.wait_for(lambda: len(collector.tokens("steady")) >= 1)
    layer = engine._call.model.model.layers[1]
    hook = layer.register_forward_pre_hook(fail_in_the_second_layer, with_kwargs=True)
    try:
        doomed = engine.tokenizer.encode("The history of bread. " * 20)
        engine.submit("doomed", doomed, GenerationParams(max_new_tokens=NEW_TOKENS))
        collector.wait_finished("doomed", "steady")
    finally:
        hook.remove()
    failure = collector.updates["doomed"][-1]
    assert countdown[0] == 0 and not collector.tokens("doomed")
    assert failure.code == 424 and "injected chunk fault" in (failure.error or "")
    assert collector.tokens("steady") == _run(plain, "steady", running, **params)
    assert _run(chunked, "again-chunk", doomed) == _run(plain, "again-chunk", doomed)  # no slot or state left behind


def test_a_prompt_whose_store_fails_as_it_joins_fails_alone_and_leaves_no_slot(plain, chunked, monkeypatch) -> None:
    """The join after a prompt's last chunk (its pass packed with the rows' step where the model allows it) stores
    the prompt's blocks and picks its first token; a failure there is the prompt's alone."""
    engine, collector = chunked
    assert engine.prefix_cache is not None
    failures = [1]
    store = engine.prefix_cache.store

    def store_failing_once(keys: list[bytes], kv: list) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("injected store fault")
        store(keys, kv)

    running, params = engine.tokenizer.encode("4, 5, 6,"), {"max_new_tokens": 40, "ignore_eos": True}
    engine.submit("steady-store", running, GenerationParams(**params))
    assert collector.wait_for(lambda: len(collector.tokens("steady-store")) >= 1)
    monkeypatch.setattr(engine.prefix_cache, "store", store_failing_once)
    doomed = engine.tokenizer.encode("The history of cakes. " * 20)
    engine.submit("doomed-store", doomed, GenerationParams(max_new_tokens=NEW_TOKENS))
    collector.wait_finished("doomed-store", "steady-store")
    failure = collector.updates["doomed-store"][-1]
    assert failures[0] == 0 and not collector.tokens("doomed-store")
    assert failure.code == 424 and "injected store fault" in (failure.error or "")
    assert collector.tokens("steady-store") == _run(plain, "steady-store", running, **params)
    assert engine.running == 0
    assert _run(chunked, "again-store", doomed) == _run(plain, "again-store", doomed)


def test_prompts_joining_together_whose_pass_fails_fail_alone_and_the_running_rows_go_on(plain, cached) -> None:
    """Prompts admitted in one step share a pass with the rows' decode step where the model allows it; a failure in
    that pass fails those prompts, and the rows decode the step again on their own, their output unchanged."""
    engine, collector = cached
    armed = [False]

    def fail_a_prompt_pass(_layer: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if armed[0] and hidden.size(1) > 1:
            armed[0] = False
            raise RuntimeError("injected join fault")

    running, params = engine.tokenizer.encode("7, 8, 9,"), {"max_new_tokens": 40, "ignore_eos": True}
    doomed = [engine.tokenizer.encode(SYSTEM + question) for question in QUESTIONS[:2]]
    to_submit = list(enumerate(doomed))

    def submit_both_at_a_decode_step(kind: str) -> None:  # in the loop's thread: both queued by the next boundary
        while kind == "decode" and to_submit:
            index, prompt = to_submit.pop(0)
            engine.submit(f"doomed-join{index}", prompt, GenerationParams(max_new_tokens=NEW_TOKENS))
            armed[0] = True

    engine.submit("steady-join", running, GenerationParams(**params))
    assert collector.wait_for(lambda: len(collector.tokens("steady-join")) >= 1)
    hook = engine._call.model.model.layers[1].register_forward_pre_hook(fail_a_prompt_pass, with_kwargs=True)
    engine.observe_forward_passes(submit_both_at_a_decode_step)
    try:
        collector.wait_finished("doomed-join0", "doomed-join1", "steady-join")
    finally:
        hook.remove()
    for index in range(2):
        failure = collector.updates[f"doomed-join{index}"][-1]
        assert failure.code == 424 and "injected join fault" in (failure.error or ""), failure
    assert collector.tokens("steady-join") == _run(plain, "steady-join", running, **params)
    assert engine.running == 0
    assert _run(cached, "again-join", doomed[0]) == _run(plain, "again-join", doomed[0])
