"""`lmi serve` fails with one clear line, and exits, when it cannot serve."""

import socket
import subprocess
import sys

import pytest
from lmikit.embedded_model import ensure_tiny_model
from local_endpoint import make_project

pytestmark = pytest.mark.integration


def lmi_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmikit", "serve", *args], capture_output=True, text=True, timeout=120)


def test_a_port_in_use_is_named(tmp_path):
    project = make_project(tmp_path / "p", "engine=Python\noption.rolling_batch=custom\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lmi_serve("--project-dir", str(project), "--port", str(port), "--model-id", str(ensure_tiny_model()))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


def test_a_model_that_fails_to_load_says_why_and_exits(tmp_path):
    project = make_project(tmp_path / "p", "engine=Python\noption.rolling_batch=custom\noption.dtype=fp8\n")
    result = lmi_serve("--project-dir", str(project), "--port", "0", "--model-id", str(ensure_tiny_model()))
    assert result.returncode == 1
    assert "Failed to initialize model" in result.stderr and "option.dtype='fp8'" in result.stderr
