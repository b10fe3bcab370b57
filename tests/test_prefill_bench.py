"""The long-prompt and no-prefix workloads: how the running streams' gaps split at the long prompt, a short real run
on the tiny model in which chunked prefill lets the streams go on while the long prompt is prefilled, and the cache's
tokens/s ratio taken repeat by repeat. (The workloads' figures come from docs/bench runs, never timed here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from lmikit.benchmarks.prefill_bench import cache_ratios, window
from lmikit.benchmarks.stats import LevelResult, RequestRecord
from lmikit.cli import main


def test_gaps_before_lie_between_ready_and_the_send_and_gaps_during_overlap_the_prefill() -> None:
    # the long prompt is sent at 10.0 and answers its first token at 12.0
    long = RequestRecord(10.0, [12.0])
    stalled = RequestRecord(0.0, [8.0, 9.0, 9.5, 12.5, 13.0])  # one gap of 3 s across the whole prefill
    chunked = RequestRecord(0.0, [4.0, 9.8, 10.4, 11.0, 11.6, 12.2])
    result = window("s", 0, [stalled, chunked], ready=8.5, long=long)
    # before: 9.0->9.5 only (8.0->9.0 starts before ready; 9.8->10.4 crosses the send)
    assert result.before_gaps == 1 and result.itl_p95_before_ms == pytest.approx(500)
    # during: 9.5->12.5 (the stall), and 9.8->10.4, 10.4->11.0, 11.0->11.6, 11.6->12.2 (12.5->13.0 starts after)
    assert result.during_gaps == 5 and result.prefill_ms == pytest.approx(2000)
    assert result.itl_p50_during_ms == pytest.approx(600)
    assert result.itl_p95_during_ms > 2000 and result.p95_ratio > 4


def _level(system: str, repeat: int, tok_s: float) -> LevelResult:
    return LevelResult(system, 4, 4, 0, 100, 1.0, tok_s, *([1.0] * 6), repeat=repeat)


def test_the_cache_ratio_pairs_the_on_and_off_stacks_repeat_by_repeat() -> None:
    results = [
        _level("lmi-cache-on", 0, 95),
        _level("lmi-cache-off", 0, 100),
        _level("lmi-cache-on", 1, 110),
        _level("lmi-cache-off", 1, 100),
    ]
    [row] = cache_ratios(results)
    assert (row.top, row.bottom, row.concurrency) == ("lmi-cache-on", "lmi-cache-off", 4)
    assert (row.low, row.high, row.best) == pytest.approx((0.95, 1.10, 1.10))


@pytest.mark.integration
def test_chunked_prefill_gives_the_running_streams_tokens_while_the_long_prompt_is_prefilled(tmp_path: Path) -> None:
    args = ["bench", "--compare", "--workload", "long-prompt", "--model-id", "tiny", "--streams", "2"]
    args += ["--long-tokens", "600", "--prefill-chunks", "32", "--before-s", "0.5", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    windows = {w["system"]: w for w in json.loads((tmp_path / "long_prompt.json").read_text())["windows"]}
    assert set(windows) == {f"lmi-{e}{chunk}" for e in ("portable", "continuous") for chunk in ("", "-chunk-32")}
    # 600 tokens in chunks of 32 take 19 or more steps, each also decoding both streams: many gaps overlap the prefill
    assert all(windows[f"lmi-{e}-chunk-32"]["during_gaps"] >= 2 * 10 for e in ("portable", "continuous"))
    assert all(w["before_gaps"] > 0 for w in windows.values())
    assert "p95 during / before" in (tmp_path / "long_prompt.md").read_text()
