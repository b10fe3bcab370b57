"""The README's benchmark tables are what the benchmarks' JSON under docs/bench renders (a hand edit, or a new run
whose README was not regenerated, fails here), and each renderer reads its file's figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmikit.benchmarks import readme_tables

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_tables_are_rendered_from_the_bench_files() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tables = readme_tables.renderers(REPO / "docs" / "bench")
    assert {match.group("name") for match in readme_tables.BLOCK.finditer(readme)} == set(tables)
    assert readme_tables.render(readme, tables) == readme, (
        "a README table differs from its file: run python -m lmikit.benchmarks.readme_tables"
    )


def _level(system: str, c: int, tok_s: float, ttft: float, repeat: int = 0) -> dict:
    return {"system": system, "concurrency": c, "tok_s": tok_s, "ttft_p50_ms": ttft, "repeat": repeat}


def test_the_compare_tables_take_each_systems_best_run() -> None:
    document = {
        "results": [
            _level("generate", 8, 100.0, 300.0),
            _level("lmi-newest-portable", 8, 90.0, 320.0),
            _level("lmi-newest-portable", 8, 95.0, 310.0, repeat=1),
        ]
    }
    table = readme_tables.compare_table(document)
    assert "| `lmi serve` newest, portable | 95.0 [0.95] |" in table
    assert "| static-batch `generate` (limit) | 100.0 |" in table
    assert "| `lmi serve` newest, portable | 310.0 |" in readme_tables.compare_ttft_table(document)


def test_the_engine_table_shows_each_ratio_with_its_range() -> None:
    stack = {"python": "3.9.18", "torch": "2.0.1", "transformers": "4.30.2"}
    ratio = {"concurrency": 8, "ratio": "portable/generate", "best": 0.91, "low": 0.88, "high": 0.93}
    table = readme_tables.engine_table([{"stack": stack, "ratios": [ratio]}])
    assert "| Python 3.9.18, torch 2.0.1, transformers 4.30.2 | 8 | 0.91 [0.88–0.93] | — | — |" in table


def test_the_vllm_table_sets_each_path_against_the_server() -> None:
    document = {
        "results": [_level("vllm-openai", 8, 200.0, 100.0), _level("lmi-rolling", 8, 190.0, 104.0)],
        "ratios": [
            {"top": "lmi-rolling", "bottom": "vllm-openai", "concurrency": 8, "best": 0.95, "low": 0.9, "high": 1}
        ],
    }
    assert "| 8 | 200.0 | 190.0 [0.90–1.00] | 1.04 |" in readme_tables.vllm_table(document)


def test_a_block_naming_no_known_table_is_an_error() -> None:
    with pytest.raises(KeyError, match="typo"):
        readme_tables.render("<!-- table: typo -->\nx\n<!-- end table -->", {})
