"""SageMaker inference components on boto3: the base model as one inference component of an endpoint, and each LoRA
adapter under `adapters/` as an adapter inference component on top of it (CreateInferenceComponent with
`BaseInferenceComponentName` and the adapter's own artifact), and their removal before the endpoint's.

An endpoint that hosts inference components has an endpoint config whose variant names no model (the role moves to the
config); the model is named by the base component instead. Invocations pick a component by `InferenceComponentName`;
an adapter component's name is its adapter's folder name, the name the container serves it under, so
`lmi invoke --adapter NAME` answers alike from `lmi serve` and from SageMaker.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from botocore.exceptions import ClientError

from .lifecycle import DeployError, Deployment, describe, wait_for_status

ADAPTERS_DIR = "adapters"
BASE_SUFFIX = "-base"
DEFAULT_MEMORY_MB = 1024


@dataclass(frozen=True)
class Footprint:
    """What the base component reserves on an instance."""

    memory_mb: int = DEFAULT_MEMORY_MB
    accelerators: int = 0  # GPUs (Neuron cores) the component takes; 0 on CPU instances


def base_component_name(endpoint_name: str) -> str:
    return f"{endpoint_name}{BASE_SUFFIX}"


def create_base_component(sm_client: Any, deployment: Deployment, footprint: Footprint) -> str:
    """The base model's inference component (one copy); returns its name."""
    resources: dict[str, Any] = {"MinMemoryRequiredInMb": footprint.memory_mb}
    if footprint.accelerators:
        resources["NumberOfAcceleratorDevicesRequired"] = float(footprint.accelerators)
    name = base_component_name(deployment.endpoint_name)
    sm_client.create_inference_component(
        InferenceComponentName=name,
        EndpointName=deployment.endpoint_name,
        VariantName="AllTraffic",
        Specification={"ModelName": deployment.model_name, "ComputeResourceRequirements": resources},
        RuntimeConfig={"CopyCount": 1},
    )
    return name


def create_adapter_component(sm_client: Any, endpoint_name: str, base: str, adapter: str, artifact_url: str) -> None:
    """An adapter inference component on `base`, named like its adapter."""
    sm_client.create_inference_component(
        InferenceComponentName=adapter,
        EndpointName=endpoint_name,
        Specification={"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": artifact_url}},
    )


def adapter_artifacts(tarball: Path) -> dict[str, bytes]:
    """Each adapter that model.tar.gz ships under adapters/<name>/, as its own artifact (its files at the root of a
    tar.gz), by name."""
    files: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) > 2 and parts[0] == ADAPTERS_DIR:
                content = archive.extractfile(member)
                assert content is not None  # a regular file's
                files.setdefault(parts[1], []).append((member, content.read()))
    return {name: _pack(entries) for name, entries in sorted(files.items())}


def _pack(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, content in entries:
            info = tarfile.TarInfo("/".join(member.name.split("/")[2:]))
            info.size, info.mtime, info.mode = len(content), member.mtime, member.mode
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def hosts_components(sm_client: Any, endpoint_name: str) -> bool:
    """Whether an endpoint hosts inference components (its config's variants name no model)."""
    config_name = describe(sm_client.describe_endpoint, EndpointName=endpoint_name).get("EndpointConfigName")
    if config_name is None:
        return False
    config = describe(sm_client.describe_endpoint_config, EndpointConfigName=config_name)
    variants: list[dict[str, Any]] = config.get("ProductionVariants") or []
    return bool(variants) and all("ModelName" not in variant for variant in variants)


def wait_for_component(
    sm_client: Any,
    name: str,
    *,
    delay: float = 15.0,
    timeout: float = 3600.0,
    on_status: Callable[[str], None] | None = None,
) -> None:
    """Poll DescribeInferenceComponent until InService; Failed or the timeout raise DeployError."""
    wait_for_status(
        lambda: cast(dict[str, Any], sm_client.describe_inference_component(InferenceComponentName=name)),
        f"inference component {name}",
        "InferenceComponentStatus",
        delay=delay,
        timeout=timeout,
        on_status=on_status,
    )


def endpoint_components(sm_client: Any, endpoint_name: str) -> dict[str, dict[str, Any]]:
    """The endpoint's inference components: name -> Specification."""
    pages = sm_client.get_paginator("list_inference_components").paginate(EndpointNameEquals=endpoint_name)
    names = [item["InferenceComponentName"] for page in pages for item in page["InferenceComponents"]]
    return {
        name: sm_client.describe_inference_component(InferenceComponentName=name)["Specification"] for name in names
    }


def delete_components(
    sm_client: Any, endpoint_name: str, *, delay: float = 15.0, timeout: float = 1800.0
) -> tuple[list[str], list[str]]:
    """Delete the endpoint's inference components, adapters before what they are based on, each wave waited out
    (SageMaker deletes the endpoint only once none is left). Returns what was deleted (as `kind name` strings) and
    the models the other components served."""
    found = endpoint_components(sm_client, endpoint_name)
    adapters = [name for name, spec in found.items() if "BaseInferenceComponentName" in spec]
    others = [name for name in found if name not in adapters]
    deleted = []
    for wave in (adapters, others):
        for name in wave:
            sm_client.delete_inference_component(InferenceComponentName=name)
            deleted.append(f"inference-component {name}")
        _wait_gone(sm_client, wave, delay, timeout)
    return deleted, sorted({found[name]["ModelName"] for name in others if "ModelName" in found[name]})


def _wait_gone(sm_client: Any, names: list[str], delay: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while _exists(sm_client, name):
            if time.monotonic() + delay > deadline:
                raise DeployError(f"inference component {name} still deleting after {timeout:g}s")
            time.sleep(delay)


def _exists(sm_client: Any, name: str) -> bool:
    try:
        sm_client.describe_inference_component(InferenceComponentName=name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationException":
            return False
        raise
    return True
