"""The GPU tier's fixtures and its summary (`gpu_summary`): collected only with `--gpu-tier` (tests/gpu/run.sh).

Every check runs on GPU 0. `LMIKIT_GPU_TIER_DEVICE=cpu` rehearses the tier on a CPU instead: that runs the tier's own
code (its fixtures, the summary, the servers it starts) where no GPU is lent, and proves nothing about CUDA; its
summary says so. Each check records figures through `record`; a skip gives its reason, which the summary prints.
"""

from __future__ import annotations

import datetime
import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import transformers
from gpu_summary import Summary
from lmikit.benchmarks import engine_bench
from lmikit.embedded_model import ensure_tiny_model

DEVICE = os.environ.get("LMIKIT_GPU_TIER_DEVICE", "cuda")
SUMMARY = Summary(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
STARTED = time.monotonic()
Record = Callable[..., None]


def _environment() -> dict[str, str]:
    where = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (a rehearsal: no CUDA path ran)"
    return {
        "device": where,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
    }


def pytest_collection_modifyitems(config, items) -> None:
    """Stop at once without CUDA. Without --gpu-tier nothing here runs: the root conftest leaves tests/gpu out, and a
    file of it named on the command line is deselected."""
    if not config.getoption("--gpu-tier"):
        here = Path(__file__).parent
        named = [item for item in items if item.path.is_relative_to(here)]
        if named:
            items[:] = [item for item in items if item not in named]
            config.hook.pytest_deselected(items=named)
        return
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.exit("the GPU tier needs a CUDA GPU and torch sees none: run it with tests/gpu/run.sh on a GPU host", 2)
    SUMMARY.environment = _environment()


def pytest_runtest_logreport(report) -> None:
    """Each check's outcome (a failed setup or teardown counts), and the files rewritten at once."""
    name = report.nodeid.split("::", 1)[-1]
    if report.when == "call" or report.outcome != "passed":
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed:
            reason = str(report.longrepr).strip().splitlines()[-1][:300]
        if report.when == "call" or report.failed or SUMMARY.check(name).outcome == "running":
            SUMMARY.finish(name, report.outcome, reason)
    _write()


def pytest_terminal_summary(terminalreporter, config) -> None:
    if not config.getoption("--gpu-tier"):
        return
    terminalreporter.write_line("")
    terminalreporter.write_line(SUMMARY.text())


def _write() -> None:
    SUMMARY.seconds = time.monotonic() - STARTED
    out = os.environ.get("OUT")
    if out:
        SUMMARY.write(Path(out))


@pytest.fixture
def record(request) -> Record:
    """record(name=value, ..., report=text): figures of the running check, kept in the summary."""
    check = SUMMARY.check(request.node.nodeid.split("::", 1)[-1])

    def add(report: str = "", **figures: float | str) -> None:
        check.figures.update(figures)
        check.report = report or check.report

    return add


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda", 0) if DEVICE == "cuda" else torch.device("cpu")


@pytest.fixture(scope="session")
def device_id() -> str:
    """The handler's device_id option for that device."""
    return "0" if DEVICE == "cuda" else "-1"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """engine_bench's random SmolLM2-shaped model (30 layers, SmolLM2's tokenizer), built here."""
    return engine_bench.build_bench_model(tmp_path_factory.mktemp("bench-model"))


@pytest.fixture(autouse=True)
def released_memory(device: torch.device) -> Iterator[None]:
    """Each check starts with the device's memory free of the last one's engines and without an allocator cap."""
    yield
    gc.collect()
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
