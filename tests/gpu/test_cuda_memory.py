"""option.gpu_memory_utilization on the GPU, and a request that runs out of memory there.

The continuous engine sizes its KV cache so that everything on the device stays within the share, and a full batch
runs in it. The portable engine's allocator is capped at the share: a request whose prefill needs more than the cap
leaves fails alone with 507, while the stream beside it goes on to its end. A CPU cannot bound memory this way (both
engines refuse the option there, which the main suite checks), so a rehearsal skips these checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_support import Collector
from lmistream.config import HandlerConfig
from lmistream.engine import EngineUpdate
from lmistream.engines import continuous_unavailable
from lmistream.engines.continuous import ContinuousBatchingEngine
from lmistream.engines.loading import DTYPES
from lmistream.engines.portable import PortableEngine
from lmistream.params import GenerationParams
from transformers import AutoModelForCausalLM

GiB = 2**30
SHARE = 0.2
#: positions of the long-context variant of the bench model, and the prompt that cannot fit its capped allocator
LONG_POSITIONS = 32768
LONG_PROMPT = 32000
#: what the cap leaves above the weights' own load: room for one short stream's KV cache, not a long prompt's
HEADROOM = 160 * 2**20


@pytest.fixture(autouse=True)
def on_a_gpu(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("a rehearsal on a CPU: gpu_memory_utilization is refused there (tested in the main suite)")


@pytest.fixture(scope="module")
def long_dir(bench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench model with room for LONG_POSITIONS tokens (rotary positions: the weights are the same)."""
    out = tmp_path_factory.mktemp("long-bench-model")
    for item in bench_dir.iterdir():
        (out / item.name).symlink_to(item)
    config = json.loads((bench_dir / "config.json").read_text())
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": LONG_POSITIONS}))
    return out


def test_the_continuous_engine_cache_and_batch_fit_the_share(tiny_dir: Path, device: torch.device, record) -> None:
    if continuous_unavailable():
        pytest.skip(f"transformers' continuous batching cannot load here: {continuous_unavailable()}")
    torch.cuda.reset_peak_memory_stats(device)
    total = torch.cuda.mem_get_info(device)[1]
    options = {"model_id": str(tiny_dir), "dtype": "fp16", "device_id": "0", "gpu_memory_utilization": str(SHARE)}
    engine = ContinuousBatchingEngine(HandlerConfig.from_properties(options))
    loaded = torch.cuda.memory_reserved(device)
    collector = Collector()
    engine.start(collector)
    try:
        cache = torch.cuda.memory_reserved(device) - loaded
        for index in range(8):
            engine.submit(f"r{index}", engine.tokenizer.encode("Once upon a time"), GenerationParams(max_new_tokens=64))
        collector.wait_finished(*(f"r{i}" for i in range(8)), timeout=120)
        free, _ = torch.cuda.mem_get_info(device)
    finally:
        engine.stop()
    errors = [u.error for updates in collector.updates.values() for u in updates if u.error]
    assert not errors, errors
    used = total - free
    record(
        share=SHARE, device_gib=round(total / GiB, 1), used_gib=round(used / GiB, 2), cache_gib=round(cache / GiB, 2)
    )
    assert torch.cuda.max_memory_reserved(device) <= SHARE * total
    assert used <= SHARE * total + GiB / 2, "the device holds more than the share (plus the CUDA context's slack)"
    assert cache >= SHARE * total / 2, "the KV cache took less than half of the share: the option did not size it"


def test_an_out_of_memory_prefill_fails_alone_with_507_while_another_stream_goes_on(
    long_dir: Path, device: torch.device, record
) -> None:
    torch.cuda.reset_peak_memory_stats(device)
    probe = AutoModelForCausalLM.from_pretrained(long_dir, dtype=DTYPES["fp16"], device_map=device)
    load_peak = torch.cuda.max_memory_reserved(device)
    del probe
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info(device)[1]
    share = (load_peak + HEADROOM) / total
    options = {"model_id": str(long_dir), "dtype": "fp16", "device_id": "0", "gpu_memory_utilization": repr(share)}
    engine = PortableEngine(HandlerConfig.from_properties(options))
    collector = Collector()
    short_at_failure: list[int] = []

    def on_update(update: EngineUpdate) -> None:
        collector(update)
        if update.request_id == "long" and update.finished:
            short_at_failure.append(len(collector.tokens("short")))

    engine.start(on_update)
    try:
        engine.submit("short", engine.tokenizer.encode("Once upon a time"), GenerationParams(max_new_tokens=300))
        assert collector.wait_for(lambda: len(collector.tokens("short")) >= 5)
        long_prompt = (engine.tokenizer.encode(" and then the river ran on") * LONG_PROMPT)[:LONG_PROMPT]
        engine.submit("long", long_prompt, GenerationParams(max_new_tokens=4))
        collector.wait_finished("long", "short", timeout=120)
    finally:
        engine.stop()
    long_end, short_end = collector.updates["long"][-1], collector.updates["short"][-1]
    peak = torch.cuda.max_memory_reserved(device)
    short_tokens = len(collector.tokens("short"))
    record(share=round(share, 5), cap_mib=round(share * total / 2**20), peak_mib=round(peak / 2**20))
    record(short_tokens_at_failure=short_at_failure[0], short_tokens=short_tokens)
    assert long_end.code == 507 and "out of memory" in (long_end.error or ""), long_end
    assert short_end.error is None and short_tokens > short_at_failure[0], short_end
    assert peak <= share * total
