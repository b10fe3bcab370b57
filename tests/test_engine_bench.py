"""The engine benchmark's plumbing on whichever stack runs the tests: a tiny run reports every path and ratio. No
timing assertions (CPU timings here are noise; the benchmark prints ratios instead)."""

from __future__ import annotations

import pytest
from lmikit.benchmarks import engine_bench, kv_append_bench
from lmikit.embedded_model import ensure_tiny_model


@pytest.mark.integration
def test_tiny_run_reports_every_engine_against_generate() -> None:
    result = engine_bench.run_benchmark(ensure_tiny_model(), [2], max_new_tokens=3, threads=1, repeats=1)
    engines = engine_bench.available_engines()
    assert {row["path"] for row in result["rows"]} == {"generate", *engines}
    assert all(row["tok_s"] > 0 and len(row["runs"]) == 1 for row in result["rows"])
    ratios = {r["ratio"] for r in result["ratios"]}
    assert "portable/generate" in ratios
    assert ("portable/continuous" in ratios) == ("continuous" in engines)
    text = engine_bench.format_report(result)
    assert "portable/generate" in text and result["stack"]["transformers"] in text


def test_prompts_differ() -> None:
    texts = engine_bench.prompts(32)
    assert len(set(texts)) == 32 and len({len(t) for t in texts}) > 1


def test_context_words_come_before_every_prompt() -> None:
    plain, long = engine_bench.prompts(4), engine_bench.prompts(4, 50)
    assert all(text.endswith(p) and len(text.split()) == len(p.split()) + 50 for p, text in zip(plain, long))


@pytest.mark.integration
def test_kv_append_bench_runs_both_variants(capsys: pytest.CaptureFixture[str]) -> None:
    if not hasattr(pytest.importorskip("transformers.cache_utils"), "DynamicLayer"):
        pytest.skip("this transformers keeps tuples, not cache layers")
    argv = ["--model", str(ensure_tiny_model()), "--rows=2", "--context-words=20", "--max-new-tokens=3", "--repeats=1"]
    kv_append_bench.main(argv)
    line = capsys.readouterr().out.strip()
    assert line.startswith("repeat 1: dynamic ") and "headroom / dynamic" in line
