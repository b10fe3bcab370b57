"""build → deploy → update → status → logs → delete through the `lmi` CLI against moto in server mode, plus the deploy
helpers' edge cases. moto 5.2.1 lacks UpdateEndpoint: `_moto_update_endpoint` adds it, as SageMaker documents it,
and `lmi update` also runs against botocore's Stubber on the real service model.

moto runs in-process (ThreadedMotoServer) and is reached through AWS_ENDPOINT_URL, exactly as a real endpoint
would be: the product code gets no test hooks.
"""

from __future__ import annotations

import datetime
import io
import tarfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from click.testing import CliRunner, Result
from lmikit.aws import endpoint_logs, lifecycle
from lmikit.cli import main
from lmikit.embedded_model import ensure_tiny_model
from local_endpoint import REPO, serve
from moto import mock_aws
from moto.sagemaker.models import FakeEndpointConfig
from project_factory import make_project

ROLE = "arn:aws:iam::123456789012:role/lmi-test"
BUCKET = "lmi-test-artifacts"
DJL_0_23 = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.23.0-deepspeed0.9.5-cu118"
FAST_WAIT = ["--poll-delay", "0.05", "--wait-timeout", "30"]


def _dummy_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> boto3.session.Session:
    """A boto3 session on the moto server; the CLI reaches the same server through AWS_ENDPOINT_URL.

    moto has no InvokeEndpointWithResponseStream: the lifecycle test points AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME
    at a local endpoint serving the uploaded artifact.
    """
    _dummy_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    # moto 5.2.1 validates instance types against an old list without ml.g5.*; the server runs in this process.
    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)
    session = boto3.session.Session()
    s3 = session.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return session


def _lmi(*args: str) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def _deploy(*args: str) -> Result:
    """Run `lmi deploy` (polling quickly); stdout is the endpoint name alone."""
    result = _lmi("deploy", "--role", ROLE, "--bucket", BUCKET, *FAST_WAIT, *args)
    assert result.exit_code == 0, result.output
    return result


def _gone(call, **kwargs: str) -> bool:
    try:
        call(**kwargs)
    except ClientError:
        return True
    return False


@pytest.mark.integration
def test_build_deploy_delete_lifecycle(
    aws: boto3.session.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / "dist" / "model.tar.gz"
    build = _lmi("build", REPO, "--out", tarball)
    assert build.exit_code == 0, build.output
    assert "for djl-deepspeed:0.23.0; option.generation_engine=auto will use the portable engine" in build.stderr

    deployed = _deploy("--tarball", tarball)
    endpoint = deployed.stdout.strip()
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    assert endpoint.startswith("lmi-model-")
    assert f"Endpoint {endpoint} is InService" in deployed.stderr
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint)["ProductionVariants"][0]
    assert (config["InstanceType"], config["InitialInstanceCount"]) == ("ml.g5.2xlarge", 1)
    assert config["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    container = sm.describe_model(ModelName=config["ModelName"])["PrimaryContainer"]
    key = f"lmi/{endpoint}/model.tar.gz"
    assert (container["Image"], container["ModelDataUrl"]) == (DJL_0_23, f"s3://{BUCKET}/{key}")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == tarball.read_bytes()

    # The artifact that was uploaded, served locally under the endpoint's name, stands in for the container.
    served = tmp_path / "served"
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())) as archive:
        archive.extractall(served, filter="data")
    with serve(
        served, "--model-id", str(ensure_tiny_model()), "--option", "dtype=fp32", "--endpoint-name", endpoint
    ) as local:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", local.url)
        invoked = _lmi("invoke", "Tell me a story", "--endpoint", endpoint, "--max-new-tokens", "12")
    assert invoked.exit_code == 0, invoked.output
    assert invoked.stdout.strip() and "12 tokens" in invoked.stderr and "TTFT" in invoked.stderr

    delete = _lmi("delete", "--endpoint", endpoint, "--artifacts")
    assert delete.exit_code == 0, delete.output
    assert _gone(sm.describe_endpoint, EndpointName=endpoint)
    assert _gone(sm.describe_endpoint_config, EndpointConfigName=endpoint)
    assert _gone(sm.describe_model, ModelName=config["ModelName"])
    assert _gone(s3.head_object, Bucket=BUCKET, Key=key)

    again = _lmi("delete", "--endpoint", endpoint, "--artifacts")
    assert again.exit_code == 0 and "nothing to delete" in again.stderr


def test_deploy_builds_first_and_delete_keeps_artifacts_by_default(aws: boto3.session.Session, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    deployed = _deploy(
        "--project-dir",
        project,
        "--endpoint-name",
        "my-endpoint",
        "--no-wait",
        "--image",
        "djl-lmi:0.36.0",
        "--prefix",
        "custom/prefix",
        "--health-check-timeout",
        600,
    )
    endpoint = deployed.stdout.strip()
    assert endpoint == "my-endpoint" and "InService" not in deployed.stderr
    assert "warning" not in deployed.stderr and "for djl-lmi:0.36.0" in deployed.stderr, "built for that image"
    assert (project / "dist" / "model.tar.gz").is_file()
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint)["ProductionVariants"][0]
    assert config["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert sm.describe_model(ModelName=endpoint)["PrimaryContainer"]["Image"].endswith(
        "djl-inference:0.36.0-lmi27.0.0-cu130"
    )
    assert _lmi("delete", "--endpoint", endpoint).exit_code == 0
    assert _gone(sm.describe_model, ModelName=endpoint)
    s3.head_object(Bucket=BUCKET, Key="custom/prefix/my-endpoint/model.tar.gz")


def test_deploy_refuses_an_invalid_project(aws: boto3.session.Session, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "model" / "model.py").unlink()
    result = _lmi("deploy", "--project-dir", project, "--role", ROLE, "--bucket", BUCKET, "--endpoint-name", "bad")
    assert result.exit_code == 1
    assert "model.py" in result.stderr
    assert _gone(aws.client("sagemaker").describe_model, ModelName="bad")


def test_deploy_refuses_more_ranks_than_the_instance_has_gpus(aws: boto3.session.Session, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    properties = (
        (project / "serving.properties")
        .read_text()
        .replace("option.tensor_parallel_degree=1", "option.tensor_parallel_degree=4")
    )
    (project / "serving.properties").write_text(properties.replace("engine=Python", "engine=MPI"))
    result = _lmi(
        "deploy",
        "--project-dir",
        project,
        "--role",
        ROLE,
        "--bucket",
        BUCKET,
        "--endpoint-name",
        "tp",
        "--instance-type",
        "ml.g5.2xlarge",
    )
    assert result.exit_code == 1
    assert "option.tensor_parallel_degree=4 needs 4 GPUs; ml.g5.2xlarge has 1" in result.stderr
    assert not (project / "dist").exists(), "nothing is built or uploaded"


def test_deploy_with_two_instances_autoscales_1_to_4_and_delete_removes_the_scaling(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    project = make_project(tmp_path)
    _deploy(
        "--project-dir",
        project,
        "--endpoint-name",
        "scaled",
        "--image",
        "djl-lmi:0.36.0",
        "--instance-count",
        "2",
        "--autoscale",
        "1:4",
        "--target-invocations",
        "12",
    )
    sm, scaling = aws.client("sagemaker"), aws.client("application-autoscaling")
    config = sm.describe_endpoint_config(EndpointConfigName="scaled")["ProductionVariants"][0]
    assert config["InitialInstanceCount"] == 2
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        "endpoint/scaled/variant/AllTraffic",
        1,
        4,
    )
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling" and tracking["TargetValue"] == 12
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    result = _lmi("delete", "--endpoint", "scaled")
    assert result.exit_code == 0 and "scalable-target endpoint/scaled/variant/AllTraffic" in result.output
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--autoscale", "4:1"), "use MIN:MAX with 1 <= MIN <= MAX"),
        (("--autoscale", "2:4"), "--instance-count 1 is outside 2:4"),
        (("--autoscale", "1:4", "--no-wait"), "drop --no-wait"),
    ],
)
def test_bad_autoscale_settings_are_refused_before_anything_is_created(
    aws: boto3.session.Session, tmp_path: Path, args: tuple, message: str
) -> None:
    result = _lmi(
        "deploy",
        "--project-dir",
        make_project(tmp_path),
        "--role",
        ROLE,
        "--bucket",
        BUCKET,
        "--endpoint-name",
        "never",
        *args,
    )
    assert result.exit_code == 2 and message in result.output
    assert _gone(aws.client("sagemaker").describe_endpoint, EndpointName="never")


def _moto_update_endpoint(self) -> object:
    """UpdateEndpoint, which moto 5.2.1 lacks, as SageMaker documents it: the new config goes live, or (here: when its
    image names "broken") the old one keeps serving with a FailureReason."""
    from moto.core.responses import ActionResult

    backend, name = self.sagemaker_backend, self._get_param("EndpointName")
    config = backend.endpoint_configs[self._get_param("EndpointConfigName")]
    endpoint = backend.endpoints[name]
    image = backend._models[config.production_variants[0]["ModelName"]].primary_container["Image"]
    if "broken" in image:
        endpoint.failure_reason = "The primary container for production variant AllTraffic did not pass the ping"
    else:
        endpoint.endpoint_config_name, endpoint.failure_reason = config.endpoint_config_name, None
    return ActionResult({"EndpointArn": endpoint.arn})


@pytest.fixture
def updatable(aws: boto3.session.Session, monkeypatch: pytest.MonkeyPatch) -> boto3.session.Session:
    from moto.sagemaker.responses import SageMakerResponse

    monkeypatch.setattr(SageMakerResponse, "update_endpoint", _moto_update_endpoint, raising=False)
    return aws


def _update(*args: str) -> Result:
    return _lmi("update", "--role", ROLE, "--bucket", BUCKET, "--poll-delay", "0.05", "--wait-timeout", "30", *args)


def test_update_rolls_out_versions_and_retires_the_old_ones(updatable: boto3.session.Session, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    _deploy("--project-dir", project, "--endpoint-name", "blue", "--image", "djl-lmi:0.36.0")
    sm = updatable.client("sagemaker")
    for version in ("blue-v2", "blue-v3"):
        result = _update("--endpoint", "blue", "--project-dir", project, "--image", "djl-lmi:0.36.0")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == version
        assert sm.describe_endpoint(EndpointName="blue")["EndpointConfigName"] == version
    configs = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    models = {m["ModelName"] for m in sm.list_models()["Models"]}
    assert "blue-v3" in configs and not configs & {"blue", "blue-v2"}
    assert "blue-v3" in models and not models & {"blue", "blue-v2"}
    data = sm.describe_model(ModelName="blue-v3")["PrimaryContainer"]["ModelDataUrl"]
    assert data == f"s3://{BUCKET}/lmi/blue/blue-v3/model.tar.gz"
    _lmi("delete", "--endpoint", "blue")


def test_a_failed_update_keeps_the_old_version_serving(updatable: boto3.session.Session, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    _deploy("--project-dir", project, "--endpoint-name", "green", "--image", "djl-lmi:0.36.0")
    result = _update(
        "--endpoint",
        "green",
        "--project-dir",
        project,
        "--image",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/broken:1",
    )
    assert result.exit_code == 1 and "did not pass the ping" in result.output
    sm = updatable.client("sagemaker")
    assert sm.describe_endpoint(EndpointName="green")["EndpointConfigName"] == "green"
    assert _gone(sm.describe_endpoint_config, EndpointConfigName="green-v2")
    assert _gone(sm.describe_model, ModelName="green-v2")
    _lmi("delete", "--endpoint", "green")


def _described(name: str, config: str, status: str) -> dict:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
    return {
        "EndpointName": name,
        "EndpointArn": arn,
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": when,
        "LastModifiedTime": when,
    }


def test_update_speaks_sagemakers_own_request_shapes(
    aws: boto3.session.Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`lmi update` against botocore's Stubber on the real SageMaker service model: every request is validated against
    the model's shapes and must carry exactly these parameters (S3 stays on moto), so a changed request shape fails
    here even where moto lacks the call."""
    sm = aws.client("sagemaker")
    real_client = boto3.session.Session.client
    monkeypatch.setattr(
        boto3.session.Session,
        "client",
        lambda self, name, *a, **k: sm if name == "sagemaker" else real_client(self, name, *a, **k),
    )
    image = lifecycle.resolve_image("djl-lmi:0.36.0", "us-east-1")
    url = f"s3://{BUCKET}/lmi/blue/blue-v2/model.tar.gz"
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "blue",
        "InitialInstanceCount": 2,
        "InstanceType": "ml.g5.xlarge",
    }
    arn = "arn:aws:sagemaker:us-east-1:123456789012:"
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("blue", "blue", "InService"), {"EndpointName": "blue"})
        stub.add_response("describe_endpoint", _described("blue", "blue", "InService"), {"EndpointName": "blue"})
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": "blue",
                "EndpointConfigArn": arn + "endpoint-config/blue",
                "ProductionVariants": [variant],
                "CreationTime": when,
            },
            {"EndpointConfigName": "blue"},
        )
        stub.add_response(
            "create_model",
            {"ModelArn": arn + "model/blue-v2"},
            {
                "ModelName": "blue-v2",
                "ExecutionRoleArn": ROLE,
                "PrimaryContainer": {"Image": image, "ModelDataUrl": url},
            },
        )
        new_variant = {**variant, "ModelName": "blue-v2", "ContainerStartupHealthCheckTimeoutInSeconds": ANY}
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": arn + "endpoint-config/blue-v2"},
            {"EndpointConfigName": "blue-v2", "ProductionVariants": [new_variant]},
        )
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": arn + "endpoint/blue"},
            {"EndpointName": "blue", "EndpointConfigName": "blue-v2"},
        )
        stub.add_response("describe_endpoint", _described("blue", "blue", "Updating"), {"EndpointName": "blue"})
        stub.add_response("describe_endpoint", _described("blue", "blue-v2", "InService"), {"EndpointName": "blue"})
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "blue"})
        stub.add_response("delete_model", {}, {"ModelName": "blue"})
        result = _update("--endpoint", "blue", "--project-dir", make_project(tmp_path), "--image", "djl-lmi:0.36.0")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "blue-v2"
        stub.assert_no_pending_responses()


def test_status_lists_each_endpoint_with_its_instances_image_and_model_data(
    aws: boto3.session.Session, tmp_path: Path
) -> None:
    project = make_project(tmp_path)
    names = ["status-a", "status-b"]
    for name in names:
        _deploy("--project-dir", project, "--endpoint-name", name, "--image", "djl-lmi:0.36.0")
    result = _lmi("status")
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.output
    one = _lmi("status", "--endpoint", "status-a")
    assert one.exit_code == 0 and "status-a" in one.output and "status-b" not in one.output
    assert "InService" in one.output and "1 x ml.g5.2xlarge" in one.output
    assert "djl-inference:0.36.0" in one.output and "s3://lmi-test-artifacts/" in one.output
    missing = _lmi("status", "--endpoint", "nope")
    assert missing.exit_code == 1 and "nope" in missing.output
    for name in names:
        _lmi("delete", "--endpoint", name)


def test_deploy_requires_a_role(tmp_path: Path) -> None:
    result = _lmi("deploy", "--project-dir", make_project(tmp_path))
    assert result.exit_code == 2 and "--role" in result.stderr


def test_deploy_rejects_an_unknown_image(aws: boto3.session.Session, tmp_path: Path) -> None:
    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"x")
    result = _lmi("deploy", "--tarball", tarball, "--role", ROLE, "--bucket", BUCKET, "--image", "djl-lmi:9.9")
    assert result.exit_code == 1 and "Unsupported djl-lmi version" in result.stderr


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("djl-deepspeed:0.23.0", DJL_0_23),
        ("djl-lmi:0.28.0", "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.28.0-lmi10.0.0-cu124"),
        ("123.dkr.ecr.eu-west-1.amazonaws.com/mine:1", "123.dkr.ecr.eu-west-1.amazonaws.com/mine:1"),
    ],
)
def test_resolve_image(image: str, expected: str) -> None:
    assert lifecycle.resolve_image(image, "us-east-1") == expected


@pytest.mark.parametrize("image", ["tgi:1.0", "djl-lmi", "djl-lmi:9.9"])
def test_resolve_image_rejects(image: str) -> None:
    with pytest.raises(lifecycle.DeployError, match="--image"):
        lifecycle.resolve_image(image, "us-east-1")


class _ScriptedEndpoint:
    """A DescribeEndpoint that walks through the given statuses (the last one repeats)."""

    def __init__(self, *statuses: str, reason: str = "") -> None:
        self.statuses, self.reason, self.calls = list(statuses), reason, 0

    def describe_endpoint(self, EndpointName: str) -> dict:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return {"EndpointName": EndpointName, "EndpointStatus": status, "FailureReason": self.reason}


def test_wait_reports_each_status_until_in_service() -> None:
    seen: list[str] = []
    client = _ScriptedEndpoint("Creating", "Creating", "InService")
    lifecycle.wait_for_endpoint(client, "ep", delay=0.01, timeout=5, on_status=seen.append)
    assert seen == ["Creating", "Creating", "InService"]


def test_wait_raises_with_the_failure_reason() -> None:
    client = _ScriptedEndpoint("Creating", "Failed", reason="health check did not pass in 900 s")
    with pytest.raises(lifecycle.DeployError, match="health check did not pass"):
        lifecycle.wait_for_endpoint(client, "ep", delay=0.01, timeout=5)


def test_wait_times_out() -> None:
    with pytest.raises(lifecycle.DeployError, match="still Creating"):
        lifecycle.wait_for_endpoint(_ScriptedEndpoint("Creating"), "ep", delay=0.01, timeout=0.05)


def test_default_bucket_is_the_sdk_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _dummy_credentials(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():  # decorator mode: STS is intercepted too (server mode would need --bucket)
        assert lifecycle.default_bucket(boto3.session.Session()) == "sagemaker-us-east-1-123456789012"


# -- lmi logs ---------------------------------------------------------------------------------------------------
def _plant(session: boto3.session.Session, endpoint: str, messages: list[str], age_s: float = 60.0) -> None:
    logs = session.client("logs")
    group = endpoint_logs.LOG_GROUP.format(endpoint)
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0123")
    now = int((time.time() - age_s) * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName="AllTraffic/i-0123",
        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)],
    )


def test_logs_prints_the_planted_lines_in_order(aws: boto3.session.Session) -> None:
    _plant(aws, "logs-a", ["Python engine started.", "Model loaded.", "lmistream ready"])
    result = _lmi("logs", "--endpoint", "logs-a", "--since", "1h")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == ["Python engine started.", "Model loaded.", "lmistream ready"]
    assert all("AllTraffic/i-0123" in line for line in lines)
    assert _lmi("logs", "--endpoint", "logs-a", "--since", "10s").stdout == ""  # older than the window


def test_missing_log_group_and_bad_since_are_clear_errors(aws: boto3.session.Session) -> None:
    missing = _lmi("logs", "--endpoint", "never-started")
    assert missing.exit_code == 1 and "/aws/sagemaker/Endpoints/never-started" in missing.output
    bad = _lmi("logs", "--endpoint", "x", "--since", "ten minutes")
    assert bad.exit_code == 2 and "use a number and one of s, m, h, d" in bad.output


def test_follow_yields_new_lines_once(aws: boto3.session.Session) -> None:
    _plant(aws, "logs-b", ["one"])
    logs = aws.client("logs")
    group = endpoint_logs.LOG_GROUP.format("logs-b")
    polls = []

    def wait() -> bool:
        polls.append(1)
        if len(polls) == 1:
            logs.put_log_events(
                logGroupName=group,
                logStreamName="AllTraffic/i-0123",
                logEvents=[{"timestamp": int(time.time() * 1000), "message": "two"}],
            )
        return len(polls) >= 3

    start = int((time.time() - 3600) * 1000)
    seen = [event["message"] for event in endpoint_logs.follow(logs, "logs-b", start, wait)]
    assert seen == ["one", "two"]


def test_last_lines_are_the_newest_and_empty_without_logs(aws: boto3.session.Session) -> None:
    _plant(aws, "logs-c", [f"line {i}" for i in range(30)])
    lines = endpoint_logs.last_lines(aws.client("logs"), "logs-c", count=3)
    assert [line.rsplit(" ", 2)[-2:] for line in lines] == [["line", "27"], ["line", "28"], ["line", "29"]]
    assert endpoint_logs.last_lines(aws.client("logs"), "nothing-here") == []


def test_since_formats() -> None:
    assert endpoint_logs.parse_since("30s") == 30 and endpoint_logs.parse_since("2h") == 7200
    with pytest.raises(ValueError):
        endpoint_logs.parse_since("5w")


def test_a_failed_deploy_prints_the_last_container_lines_then_the_reason(aws: boto3.session.Session) -> None:
    from lmikit.commands.deploy import wait_in_service
    from rich.console import Console

    _plant(aws, "broken", ["Python engine started.", "ConfigError: option.model_id is required"])

    class FailedEndpoint:
        def describe_endpoint(self, EndpointName: str) -> dict:
            return {"EndpointStatus": "Failed", "FailureReason": "health check failed"}

    out = io.StringIO()
    with pytest.raises(lifecycle.DeployError, match="health check failed"):
        wait_in_service(FailedEndpoint(), aws.client("logs"), "broken", 0.01, 1.0, Console(file=out, width=200))
    printed = out.getvalue()
    assert "Last container log lines of broken:" in printed
    assert printed.index("Python engine started.") < printed.index("ConfigError: option.model_id is required")
