"""The boto3 `sagemaker-runtime` client that `lmi invoke`, `lmi demo`, `lmi chat` and `lmi bench` call an endpoint
through, local or in AWS.

For an `endpoint_url` (`lmi serve`'s) there are no retries, the region defaults to us-east-1 and dummy credentials
are used when none are configured; otherwise the standard AWS chain picks the endpoint
(AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME included).
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
from botocore.config import Config

#: the endpoint name `lmi serve` answers to by default
DEFAULT_ENDPOINT = "local"
LOCAL_REGION = "us-east-1"
_METADATA_PROVIDERS = ("container-role", "iam-role")


def runtime_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 sagemaker-runtime client; for an `endpoint_url`: no retries, a default region, dummy credentials."""
    core = botocore.session.get_session()
    session = boto3.Session(botocore_session=core, region_name=region)
    if endpoint_url is None:
        return session.client("sagemaker-runtime")
    dummy = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    credentials: dict[str, Any] = {} if _configured_credentials(core) else dummy
    return session.client(
        "sagemaker-runtime",
        endpoint_url=endpoint_url,
        region_name=session.region_name or LOCAL_REGION,
        config=Config(retries={"max_attempts": 1}),
        **credentials,
    )


def _configured_credentials(core: botocore.session.Session) -> bool:
    """Whether the environment or AWS config files hold credentials (instance metadata is not asked)."""
    resolver = core.get_component("credential_provider")
    for name in _METADATA_PROVIDERS:
        resolver.remove(name)
    return core.get_credentials() is not None
