"""`lmi bench` for real, at tiny sizes: every route against `lmi serve` with the tiny model, and `--compare`.
Sane numbers and files only: never a timing assertion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lmikit.embedded_model import ensure_tiny_model
from lmikit.launch import running_endpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--concurrency", "1,2", "--max-new-tokens", "4", "--prompt-tokens", "6"]


def lmi_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmikit", "bench", *args], capture_output=True, text=True, env=env, timeout=900, cwd=REPO
    )


@pytest.fixture(scope="module")
def endpoint():
    args = ["--project-dir", str(REPO), "--model-id", str(ensure_tiny_model()), "--djl-version", "newest"]
    with running_endpoint(args, {**os.environ, "HF_HUB_OFFLINE": "1"}) as running:
        yield running


def _check_outputs(out: Path, systems: set[str]) -> dict:
    document = json.loads((out / "bench.json").read_text())
    assert {r["system"] for r in document["best"]} == systems
    for result in document["results"]:
        assert result["errors"] == 0 and result["requests"] == result["concurrency"]
        assert 0 < result["tokens"] <= 4 * result["concurrency"] and result["tok_s"] > 0
        assert result["ttft_p50_ms"] > 0 and result["e2e_p50_ms"] >= result["ttft_p50_ms"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "bench.md").read_text()
    assert "| system | c | tok/s |" in markdown and "lmi bench" in markdown
    return document


@pytest.mark.parametrize("route", ["container", "runtime", "openai-chat"])
def test_every_route_of_a_local_endpoint(endpoint, tmp_path, route) -> None:
    result = lmi_bench("--url", endpoint.url, "--route", route, *SMALL, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    document = _check_outputs(tmp_path, {route})
    assert [r["concurrency"] for r in document["results"]] == [1, 2]
    assert "Wrote" in result.stderr and "c=2" in result.stderr


def test_prompts_from_a_file(endpoint, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nThe river ran\n")
    result = lmi_bench("--url", endpoint.url, "--prompt-file", str(prompts), *SMALL, "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "bench.json").read_text())["meta"]["prompt"] == "from prompts.txt"


def test_without_a_target_it_says_what_to_give(tmp_path) -> None:
    result = lmi_bench("--out", str(tmp_path))
    assert result.returncode == 2 and "--url" in result.stderr


@pytest.mark.slow
def test_compare_runs_the_limit_the_stack_a_peer_and_the_naive_handler(tmp_path) -> None:
    result = lmi_bench(
        "--compare",
        "--model-id",
        "tiny",
        "--engines",
        "portable",
        "--protocols",
        "0.23,newest",
        "--threads",
        "1",
        *SMALL,
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    systems = {"generate", "lmi-0.23-portable", "lmi-newest-portable", "transformers-serve", "naive"}
    document = _check_outputs(tmp_path, systems)
    assert set(document["meta"]["threads"]) == systems and "vllm: not installed" in result.stderr
    pairs = {(r["top"], r["bottom"]) for r in document["ratios"]}
    assert ("lmi-newest-portable", "lmi-0.23-portable") in pairs and ("lmi-0.23-portable", "naive") in pairs
    assert {o["system"] for o in document["overheads"]} == {"lmi-0.23-portable", "lmi-newest-portable"}


@pytest.mark.slow
def test_structured_runs_half_the_rows_under_a_schema_and_reports_the_ratio_and_the_masks_cost(tmp_path) -> None:
    from click.testing import CliRunner
    from lmikit.cli import main

    out = tmp_path / "structured"
    args = ["bench", "--structured", "--model-id", "tiny", "--concurrency", "4", "--max-new-tokens", "4"]
    result = CliRunner().invoke(main, [*args, "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "structured.json").read_text())
    assert report["stack"]["streams"] == 4 and report["stack"]["constrained_streams"] == 2
    assert set(report["tok_s"]) == {"unconstrained", "half constrained"} and min(report["tok_s"].values()) > 0
    assert report["ratio"]["low"] == report["ratio"]["best"] == report["ratio"]["high"] > 0  # one repeat
    assert report["mask_ms_per_step"] > 0 and 0 < report["mask_share"] < 1
    assert "ratio half constrained / unconstrained" in result.stderr and "ms per step" in result.stderr


@pytest.mark.parametrize("workload", ["chat", "lora"])
def test_the_compare_workloads_say_they_need_compare(tmp_path, workload) -> None:
    result = lmi_bench("--workload", workload, "--out", str(tmp_path))
    assert result.returncode == 2 and f"--workload {workload} runs with --compare" in result.stderr
