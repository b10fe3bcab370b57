"""LoRA adapters in the portable engine with the tiny model: two random adapters made with PEFT, each row of a batch
on its own adapter or on the base model. Every adapter's greedy tokens must equal PEFT's merge_and_unload() model's
`generate`, alone and in a mixed batch; the base rows equal the base model's. Bad adapters are refused alone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_support import Collector
from lmikit.embedded_model import ensure_tiny_model
from lmistream.adapters import discover, read_adapter
from lmistream.config import HandlerConfig
from lmistream.engines import check_lora
from lmistream.engines.lora import Shards
from lmistream.engines.portable import PortableEngine
from lmistream.errors import ConfigError
from lmistream.params import GenerationParams
from lora_support import RECIPES, merged_model_dir, model_with_adapters
from reference import ReferenceModel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

pytestmark = pytest.mark.integration

PROMPTS = [("Hello, my name is", 12), ("The quick brown fox", 10), ("1, 2, 3,", 14)]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def model_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_with_adapters(tiny_dir, tmp_path_factory.mktemp("lora") / "model")


@pytest.fixture(scope="module")
def references(tiny_dir: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    merged = {
        r.name: ReferenceModel(
            merged_model_dir(tiny_dir, model_dir / "adapters" / r.name, tmp_path_factory.mktemp(r.name))
        )
        for r in RECIPES
    }
    return {None: ReferenceModel(tiny_dir), **merged}


def _engine(model_dir: Path, collector: Collector | None = None, **options: str) -> tuple[PortableEngine, Collector]:
    props = {"model_id": str(model_dir), "dtype": "fp32", "enable_lora": "true", **options}
    engine = PortableEngine(HandlerConfig.from_properties(props))
    for spec in discover(model_dir, max_rank=16):
        engine.add_adapter(spec)
    collector = collector or Collector()
    engine.start(collector)
    return engine, collector


class AdaptersInFlight(Collector):
    """Records the set of adapters generating at each update."""

    def __init__(self, adapter_of: dict[str, str | None]) -> None:
        super().__init__()
        self.adapter_of = adapter_of
        self.running: set[str] = set()
        self.seen: list[set[str | None]] = []

    def __call__(self, update) -> None:
        self.running.add(update.request_id)
        self.seen.append({self.adapter_of[r] for r in self.running} - {None})
        if update.finished:
            self.running.discard(update.request_id)
        super().__call__(update)


@pytest.fixture
def started(model_dir: Path) -> Iterator[tuple[PortableEngine, Collector]]:
    engine, collector = _engine(model_dir, max_rolling_batch_size="8")
    yield engine, collector
    engine.stop()


def _submit(engine: PortableEngine, request_id: str, prompt: str, max_new_tokens: int, adapter: str | None) -> None:
    engine.submit(request_id, engine.tokenizer.encode(prompt), GenerationParams(max_new_tokens, adapter=adapter))


def test_the_random_adapters_change_what_the_model_says(references: dict) -> None:
    for prompt, max_new_tokens in PROMPTS:
        outputs = {name: ref(prompt, max_new_tokens).token_ids for name, ref in references.items()}
        assert len(set(outputs.values())) == len(outputs), (prompt, outputs)


@pytest.mark.parametrize("adapter", [r.name for r in RECIPES])
def test_each_adapter_alone_equals_peft_merged_generate(started, references: dict, adapter: str) -> None:
    engine, collector = started
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
        _submit(engine, f"{adapter}-{index}", prompt, max_new_tokens, adapter)
        collector.wait_finished(f"{adapter}-{index}")
        assert tuple(collector.tokens(f"{adapter}-{index}")) == references[adapter](prompt, max_new_tokens).token_ids


def test_a_mixed_batch_of_base_and_two_adapters_equals_each_model(started, references: dict) -> None:
    engine, collector = started
    expected = {}
    for index, (prompt, max_new_tokens) in enumerate(PROMPTS):
        for adapter, reference in references.items():
            request_id = f"{adapter}-{index}"
            _submit(engine, request_id, prompt, max_new_tokens, adapter)
            expected[request_id] = reference(prompt, max_new_tokens).token_ids
    collector.wait_finished(*expected)
    assert {r: tuple(collector.tokens(r)) for r in expected} == expected


def test_max_loras_one_runs_one_adapter_at_a_time_and_all_finish(model_dir: Path, references: dict) -> None:
    adapters = [RECIPES[0].name, RECIPES[1].name, None, RECIPES[0].name]
    adapter_of = {f"r{i}": adapter for i, adapter in enumerate(adapters)}
    engine, collector = _engine(model_dir, AdaptersInFlight(adapter_of), max_loras="1", max_cpu_loras="1")
    prompt, max_new_tokens = PROMPTS[0]
    try:
        for request_id, adapter in adapter_of.items():
            _submit(engine, request_id, prompt, max_new_tokens, adapter)
        collector.wait_finished(*adapter_of)
    finally:
        engine.stop()
    assert max(len(adapters) for adapters in collector.seen) == 1
    for request_id, adapter in adapter_of.items():
        assert tuple(collector.tokens(request_id)) == references[adapter](prompt, max_new_tokens).token_ids


def test_an_adapter_above_max_lora_rank_is_refused_naming_the_option(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"r=8 is above option\.max_lora_rank=4"):
        read_adapter("translate", model_dir / "adapters" / "translate", max_rank=4)


def test_a_bad_adapter_directory_is_refused_and_the_served_ones_go_on(
    started, model_dir: Path, references: dict, tmp_path: Path
) -> None:
    engine, collector = started
    prompt, max_new_tokens = PROMPTS[1]
    _submit(engine, "running", prompt, max_new_tokens, RECIPES[0].name)
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        read_adapter("empty", tmp_path)
    other = tmp_path / "other-base"
    shutil.copytree(model_dir / "adapters" / RECIPES[0].name, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "r": 2}))
    with pytest.raises(ConfigError, match=r"need \(2, 64\)"):
        engine.add_adapter(read_adapter("other-base", other))
    collector.wait_finished("running")
    assert tuple(collector.tokens("running")) == references[RECIPES[0].name](prompt, max_new_tokens).token_ids


def test_lora_over_tensor_parallel_ranks_is_refused_where_the_shards_are_not_transformers_own(tiny_dir: Path) -> None:
    """Over two ranks the portable engine shards adapters where transformers has a tp_plan for the model (the newest
    stack: test_tensor_parallel runs it); LMI 0.23's transformers has none (DeepSpeed AutoTP shards), and there it
    is refused before the load, as it is on the continuous engine. (The engines that apply no adapters at all refuse
    option.enable_lora through the option table.)"""
    config = HandlerConfig.from_properties(
        {"model_id": str(tiny_dir), "enable_lora": "true", "tensor_parallel_degree": "2"}
    )
    with pytest.raises(ConfigError, match="the continuous engine does not shard LoRA adapters"):
        check_lora(config, "continuous", 2)
    check_lora(config, "portable", 1)
    if getattr(AutoConfig.from_pretrained(tiny_dir), "base_model_tp_plan", None):
        check_lora(config, "portable", 2)
    else:
        with pytest.raises(ConfigError, match="DeepSpeed AutoTP.*option.tensor_parallel_degree=1"):
            check_lora(config, "portable", 2)


@pytest.mark.skipif(
    not hasattr(PreTrainedModel, "tp_plan"), reason="no tp_plan in this transformers: the test above refuses TP there"
)
def test_an_adapter_of_a_module_sharded_in_a_layout_it_cannot_follow_is_refused_naming_it(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    shards = Shards(model, (0, 2))
    head = model.lm_head
    pair = (torch.zeros(4, head.in_features), torch.zeros(head.out_features, 4), 1.0)
    with pytest.raises(ConfigError, match="lm_head, which tensor parallelism shards as 'colwise_gather_output'"):
        shards.slice("adapter 'x'", "lm_head", pair)
    assert shards.layout("model.layers.1.self_attn.o_proj") == "rowwise"
