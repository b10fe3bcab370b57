"""Session hooks and the fixtures shared by the suite.

This file is also loaded by the LMI 0.23 tier (Python 3.9, no boto3): fixtures import boto3 and the test servers
(client_support, runtime_support) inside their bodies, so only the tests that use them need those packages.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import reliability_figures

if TYPE_CHECKING:
    from client_support import FrameServer
    from runtime_support import RuntimeServer

#: The vLLM tier's tests import vllm, which only .venv-vllm has; elsewhere they are not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["test_vllm_engine.py", "test_vllm_lora.py"]
#: The GPU tier (tests/gpu) needs CUDA: only `--gpu-tier` (tests/gpu/run.sh, `make test-gpu`) collects it.
GPU_TIER = Path(__file__).resolve().parent / "gpu"


def pytest_addoption(parser) -> None:
    parser.addoption("--gpu-tier", action="store_true", help="collect the GPU tier, tests/gpu (needs CUDA)")


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Leave tests/gpu out of every run but the GPU tier's, even when it is named on the command line."""
    if not config.getoption("--gpu-tier") and collection_path.resolve().is_relative_to(GPU_TIER):
        return True
    return None


#: per_test_timeout's limit
TIMEOUT_S = 30.0


def pytest_configure(config) -> None:
    """Tests never reach a model hub: every model they load is built locally (before any test module imports
    transformers, which reads this once)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Every slow test is an integration test too (before `-m` selects), so `-m "not integration"` leaves it out."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Write the reliability figures into the README once the whole suite of them passed."""
    if exitstatus == 0:
        reliability_figures.write_readme()


@pytest.fixture
def per_test_timeout() -> Iterator[None]:
    """Fail a test that runs longer than TIMEOUT_S (SIGALRM interrupts a hung loop or socket read).

    A module opts in with `pytestmark = pytest.mark.usefixtures("per_test_timeout")`."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test exceeded {TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def frame_server() -> Iterator[FrameServer]:
    """A FrameServer (client_support) on a free port: answers every POST with its `chunks`."""
    from client_support import FrameServer

    server = FrameServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # shutdown() waits a poll
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def runtime_client(frame_server: FrameServer) -> object:
    """An unmodified boto3 sagemaker-runtime client pointed at the frame server, without retries."""
    from runtime_support import client_for

    return client_for(frame_server.url)


@pytest.fixture
def runtime_server() -> Iterator[RuntimeServer]:
    """The runtime API (runtime_support) over a scripted fake container, on a free port; 2 s stream time limit."""
    from lmikit.server.runtime import RuntimeConfig
    from runtime_support import ENDPOINT, REGION, RuntimeServer

    server = RuntimeServer(RuntimeConfig(endpoint_name=ENDPOINT, region=REGION, stream_time_limit=2.0))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.container.response.cancel()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server in this process on a free port, for a module's AWS control-plane calls."""
    from lmikit.launch import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS configuration from the machine: no credentials, profiles, region or endpoint variables."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
