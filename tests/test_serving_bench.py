"""The serving benchmark's plumbing: one tiny run through every path, and its statistics. No timing assertions."""

from __future__ import annotations

import pytest
from lmikit.benchmarks import serving_bench
from lmikit.embedded_model import ensure_tiny_model

ROW_KEYS = {"path", "concurrency", "tokens", "tok_s", "ttft_p50_ms", "itl_p50_ms", "itl_p99_ms"}


def test_summarize_counts_tokens_and_gaps() -> None:
    streams = [
        serving_bench.Stream(sent=0.0, chunks=[(0.5, 1), (0.6, 1), (0.8, 2)]),
        serving_bench.Stream(sent=0.0, chunks=[(0.3, 1), (1.0, 1)]),
    ]
    row = serving_bench.summarize("engine", streams)
    assert (row.path, row.concurrency, row.tokens) == ("engine", 2, 6)
    assert row.tok_s == pytest.approx(6.0)
    assert row.ttft_p50_ms == pytest.approx(400.0)
    assert row.itl_p50_ms == pytest.approx(200.0) and row.itl_p99_ms == pytest.approx(700.0)


@pytest.mark.integration
def test_tiny_run_reports_every_path_and_ratio() -> None:
    report = serving_bench.run_benchmark(ensure_tiny_model(), [1], max_new_tokens=4)
    assert {"loadavg", "model", "handler", "threads", "max_new_tokens", "prompt_tokens", "rows", "ratios"} <= set(
        report
    )
    rows = {row["path"]: row for row in report["rows"]}
    assert set(rows) == {"generate", "engine", "endpoint"}
    for row in rows.values():
        assert set(row) == ROW_KEYS and row["concurrency"] == 1
        assert 0 < row["tokens"] <= 4  # a random model may stop early on EOS
    assert rows["generate"]["tokens"] == 4  # min_new_tokens forces the full length
    [ratio] = report["ratios"]
    assert set(ratio) == {"concurrency", "engine/generate", "endpoint/generate", "endpoint/engine"}
    table = serving_bench.format_report(report)
    assert "loadavg at start" in table and "endpoint/generate" in table
