"""The GPU tier's pieces that need no GPU: `make test-gpu` refuses at once without CUDA and says how to run it, the
main run never collects tests/gpu, and the tier's summary (`gpu_summary`) renders and lands in the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu_summary import END, README, START, Summary, with_figures

REPO = Path(__file__).resolve().parent.parent
ENV = {key: value for key, value in os.environ.items() if key != "LMIKIT_GPU_TIER_DEVICE"}


def _run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, env={**ENV, **env}, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA: make test-gpu would run the tier")
def test_make_test_gpu_without_cuda_stops_at_once_saying_how_to_run_it() -> None:
    result = _run("make", "-s", "test-gpu", f"GPU_PYTHON={sys.executable}")
    assert result.returncode != 0
    assert "the GPU tier needs CUDA" in result.stderr and "nothing was run" in result.stderr
    assert "bash tests/gpu/run.sh" in result.stderr and '[".whl", ".gpu-models"]' in result.stderr
    assert "GPU tier:" not in result.stdout, "it started the tier instead of stopping"
    direct = _run("bash", "tests/gpu/run.sh", PYTHON=sys.executable)
    assert direct.returncode == 2 and result.stderr.startswith(direct.stderr)


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, **env)


@pytest.mark.integration
def test_the_main_run_never_collects_the_gpu_tier() -> None:
    folder = _pytest("--collect-only", "tests/test_gpu_tier.py", "tests/gpu")  # the folder beside a main-run file
    assert folder.returncode == 0 and "tests/test_gpu_tier.py" in folder.stdout
    assert "tests/gpu/" not in folder.stdout and "deselected" not in folder.stdout
    named = _pytest("--collect-only", "tests/gpu")
    assert named.returncode == 5, named.stdout  # no tests collected, even when the folder is named
    file = _pytest("tests/gpu/test_nccl.py")
    assert file.returncode == 5 and "1 deselected" in file.stdout, file.stdout
    tier = _pytest("--gpu-tier", "--collect-only", "tests/gpu", LMIKIT_GPU_TIER_DEVICE="cpu")
    assert tier.returncode == 0 and "tests/gpu/test_cuda_engines.py::" in tier.stdout, tier.stdout


def _summary() -> Summary:
    summary = Summary(date="2026-12-03 10:00 UTC", environment={"device": "NVIDIA H200", "torch": "2.11.0"})
    summary.check("test_engine[fp16]").figures.update(tokens_compared=120, ratio=0.91234)
    summary.finish("test_engine[fp16]", "passed")
    summary.finish("test_vllm", "skipped", "vLLM is not installed")
    summary.check("test_oom").report = "a long\nreport"
    summary.finish("test_oom", "failed", "AssertionError: 424 != 507")
    summary.seconds = 312.4
    return summary


def test_the_summary_prints_each_check_with_its_figures_reason_and_report() -> None:
    text = _summary().text()
    assert text.splitlines()[0] == "GPU tier, 2026-12-03 10:00 UTC, 312 s: device NVIDIA H200, torch 2.11.0"
    assert "PASSED   test_engine[fp16]\n         tokens_compared = 120\n         ratio = 0.912" in text
    assert "SKIPPED  test_vllm: vLLM is not installed" in text
    assert "FAILED   test_oom: AssertionError: 424 != 507\n         a long\n         report" in text


def test_the_readme_block_dates_the_run_and_counts_outcomes() -> None:
    lines = _summary().markdown().splitlines()
    assert lines[0] == (
        "Last measured: 2026-12-03 10:00 UTC (1 failed, 1 passed, 1 skipped, 312 s), device NVIDIA H200, torch 2.11.0."
    )
    assert "- `test_engine[fp16]`: passed: tokens_compared 120; ratio 0.912" in lines
    assert "- `test_vllm`: skipped (vLLM is not installed)" in lines


def test_the_summary_written_under_out_reads_back_the_same(tmp_path: Path) -> None:
    summary = _summary()
    summary.write(tmp_path / "out")
    assert Summary.from_json((tmp_path / "out" / "gpu-summary.json").read_text()) == summary
    assert (tmp_path / "out" / "gpu-figures.md").read_text() == summary.markdown() + "\n"


def test_figures_replace_only_the_block_between_the_markers() -> None:
    readme = f"# Title\n\n{START}\nLast measured: never\n{END}\n\nmore\n"
    assert with_figures(readme, "new figures") == f"# Title\n\n{START}\nnew figures\n{END}\n\nmore\n"
    with pytest.raises(ValueError, match="no GPU-tier markers"):
        with_figures("# no markers\n", "x")


def test_the_readme_holds_the_markers_a_run_writes_between() -> None:
    text = README.read_text(encoding="utf-8")
    block = text[text.index(START) : text.index(END)]
    assert "Last measured:" in block
