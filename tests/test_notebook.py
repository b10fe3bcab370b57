"""notebooks/deploy_and_stream.ipynb, executed by nbclient in a real kernel against the local stand-ins: moto (in this
process) for SageMaker and S3, `lmi serve` with the tiny model for the endpoint's runtime. Every cell must succeed,
the streamed answer must be in the executed notebook's outputs, and nothing may be left in moto afterwards.

The executed notebook is kept in build/test-artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import nbformat
import pytest
from lmikit.client import invoke_stream
from lmikit.client.runtime_client import runtime_client
from lmikit.embedded_model import ensure_tiny_model
from lmikit.launch import free_port
from local_endpoint import REPO, make_project, serve
from moto.sagemaker.models import FakeEndpointConfig
from moto.server import ThreadedMotoServer
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOK = REPO / "notebooks" / "deploy_and_stream.ipynb"
EXECUTED = REPO / "build" / "test-artifacts" / "deploy_and_stream.ipynb"
ENDPOINT = "lmi-notebook-test"
BUCKET = "lmi-notebook-artifacts"
ROLE = "arn:aws:iam::123456789012:role/lmi-notebook"
#: run after the notebook's own cells: what it asked the endpoint, so the test can ask the same
PROBE = 'print(json.dumps({"prompt": PROMPT, "parameters": PARAMETERS}))'
NO_TELEMETRY = "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # moto 5.2.1 validates instance types against an old list without ml.g5.*; its server runs in this process.
    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def local_aws(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> boto3.session.Session:
    """The kernel's environment (it inherits this process's): moto for the control plane, dummy credentials, the
    notebook's settings, and the SageMaker SDK's telemetry off (it would call AWS)."""
    (tmp_path / "sagemaker-config.yaml").write_text(NO_TELEMETRY)
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_ENDPOINT_URL": moto_url,
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(tmp_path / "sagemaker-config.yaml"),
        "LMI_ENDPOINT_NAME": ENDPOINT,
        "LMI_BUCKET": BUCKET,
        "SAGEMAKER_ROLE_ARN": ROLE,
        "LMI_POLL_SECONDS": "0.1",
    }.items():
        monkeypatch.setenv(name, value)
    session = boto3.session.Session()
    session.client("s3").create_bucket(Bucket=BUCKET)
    return session


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("name") == "stdout")


def test_the_notebook_deploys_streams_and_cleans_up(
    local_aws: boto3.session.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "project", (REPO / "serving.properties").read_text())
    monkeypatch.setenv("LMI_PROJECT_DIR", str(project))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    with serve(project, "--model-id", str(ensure_tiny_model()), "--endpoint-name", ENDPOINT) as local:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", local.url)
        try:
            NotebookClient(
                notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
            ).execute()
        finally:
            EXECUTED.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, EXECUTED)
        asked = json.loads(_stdout(notebook.cells[-1]))
        expected = invoke_stream(runtime_client(local.url), ENDPOINT, asked["prompt"], asked["parameters"]).text()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    [streaming] = [cell for cell in code if " tokens, first after " in _stdout(cell)]
    assert expected.strip() and _stdout(streaming).startswith(expected + "\n\n"), (_stdout(streaming), expected)
    assert len(streaming.outputs) > 3, "the answer was printed piece by piece as it streamed"
    outputs = [_stdout(cell) for cell in code]
    assert any(f"{ENDPOINT}: InService" in output for output in outputs)
    sagemaker = local_aws.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert sagemaker.list_models()["Models"] == []
    assert local_aws.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
