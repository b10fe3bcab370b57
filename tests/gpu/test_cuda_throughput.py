"""A benchmark, not a timed assertion: tokens/s of each engine at 1, 8 and 32 streams against static-batch `generate`
on the same GPU and dtype (`lmikit.benchmarks.engine_bench` on its SmolLM2-shaped random model; SmolLM2 itself is
built from a 94 MiB GGUF wheel, over what can travel to the GPU machine). The ratios go to the summary; the check
fails only when a path did not run. A rehearsal on a CPU shrinks the run to the tiny model and a few tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lmikit.benchmarks import engine_bench

#: concurrencies, new tokens per request, measured repeats: on the GPU, and in a rehearsal on a CPU
RUNS = {"cuda": ((1, 8, 32), 64, 2), "cpu": ((1, 2), 4, 1)}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_tokens_per_second_against_static_generate(
    dtype: str, tiny_dir: Path, device: torch.device, record, request: pytest.FixtureRequest
) -> None:
    concurrency, max_new_tokens, repeats = RUNS[device.type]
    threads = torch.get_num_threads()
    model_dir: Path = request.getfixturevalue("bench_dir") if device.type == "cuda" else tiny_dir
    result = engine_bench.run_benchmark(model_dir, concurrency, max_new_tokens, threads, repeats, dtype, device.type)
    report = engine_bench.format_report(result)
    print(report)
    record(report=report, **{f"{r['ratio']} c={r['concurrency']}": round(r["best"], 2) for r in result["ratios"]})
    paths = {"generate", *engine_bench.available_engines()}
    assert {(row["path"], row["concurrency"]) for row in result["rows"]} == {(p, c) for p in paths for c in concurrency}
    assert all(row["tok_s"] > 0 for row in result["rows"])
