"""`make demo`'s path with the real embedded SmolLM2: a local endpoint answers a real question."""

import subprocess
import sys

import pytest
from local_endpoint import REPO

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_demo_streams_a_real_answer_about_paris():
    result = subprocess.run(
        [sys.executable, "-m", "lmikit", "demo"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Q: What is the capital of France?" in result.stdout
    answer = result.stdout.split("A: ", 1)[1]
    assert "Paris" in answer
    assert "TTFT" in result.stderr and "tok/s" in result.stderr
    assert "Endpoint stopped." in result.stdout
