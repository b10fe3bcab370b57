"""`lmi deploy` and `lmi update`: upload model.tar.gz, then create an endpoint or roll a new version out to one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from ..aws import autoscaling, components, endpoint_logs, instances, lifecycle
from ..project.layout import Project, TensorParallelDegree
from .common import DEFAULT_TARBALL, aws_errors, validated_build

_Command = TypeVar("_Command", bound=Callable[..., Any])


def artifact_options(command: _Command) -> _Command:
    """What deploy and update share: the project or tarball, the role, where the artifact goes, the image."""
    options = [
        click.option(
            "--project-dir",
            default=".",
            show_default=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Project to build when no --tarball is given.",
        ),
        click.option(
            "--tarball",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A built model.tar.gz (default: build the project first).",
        ),
        click.option("--role", required=True, help="IAM execution role ARN for the model (never guessed)."),
        click.option("--bucket", help="S3 bucket for the artifact (default: the SageMaker SDK's default bucket)."),
        click.option("--prefix", default="lmi", show_default=True, help="S3 key prefix."),
        click.option(
            "--image",
            default=lifecycle.DEFAULT_IMAGE,
            show_default=True,
            help="djl-deepspeed:<version>, djl-lmi:<version> or a full image URI.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("deploy")
@artifact_options
@click.option("--instance-type", default=lifecycle.DEFAULT_INSTANCE_TYPE, show_default=True)
@click.option("--instance-count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--autoscale", metavar="MIN:MAX", help="Scale the instance count between MIN and MAX (needs --wait).")
@click.option(
    "--target-invocations",
    default=autoscaling.DEFAULT_TARGET_INVOCATIONS,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Invocations per instance per minute that --autoscale holds.",
)
@click.option(
    "--health-check-timeout",
    default=lifecycle.DEFAULT_HEALTH_CHECK_TIMEOUT,
    show_default=True,
    type=click.IntRange(60, 3600),
    help="ContainerStartupHealthCheckTimeoutInSeconds.",
)
@click.option("--endpoint-name", help="Endpoint name (default: a unique name from 'lmi-model').")
@click.option(
    "--inference-components",
    is_flag=True,
    help="Host the model as an inference component (<endpoint>-base) and each LoRA adapter under adapters/ as an "
    "adapter inference component named like the adapter (needs --wait).",
)
@click.option(
    "--component-memory",
    default=components.DEFAULT_MEMORY_MB,
    show_default=True,
    type=click.IntRange(min=128),
    help="With --inference-components: MiB of instance memory the base component reserves.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the endpoint is InService.")
@click.option(
    "--poll-delay",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between DescribeEndpoint polls.",
)
@click.option(
    "--wait-timeout",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for InService before giving up.",
)
def deploy_command(
    project_dir: Path,
    tarball: Path | None,
    role: str,
    bucket: str | None,
    prefix: str,
    image: str,
    instance_type: str,
    instance_count: int,
    autoscale: str | None,
    target_invocations: float,
    health_check_timeout: int,
    endpoint_name: str | None,
    inference_components: bool,
    component_memory: int,
    wait: bool,
    poll_delay: float,
    wait_timeout: float,
) -> None:
    """Upload model.tar.gz and create a SageMaker endpoint for it; prints the endpoint name."""
    console = Console(stderr=True)
    scale = _scale_range(autoscale, instance_count, wait)
    if inference_components and (not wait or scale is not None):
        raise click.UsageError(
            "--inference-components creates the components once the endpoint is InService: drop --no-wait; "
            "--autoscale scales a variant's instances, not components: drop it"
        )
    degree: TensorParallelDegree = None
    with aws_errors():
        if tarball is None:
            project = Project.at(project_dir)
            degree = project.tensor_parallel_degree
            instances.check_gpus(instance_type, degree)
            tarball = validated_build(project, project_dir / DEFAULT_TARBALL, image, console, instance_type).path
        session = boto3.session.Session()
        if not session.region_name:
            raise click.UsageError("no AWS region: set AWS_REGION/AWS_DEFAULT_REGION or a profile region")
        image_uri = lifecycle.resolve_image(image, session.region_name)
        name = endpoint_name or lifecycle.endpoint_name_from_base()
        bucket = bucket or lifecycle.default_bucket(session)
        key = "/".join(part for part in (prefix.strip("/"), name, "model.tar.gz") if part)
        model_data_url = _upload(session.client("s3"), tarball, bucket, key, console)
        sm_client = session.client("sagemaker")
        deployment = lifecycle.deploy(
            sm_client,
            endpoint_name=name,
            image_uri=image_uri,
            model_data_url=model_data_url,
            role=role,
            instance_type=instance_type,
            health_check_timeout=health_check_timeout,
            instance_count=instance_count,
            for_components=inference_components,
        )
        console.print(f"Creating endpoint [bold]{name}[/] ({instance_count} x {instance_type}, {image_uri})")
        if wait:
            wait_in_service(sm_client, session.client("logs"), name, poll_delay, wait_timeout, console)
        if inference_components:
            footprint = components.Footprint(component_memory, _accelerators(instance_type, degree))
            artifacts = components.adapter_artifacts(tarball)
            folder = key.rsplit("/", 1)[0]
            s3_client = session.client("s3")
            uploads = {
                adapter: _upload_bytes(s3_client, content, bucket, f"{folder}/adapters/{adapter}.tar.gz")
                for adapter, content in artifacts.items()
            }
            _create_components(sm_client, deployment, footprint, uploads, poll_delay, wait_timeout, console)
        if scale is not None:
            autoscaling.enable(session.client("application-autoscaling"), name, *scale, target_invocations)
            console.print(
                f"Autoscaling {name} between {scale[0]} and {scale[1]} instances at "
                f"{target_invocations:g} invocations per instance per minute"
            )
    click.echo(name)


@click.command("update")
@click.option("--endpoint", "endpoint_name", required=True, help="The live endpoint to move to a new version.")
@artifact_options
@click.option("--poll-delay", default=15.0, show_default=True, type=click.FloatRange(min=0.01))
@click.option("--wait-timeout", default=3600.0, show_default=True, type=click.FloatRange(min=0))
def update_command(
    endpoint_name: str,
    project_dir: Path,
    tarball: Path | None,
    role: str,
    bucket: str | None,
    prefix: str,
    image: str,
    poll_delay: float,
    wait_timeout: float,
) -> None:
    """Roll a new version out to a live endpoint with no downtime (SageMaker's blue/green UpdateEndpoint).

    The new model and endpoint config are named <endpoint>-v<N>. After success the old ones are deleted; after a
    failure SageMaker keeps the old version serving, the new one is deleted and the FailureReason is printed.
    """
    console = Console(stderr=True)
    with aws_errors():
        session = boto3.session.Session()
        sm_client = session.client("sagemaker")
        live = sm_client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        version = lifecycle.next_version(endpoint_name, live)
        if tarball is None:
            tarball = validated_build(Project.at(project_dir), project_dir / DEFAULT_TARBALL, image, console).path
        image_uri = lifecycle.resolve_image(image, session.region_name)
        bucket = bucket or lifecycle.default_bucket(session)
        key = "/".join(part for part in (prefix.strip("/"), endpoint_name, version, "model.tar.gz") if part)
        url = _upload(session.client("s3"), tarball, bucket, key, console)
        old_config, old_models = lifecycle.update(
            sm_client,
            endpoint_name=endpoint_name,
            model_data_url=url,
            image_uri=image_uri,
            role=role,
            version_name=version,
        )
        console.print(f"Updating [bold]{endpoint_name}[/] from {old_config} to {version}")
        try:
            with console.status(f"{endpoint_name}: updating to {version}"):
                lifecycle.wait_for_update(sm_client, endpoint_name, version, delay=poll_delay, timeout=wait_timeout)
        except lifecycle.DeployError:
            for item in lifecycle.retire(sm_client, version, [version]):
                console.print(f"deleted {item} (the failed version)")
            raise
        for item in lifecycle.retire(sm_client, old_config, old_models):
            console.print(f"deleted {item}")
    console.print(f"Endpoint [bold]{endpoint_name}[/] serves {version}")
    click.echo(version)


def _scale_range(autoscale: str | None, instance_count: int, wait: bool) -> tuple[int, int] | None:
    """--autoscale as (MIN, MAX), checked against --instance-count and --wait."""
    if autoscale is None:
        return None
    try:
        low, high = autoscaling.parse_range(autoscale)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--autoscale") from None
    if not low <= instance_count <= high:
        raise click.BadParameter(f"--instance-count {instance_count} is outside {low}:{high}", param_hint="--autoscale")
    if not wait:
        raise click.UsageError("--autoscale registers the variant once it is InService: drop --no-wait")
    return low, high


def _accelerators(instance_type: str, degree: TensorParallelDegree) -> int:
    """The GPUs the base component takes: option.tensor_parallel_degree's (every GPU for max), none without GPUs."""
    gpus = instances.instance_gpus(instance_type)
    if not gpus:
        return 0
    if degree == "max":
        return gpus
    return 1 if degree is None else degree


def _upload_bytes(s3_client: Any, content: bytes, bucket: str, key: str) -> str:
    s3_client.put_object(Bucket=bucket, Key=key, Body=content)
    return f"s3://{bucket}/{key}"


def _create_components(
    sm_client: Any,
    deployment: lifecycle.Deployment,
    footprint: components.Footprint,
    adapters: dict[str, str],
    delay: float,
    timeout: float,
    console: Console,
) -> None:
    """The base component, then one adapter component per adapter artifact, each waited for until InService."""
    base = components.create_base_component(sm_client, deployment, footprint)
    _wait_component(sm_client, base, delay, timeout, console)
    for adapter, url in adapters.items():
        components.create_adapter_component(sm_client, deployment.endpoint_name, base, adapter, url)
        _wait_component(sm_client, adapter, delay, timeout, console)


def _wait_component(sm_client: Any, name: str, delay: float, timeout: float, console: Console) -> None:
    with console.status(f"{name}: creating") as status:
        components.wait_for_component(
            sm_client, name, delay=delay, timeout=timeout, on_status=lambda state: status.update(f"{name}: {state}")
        )
    console.print(f"Inference component [bold]{name}[/] is InService")


def _upload(s3_client: Any, tarball: Path, bucket: str, key: str, console: Console) -> str:
    columns = (TextColumn("Uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("upload", total=tarball.stat().st_size)
        url = lifecycle.upload_artifact(s3_client, tarball, bucket, key, lambda sent: progress.advance(task, sent))
    console.print(f"Uploaded {url}")
    return url


def wait_in_service(
    sm_client: Any, logs_client: Any, name: str, delay: float, timeout: float, console: Console
) -> None:
    """Wait for InService; on failure print the container's last log lines before the FailureReason."""
    try:
        with console.status(f"{name}: waiting") as status:
            lifecycle.wait_for_endpoint(
                sm_client, name, delay=delay, timeout=timeout, on_status=lambda state: status.update(f"{name}: {state}")
            )
    except lifecycle.DeployError:
        lines = endpoint_logs.last_lines(logs_client, name)
        console.print(f"Last container log lines of {name}:" if lines else f"No container logs for {name}.")
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        raise
    console.print(f"Endpoint [bold]{name}[/] is InService")
