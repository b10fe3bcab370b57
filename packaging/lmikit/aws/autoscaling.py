"""Application Auto Scaling for an endpoint's variant: a scalable target between MIN and MAX instances with a
target-tracking policy on SageMakerVariantInvocationsPerInstance (invocations per instance per minute), and its
removal before the endpoint is deleted."""

from __future__ import annotations

from typing import Any

VARIANT = "AllTraffic"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
#: invocations per instance per minute that the policy holds: a streaming LLM request often lasts tens of seconds
DEFAULT_TARGET_INVOCATIONS = 30.0
SCALE_IN_COOLDOWN_S, SCALE_OUT_COOLDOWN_S = 300, 60


def resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def parse_range(text: str) -> tuple[int, int]:
    """'MIN:MAX' with 1 <= MIN <= MAX; ValueError naming the format."""
    low, sep, high = text.partition(":")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()) or not 1 <= int(low) <= int(high):
        raise ValueError(f"--autoscale {text!r}: use MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4")
    return int(low), int(high)


def enable(
    client: Any, endpoint_name: str, minimum: int, maximum: int, target: float = DEFAULT_TARGET_INVOCATIONS
) -> None:
    """Register the variant and attach the target-tracking policy."""
    resource = resource_id(endpoint_name)
    client.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        MinCapacity=minimum,
        MaxCapacity=maximum,
    )
    client.put_scaling_policy(
        PolicyName=f"{endpoint_name}-invocations",
        ServiceNamespace=NAMESPACE,
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
        },
    )


def disable(client: Any, endpoint_name: str) -> list[str]:
    """Delete the policies and deregister the variant (nothing when it was never registered)."""
    resource = resource_id(endpoint_name)
    deleted = []
    policies = client.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION
    )["ScalingPolicies"]
    for policy in policies:
        client.delete_scaling_policy(
            PolicyName=policy["PolicyName"],
            ServiceNamespace=NAMESPACE,
            ResourceId=resource,
            ScalableDimension=DIMENSION,
        )
        deleted.append(f"scaling-policy {policy['PolicyName']}")
    registered = client.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[resource], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    if registered:
        client.deregister_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION)
        deleted.append(f"scalable-target {resource}")
    return deleted
