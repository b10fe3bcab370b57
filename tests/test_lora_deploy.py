"""`lmi deploy --inference-components` and `lmi delete` for an endpoint of inference components: the base model as one
component, each LoRA adapter as an adapter component on it (BaseInferenceComponentName, its own artifact in S3), and
the components removed (adapters first, each wave waited out) before the endpoint.

moto 5.2.1 has none of the inference-component calls and requires a model on every endpoint-config variant, so the
SageMaker control plane is botocore's Stubber on a client of the real service model (each request and each answer
is validated against SageMaker's own shapes); S3, where the adapter artifacts go, is moto in server mode.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner, Result
from lmikit.cli import main
from lmikit.embedded_model import ensure_tiny_model
from lora_support import RECIPES, make_adapter
from replay import MODEL_DIR

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/lmi-test"
BUCKET = "lmi-test-artifacts"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.23.0-deepspeed0.9.5-cu118"
ENDPOINT, BASE = "lora-ep", "lora-ep-base"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
FAST = ["--poll-delay", "0.01"]


@pytest.fixture
def sagemaker(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stubber]:
    """A Stubber on the SageMaker client the CLI gets; every other client is moto's."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_ENDPOINT_URL": moto_url,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.session.Session().client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    client = boto3.session.Session().client("sagemaker")
    real_client = boto3.session.Session.client
    monkeypatch.setattr(
        boto3.session.Session,
        "client",
        lambda self, service, *a, **k: client if service == "sagemaker" else real_client(self, service, *a, **k),
    )
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project serving the tiny model with the two PEFT adapters under model/adapters/."""
    root = tmp_path_factory.mktemp("lora-deploy")
    model = root / "model"
    model.mkdir()
    for name in ("model.py", "lmistream"):
        (model / name).symlink_to(MODEL_DIR / name)
    for recipe in RECIPES:
        make_adapter(ensure_tiny_model(), recipe, model / "adapters" / recipe.name)
    (root / "serving.properties").write_text(
        f"engine=Python\noption.model_id={ensure_tiny_model()}\noption.rolling_batch=auto\n"
        "option.tensor_parallel_degree=1\noption.enable_lora=true\n"
    )
    return root


def _component(name: str, status: str, specification: dict) -> dict:
    """DescribeInferenceComponent's answer."""
    return {
        "InferenceComponentName": name,
        "InferenceComponentArn": f"{ARN}inference-component/{name}",
        "EndpointName": ENDPOINT,
        "EndpointArn": f"{ARN}endpoint/{ENDPOINT}",
        "InferenceComponentStatus": status,
        "Specification": specification,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


def _endpoint(status: str) -> dict:
    return {
        "EndpointName": ENDPOINT,
        "EndpointArn": f"{ARN}endpoint/{ENDPOINT}",
        "EndpointConfigName": ENDPOINT,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


VARIANT = {
    "VariantName": "AllTraffic",
    "InstanceType": "ml.g5.2xlarge",
    "InitialInstanceCount": 1,
    "ContainerStartupHealthCheckTimeoutInSeconds": 900,
}
BASE_SPEC = {"ModelName": ENDPOINT, "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 2048}}
BASE_SPEC_GPU = {
    "ModelName": ENDPOINT,
    "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 2048, "NumberOfAcceleratorDevicesRequired": 1.0},
}


def _adapter_spec(name: str) -> dict:
    url = f"s3://{BUCKET}/lmi/{ENDPOINT}/adapters/{name}.tar.gz"
    return {"BaseInferenceComponentName": BASE, "Container": {"ArtifactUrl": url}}


def _lmi(*args: str) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_deploy_creates_the_base_component_then_one_adapter_component_per_adapter(
    sagemaker: Stubber, project: Path
) -> None:
    data_url = f"s3://{BUCKET}/lmi/{ENDPOINT}/model.tar.gz"
    container = {"Image": IMAGE, "ModelDataUrl": data_url}
    sagemaker.add_response(
        "create_model",
        {"ModelArn": f"{ARN}model/{ENDPOINT}"},
        {"ModelName": ENDPOINT, "ExecutionRoleArn": ROLE, "PrimaryContainer": container},
    )
    sagemaker.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}endpoint-config/{ENDPOINT}"},
        {"EndpointConfigName": ENDPOINT, "ExecutionRoleArn": ROLE, "ProductionVariants": [VARIANT]},
    )
    sagemaker.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}endpoint/{ENDPOINT}"},
        {"EndpointName": ENDPOINT, "EndpointConfigName": ENDPOINT},
    )
    sagemaker.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": ENDPOINT})
    created = [(BASE, BASE_SPEC_GPU), *((r.name, _adapter_spec(r.name)) for r in RECIPES)]
    for name, spec in created:
        request = {"InferenceComponentName": name, "EndpointName": ENDPOINT, "Specification": spec}
        if name == BASE:
            request.update(VariantName="AllTraffic", RuntimeConfig={"CopyCount": 1})
        sagemaker.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}ic/{name}"}, request)
        for status in ("Creating", "InService"):
            sagemaker.add_response(
                "describe_inference_component", _component(name, status, spec), {"InferenceComponentName": name}
            )
    result = _lmi(
        "deploy", "--project-dir", project, "--role", ROLE, "--bucket", BUCKET, "--image", IMAGE,
        "--endpoint-name", ENDPOINT, "--inference-components", "--component-memory", "2048", *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name, _ in created:
        assert f"Inference component {name} is InService" in result.stderr
    s3 = boto3.session.Session().client("s3")
    for recipe in RECIPES:
        body = s3.get_object(Bucket=BUCKET, Key=f"lmi/{ENDPOINT}/adapters/{recipe.name}.tar.gz")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            assert sorted(archive.getnames()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
            config = archive.extractfile("adapter_config.json")
            assert config is not None and json.load(config)["r"] == recipe.rank


def test_a_failed_adapter_component_fails_the_deploy_with_its_reason(sagemaker: Stubber, project: Path) -> None:
    for operation, answer in (
        ("create_model", {"ModelArn": f"{ARN}model/{ENDPOINT}"}),
        ("create_endpoint_config", {"EndpointConfigArn": f"{ARN}endpoint-config/{ENDPOINT}"}),
        ("create_endpoint", {"EndpointArn": f"{ARN}endpoint/{ENDPOINT}"}),
        ("describe_endpoint", _endpoint("InService")),
        ("create_inference_component", {"InferenceComponentArn": f"{ARN}ic/{BASE}"}),
        ("describe_inference_component", _component(BASE, "InService", BASE_SPEC)),
        ("create_inference_component", {"InferenceComponentArn": f"{ARN}ic/{RECIPES[0].name}"}),
    ):
        sagemaker.add_response(operation, answer)
    failed = {**_component(RECIPES[0].name, "Failed", _adapter_spec(RECIPES[0].name)), "FailureReason": "bad adapter"}
    sagemaker.add_response("describe_inference_component", failed)
    result = _lmi(
        "deploy", "--project-dir", project, "--role", ROLE, "--bucket", BUCKET, "--image", IMAGE,
        "--endpoint-name", ENDPOINT, "--inference-components", "--instance-type", "ml.m5.xlarge", *FAST,
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"inference component {RECIPES[0].name} failed: bad adapter" in result.output


def test_inference_components_refuse_no_wait_and_autoscale(project: Path) -> None:
    for extra in (["--no-wait"], ["--autoscale", "1:2"]):
        result = _lmi("deploy", "--project-dir", project, "--role", ROLE, "--inference-components", *extra)
        assert result.exit_code == 2
        assert "--inference-components creates the components once the endpoint is InService" in result.output


def test_delete_removes_the_adapter_components_then_the_base_then_the_endpoint(sagemaker: Stubber) -> None:
    adapters = [r.name for r in RECIPES]
    sagemaker.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": ENDPOINT})
    config = {
        "EndpointConfigName": ENDPOINT,
        "EndpointConfigArn": f"{ARN}endpoint-config/{ENDPOINT}",
        "ProductionVariants": [VARIANT],
        "CreationTime": NOW,
    }
    sagemaker.add_response("describe_endpoint_config", config, {"EndpointConfigName": ENDPOINT})
    summaries = [
        {
            "InferenceComponentName": name,
            "InferenceComponentArn": f"{ARN}ic/{name}",
            "EndpointName": ENDPOINT,
            "EndpointArn": f"{ARN}endpoint/{ENDPOINT}",
            "VariantName": "AllTraffic",
            "CreationTime": NOW,
            "LastModifiedTime": NOW,
        }
        for name in [BASE, *adapters]
    ]
    sagemaker.add_response(
        "list_inference_components", {"InferenceComponents": summaries}, {"EndpointNameEquals": ENDPOINT}
    )
    specs = {BASE: BASE_SPEC, **{name: _adapter_spec(name) for name in adapters}}
    for name, spec in specs.items():
        sagemaker.add_response("describe_inference_component", _component(name, "InService", spec))
    for wave in (adapters, [BASE]):
        for name in wave:
            sagemaker.add_response("delete_inference_component", {}, {"InferenceComponentName": name})
        for name in wave:
            sagemaker.add_response("describe_inference_component", _component(name, "Deleting", specs[name]))
            sagemaker.add_client_error(
                "describe_inference_component",
                "ValidationException",
                f"Could not find inference component '{ARN}inference-component/{name}'.",
            )
    sagemaker.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": ENDPOINT})
    sagemaker.add_response("describe_endpoint_config", config, {"EndpointConfigName": ENDPOINT})
    model = {
        "ModelName": ENDPOINT,
        "ModelArn": f"{ARN}model/{ENDPOINT}",
        "CreationTime": NOW,
        "PrimaryContainer": {"Image": IMAGE},
    }
    sagemaker.add_response("describe_model", model, {"ModelName": ENDPOINT})
    sagemaker.add_response("delete_endpoint", {}, {"EndpointName": ENDPOINT})
    sagemaker.add_response("delete_endpoint_config", {}, {"EndpointConfigName": ENDPOINT})
    sagemaker.add_response("delete_model", {}, {"ModelName": ENDPOINT})
    result = _lmi("delete", "--endpoint", ENDPOINT, *FAST)
    assert result.exit_code == 0, result.output
    order = [line.removeprefix("deleted ") for line in result.stderr.splitlines() if line.startswith("deleted ")]
    assert order == [
        *(f"inference-component {name}" for name in [*adapters, BASE]),
        f"endpoint {ENDPOINT}",
        f"endpoint-config {ENDPOINT}",
        f"model {ENDPOINT}",
    ]
