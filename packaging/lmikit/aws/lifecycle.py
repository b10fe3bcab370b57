"""The blog's deploy lifecycle on boto3: upload model.tar.gz, create model/config/endpoint, wait, delete.

Clients and sessions are injected, so regions, credentials and endpoints come only from the standard AWS chain
(AWS_ENDPOINT_URL included). SageMaker SDK v2 is used for what it adds: image URIs, names and the default bucket.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from botocore.exceptions import ClientError

logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
logging.getLogger("sagemaker.deprecations").setLevel(logging.ERROR)  # the v2-to-v3 nudge, logged beside its warning

DEFAULT_IMAGE = "djl-deepspeed:0.23.0"
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
DEFAULT_HEALTH_CHECK_TIMEOUT = 900
DEFAULT_NAME_BASE = "lmi-model"
IMAGE_FRAMEWORKS = ("djl-deepspeed", "djl-lmi")


class DeployError(Exception):
    """A deploy step failed in a way the user can act on (bad image, failed endpoint, timeout)."""


@dataclass(frozen=True)
class Deployment:
    """The resources one deploy created (model and endpoint config share the endpoint's name)."""

    endpoint_name: str
    model_name: str
    endpoint_config_name: str
    model_data_url: str
    image_uri: str


def upload_artifact(
    s3_client: Any, path: Path | str, bucket: str, key: str, progress: Callable[[int], None] | None = None
) -> str:
    """Upload `path` to s3://bucket/key; `progress` gets byte counts as they go. Returns the S3 URI."""
    s3_client.upload_file(str(path), bucket, key, Callback=progress)
    return f"s3://{bucket}/{key}"


def default_bucket(boto_session: Any) -> str:
    """SDK v2's default bucket (sagemaker-<region>-<account>, created if missing; calls STS)."""
    with _sdk_v2():
        from sagemaker.session import Session

        return cast(str, Session(boto_session=boto_session).default_bucket())


def resolve_image(image: str, region: str) -> str:
    """`djl-deepspeed:<version>` / `djl-lmi:<version>` → ECR URI for `region`; a full URI passes through."""
    if "/" in image:
        return image
    framework, _, version = image.partition(":")
    if framework not in IMAGE_FRAMEWORKS or not version:
        raise DeployError(
            f"--image {image!r}: use {' or '.join(f + ':<version>' for f in IMAGE_FRAMEWORKS)} or a full image URI"
        )
    with _sdk_v2():
        from sagemaker import image_uris

        try:
            return cast(str, image_uris.retrieve(framework=framework, region=region, version=version))
        except ValueError as exc:
            raise DeployError(f"--image {image!r}: {exc}") from None


def endpoint_name_from_base(base: str = DEFAULT_NAME_BASE) -> str:
    """A unique endpoint name the way the blog makes one (base plus a timestamp)."""
    with _sdk_v2():
        from sagemaker.utils import name_from_base

        return cast(str, name_from_base(base))


def deploy(
    sm_client: Any,
    *,
    endpoint_name: str,
    image_uri: str,
    model_data_url: str,
    role: str,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    health_check_timeout: int = DEFAULT_HEALTH_CHECK_TIMEOUT,
    instance_count: int = 1,
    for_components: bool = False,
) -> Deployment:
    """Create the model, the endpoint config (`instance_count` instances) and the endpoint; does not wait.
    `for_components`: an endpoint that hosts inference components (its variant names no model, the config the role),
    the model to be named by a component."""
    deployment = Deployment(endpoint_name, endpoint_name, endpoint_name, model_data_url, image_uri)
    sm_client.create_model(
        ModelName=deployment.model_name,
        ExecutionRoleArn=role,
        PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data_url},
    )
    variant: dict[str, Any] = {
        "VariantName": "AllTraffic",
        "ModelName": deployment.model_name,
        "InitialInstanceCount": instance_count,
        "InstanceType": instance_type,
        "ContainerStartupHealthCheckTimeoutInSeconds": health_check_timeout,
    }
    config: dict[str, Any] = {"EndpointConfigName": deployment.endpoint_config_name, "ProductionVariants": [variant]}
    if for_components:
        del variant["ModelName"]
        config["ExecutionRoleArn"] = role
    sm_client.create_endpoint_config(**config)
    sm_client.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=deployment.endpoint_config_name)
    return deployment


def wait_for_status(
    describe_call: Callable[[], dict[str, Any]],
    what: str,
    status_key: str,
    *,
    delay: float = 15.0,
    timeout: float = 3600.0,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll a Describe* call until InService (returns the description); Failed or timeout raise DeployError."""
    deadline = time.monotonic() + timeout
    while True:
        description = describe_call()
        status = description[status_key]
        if on_status is not None:
            on_status(status)
        if status == "InService":
            return description
        if status == "Failed":
            reason = description.get("FailureReason", "no FailureReason given")
            raise DeployError(f"{what} failed: {reason}")
        if time.monotonic() + delay > deadline:
            raise DeployError(f"{what} still {status} after {timeout:g}s")
        time.sleep(delay)


def wait_for_endpoint(
    sm_client: Any,
    endpoint_name: str,
    *,
    delay: float = 15.0,
    timeout: float = 3600.0,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll DescribeEndpoint until InService (returns the description); Failed or timeout raise DeployError."""
    return wait_for_status(
        lambda: cast(dict[str, Any], sm_client.describe_endpoint(EndpointName=endpoint_name)),
        f"endpoint {endpoint_name}",
        "EndpointStatus",
        delay=delay,
        timeout=timeout,
        on_status=on_status,
    )


def delete(
    sm_client: Any, s3_client: Any, endpoint_name: str, artifacts: bool = False, models: Sequence[str] = ()
) -> list[str]:
    """Delete the endpoint, its config, its model(s) (its variants' and `models`, those its inference components
    served) and, with `artifacts`, the model data in S3.

    Idempotent: resources already gone are skipped. Returns what was deleted, as `kind name` strings.
    """
    config_name = describe(sm_client.describe_endpoint, EndpointName=endpoint_name).get(
        "EndpointConfigName", endpoint_name
    )
    variants = describe(sm_client.describe_endpoint_config, EndpointConfigName=config_name).get(
        "ProductionVariants", [{"ModelName": endpoint_name}]
    )
    model_names = sorted({*(variant["ModelName"] for variant in variants if "ModelName" in variant), *models})
    data_urls = [
        describe(sm_client.describe_model, ModelName=name).get("PrimaryContainer", {}).get("ModelDataUrl")
        for name in model_names
    ]
    deleted = [
        *_delete(sm_client.delete_endpoint, "endpoint", EndpointName=endpoint_name),
        *_delete(sm_client.delete_endpoint_config, "endpoint-config", EndpointConfigName=config_name),
        *(item for name in model_names for item in _delete(sm_client.delete_model, "model", ModelName=name)),
    ]
    if artifacts:
        deleted += [_delete_s3_object(s3_client, url) for url in data_urls if url and url.startswith("s3://")]
    return deleted


VERSIONED = re.compile(r"^(?P<base>.+)-v(?P<version>\d+)$")


def next_version(endpoint_name: str, config_name: str) -> str:
    """`<endpoint>-v<N+1>` after `<endpoint>-v<N>`; the first deploy (named like the endpoint) counts as v1."""
    match = VERSIONED.match(config_name)
    version = int(match.group("version")) + 1 if match and match.group("base") == endpoint_name else 2
    return f"{endpoint_name}-v{version}"


def update(
    sm_client: Any,
    *,
    endpoint_name: str,
    model_data_url: str,
    image_uri: str,
    role: str,
    version_name: str,
    health_check_timeout: int = DEFAULT_HEALTH_CHECK_TIMEOUT,
) -> tuple[str, list[str]]:
    """Create `version_name`'s model and endpoint config (the live variant's instances) and start SageMaker's
    blue/green UpdateEndpoint; returns (the config that was live, its model names)."""
    live_config = sm_client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    variant = sm_client.describe_endpoint_config(EndpointConfigName=live_config)["ProductionVariants"][0]
    sm_client.create_model(
        ModelName=version_name,
        ExecutionRoleArn=role,
        PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data_url},
    )
    sm_client.create_endpoint_config(
        EndpointConfigName=version_name,
        ProductionVariants=[
            {
                "VariantName": variant["VariantName"],
                "ModelName": version_name,
                "InitialInstanceCount": variant.get("InitialInstanceCount", 1),
                "InstanceType": variant["InstanceType"],
                "ContainerStartupHealthCheckTimeoutInSeconds": health_check_timeout,
            }
        ],
    )
    sm_client.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=version_name)
    return live_config, [variant["ModelName"]]


def wait_for_update(
    sm_client: Any, endpoint_name: str, version_name: str, *, delay: float = 15.0, timeout: float = 3600.0
) -> None:
    """Until the endpoint serves `version_name`; DeployError with SageMaker's FailureReason when the update ends
    with the old config still live (SageMaker rolls back) or the endpoint Failed."""
    deadline = time.monotonic() + timeout
    while True:
        description = sm_client.describe_endpoint(EndpointName=endpoint_name)
        status = description["EndpointStatus"]
        if status == "InService" and description["EndpointConfigName"] == version_name:
            return
        if status in ("InService", "Failed"):
            reason = description.get("FailureReason", "no FailureReason given")
            raise DeployError(
                f"update of {endpoint_name} to {version_name} failed ({status}, "
                f"{description['EndpointConfigName']} serving): {reason}"
            )
        if time.monotonic() + delay > deadline:
            raise DeployError(f"endpoint {endpoint_name} still {status} after {timeout:g}s")
        time.sleep(delay)


def retire(sm_client: Any, config_name: str, model_names: list[str]) -> list[str]:
    """Delete an endpoint config and its models that no longer serve (missing ones are skipped)."""
    return [
        *_delete(sm_client.delete_endpoint_config, "endpoint-config", EndpointConfigName=config_name),
        *(item for name in model_names for item in _delete(sm_client.delete_model, "model", ModelName=name)),
    ]


def describe(call: Callable[..., dict[str, Any]], **kwargs: str) -> dict[str, Any]:
    """A Describe* result, or {} when the resource does not exist."""
    try:
        return call(**kwargs)
    except ClientError as exc:
        if _is_missing(exc):
            return {}
        raise


def _delete(call: Callable[..., dict[str, Any]], kind: str, **kwargs: str) -> list[str]:
    try:
        call(**kwargs)
    except ClientError as exc:
        if _is_missing(exc):
            return []
        raise
    return [f"{kind} {next(iter(kwargs.values()))}"]


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "Could not find" in error.get("Message", "")


def _delete_s3_object(s3_client: Any, url: str) -> str:
    bucket, _, key = url[len("s3://") :].partition("/")
    s3_client.delete_object(Bucket=bucket, Key=key)
    return f"s3-object {url}"


@contextmanager
def _sdk_v2() -> Iterator[None]:
    """Use SageMaker SDK v2 without its v2-to-v3 migration nudge (a FutureWarning at import and on some calls)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
