"""`lmi bench`'s statistics and reports, pure: percentiles, level summaries, ratios by repeat, tables, prompts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lmikit.benchmarks.prompts import make_prompts
from lmikit.benchmarks.report import compare_ratios, markdown_report, stack_overheads
from lmikit.benchmarks.stats import (
    LevelResult,
    RequestRecord,
    best_runs,
    markdown_table,
    overhead_ms,
    percentile,
    ratio,
    summarize,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1), st.floats(min_value=0, max_value=100))
def test_a_percentile_lies_within_the_values(values, q) -> None:
    assert min(values) <= percentile(values, q) <= max(values)


@given(st.lists(finite, min_size=1), st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_percentiles_grow_with_q(values, q1, q2) -> None:
    low, high = sorted((q1, q2))
    assert percentile(values, low) <= percentile(values, high) + 1e-9


def test_percentile_interpolates_and_is_nan_for_nothing() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0 and math.isnan(percentile([], 50))


def test_a_level_summary() -> None:
    records = [
        RequestRecord(0.0, [0.5, 0.6, 0.8, 1.0]),
        RequestRecord(0.0, [0.3, 0.4]),
        RequestRecord(0.1, error="HTTP 503"),
    ]
    result = summarize("s", 3, records, repeat=1)
    assert (result.requests, result.errors, result.tokens, result.repeat) == (3, 1, 6, 1)
    assert result.duration_s == pytest.approx(1.0) and result.tok_s == pytest.approx(6.0)
    assert result.ttft_p50_ms == pytest.approx(400.0)
    assert result.itl_p50_ms == pytest.approx(150.0)  # gaps 100, 200, 200 and 100 ms
    assert result.e2e_p95_ms == pytest.approx(1000 * (0.4 + 0.95 * 0.6))


def test_a_level_with_no_tokens_reports_zero_throughput() -> None:
    result = summarize("s", 1, [RequestRecord(2.0, error="refused")])
    assert (result.tok_s, result.errors) == (0.0, 1) and math.isnan(result.ttft_p50_ms)


def _result(system: str, c: int, tok_s: float, repeat: int, itl: float = 10.0) -> LevelResult:
    return LevelResult(system, c, c, 0, 64 * c, 1.0, float(tok_s), 1.0, 1.0, itl, itl, 1.0, 1.0, repeat)


RESULTS = [
    _result("generate", 8, 100, 0, itl=20),
    _result("generate", 8, 120, 1, itl=18),
    _result("lmi-0.23-portable", 8, 90, 0, itl=22),
    _result("lmi-0.23-portable", 8, 96, 1, itl=21),
    _result("lmi-newest-portable", 8, 80, 0),
    _result("lmi-newest-portable", 8, 99, 1),
    _result("naive", 8, 12, 0),
    _result("naive", 8, 12, 1),
]


def test_best_runs_keep_the_fastest_repeat() -> None:
    best = {r.system: r.repeat for r in best_runs(RESULTS)}
    assert best == {"generate": 1, "lmi-0.23-portable": 1, "lmi-newest-portable": 1, "naive": 0}


def test_ratios_pair_repeats_and_give_their_range() -> None:
    found = ratio(RESULTS, "lmi-0.23-portable", "generate", 8)
    assert found.best == pytest.approx(96 / 120)
    assert (found.low, found.high) == (pytest.approx(0.8), pytest.approx(0.9))
    assert ratio(RESULTS, "lmi-0.23-portable", "generate", 32) is None


def test_compare_ratios_cover_the_limit_peers_naive_and_protocols() -> None:
    pairs = {(r.top, r.bottom) for r in compare_ratios(RESULTS)}
    assert ("lmi-0.23-portable", "generate") in pairs and ("naive", "generate") in pairs
    assert ("lmi-newest-portable", "naive") in pairs
    assert ("lmi-newest-portable", "lmi-0.23-portable") in pairs
    assert not any(bottom == "transformers-serve" for _, bottom in pairs)  # it did not run


def test_overhead_is_the_itl_above_the_static_batch_step() -> None:
    assert overhead_ms(RESULTS, "lmi-0.23-portable", "generate", 8) == pytest.approx(21 - 18)
    rows = stack_overheads(RESULTS)
    assert {(row["system"], row["concurrency"]) for row in rows} == {
        ("lmi-0.23-portable", 8),
        ("lmi-newest-portable", 8),
    }


def test_the_markdown_report_holds_every_level_and_ratio() -> None:
    best = best_runs(RESULTS)
    table = markdown_table(best)
    assert len(table.splitlines()) == 2 + len(best) and "| naive | 8 | 12.0 |" in table
    meta = {
        "target": "t",
        "command": "lmi bench --compare",
        "model": "m",
        "prompt": "32 tokens",
        "max_new_tokens": 64,
        "rounds": 1,
        "repeats": 2,
        "machine": "x",
        "threads": {"naive": "2"},
    }
    report = markdown_report(meta, best, compare_ratios(RESULTS), stack_overheads(RESULTS))
    assert "`lmi bench --compare`" in report and "* naive: 2" in report
    assert "| lmi-newest-portable / lmi-0.23-portable | 8 |" in report and "ms/token" in report


def test_prompts_differ_and_have_the_asked_length_in_words() -> None:
    prompts = make_prompts(5, 12)
    assert len(set(prompts)) == 5 and all(len(p.split()) == 12 for p in prompts)
