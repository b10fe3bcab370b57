"""What `lmi status` shows of the deployed endpoints: each one's state, instances, image and model data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lifecycle import describe


@dataclass(frozen=True)
class EndpointStatus:
    """What `lmi status` shows of one endpoint."""

    name: str
    status: str
    created: str
    instance_type: str = "-"
    instance_count: int = 0
    image: str = "-"
    model_data_url: str = "-"
    failure_reason: str | None = None


def endpoint_statuses(sm_client: Any, endpoint_name: str | None = None) -> list[EndpointStatus]:
    """Every endpoint (or the one named), newest first, with its first variant's instances, image and model data."""
    if endpoint_name is not None:
        names = [endpoint_name]
    else:
        pages = sm_client.get_paginator("list_endpoints").paginate(SortBy="CreationTime", SortOrder="Descending")
        names = [item["EndpointName"] for page in pages for item in page["Endpoints"]]
    return [_status(sm_client, name) for name in names]


def _status(sm_client: Any, name: str) -> EndpointStatus:
    endpoint = sm_client.describe_endpoint(EndpointName=name)
    config = describe(sm_client.describe_endpoint_config, EndpointConfigName=endpoint.get("EndpointConfigName", ""))
    variant = (config.get("ProductionVariants") or [{}])[0]
    container = describe(sm_client.describe_model, ModelName=variant.get("ModelName", "")).get("PrimaryContainer", {})
    running = (endpoint.get("ProductionVariants") or [{}])[0]
    return EndpointStatus(
        name=name,
        status=endpoint["EndpointStatus"],
        created=str(endpoint.get("CreationTime", "-")),
        instance_type=variant.get("InstanceType", "-"),
        instance_count=running.get("CurrentInstanceCount", variant.get("InitialInstanceCount", 0)),
        image=container.get("Image", "-"),
        model_data_url=container.get("ModelDataUrl", "-"),
        failure_reason=endpoint.get("FailureReason"),
    )
