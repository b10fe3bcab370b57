"""Which endpoint `lmi chat` talks to: a SageMaker endpoint by name, or a runtime URL such as `lmi serve`'s.

`lmi chat` resolves its flags against the environment once, then hands the result to the Streamlit page through
the environment: `endpoint_name` (the variable the blog's chatbot reads) and `LMI_ENDPOINT_URL`. With neither a
name nor a URL, the page talks to the local endpoint `lmi serve` starts by default. A runtime URL is also asked
for `GET /v1/models` (`lmi serve` lists the base model, then its LoRA adapters); SageMaker's runtime API has no such
call, so a SageMaker endpoint lists nothing.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..client.runtime_client import DEFAULT_ENDPOINT, runtime_client

ENDPOINT_NAME_VARIABLE = "endpoint_name"
ENDPOINT_URL_VARIABLE = "LMI_ENDPOINT_URL"
LOCAL_URL = "http://127.0.0.1:8080"
MODELS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ChatTarget:
    """An endpoint name, and the runtime URL to reach it at (None: SageMaker, through the AWS configuration)."""

    endpoint_name: str
    endpoint_url: str | None

    @classmethod
    def resolve(cls, endpoint_name: str | None, endpoint_url: str | None, environ: Mapping[str, str]) -> ChatTarget:
        """Flags first, then the environment; a URL without a name gets `lmi serve`'s default name."""
        name = endpoint_name or environ.get(ENDPOINT_NAME_VARIABLE) or None
        url = endpoint_url or environ.get(ENDPOINT_URL_VARIABLE) or None
        if name is None and url is None:
            return cls(DEFAULT_ENDPOINT, LOCAL_URL)
        return cls(name or DEFAULT_ENDPOINT, url)

    def environment(self) -> dict[str, str]:
        """The variables that make `resolve` give this target again, in the page's process."""
        variables = {ENDPOINT_NAME_VARIABLE: self.endpoint_name}
        if self.endpoint_url is not None:
            variables[ENDPOINT_URL_VARIABLE] = self.endpoint_url
        return variables

    def describe(self) -> str:
        """`name (SageMaker)` or `name (url)`, for people."""
        where = "SageMaker" if self.endpoint_url is None else self.endpoint_url
        return f"{self.endpoint_name} ({where})"

    def client(self) -> Any:
        """A boto3 sagemaker-runtime client for this target (see `lmikit.invoke.runtime_client`)."""
        return runtime_client(self.endpoint_url)

    def models(self) -> list[str]:
        """The model ids the runtime URL's `GET /v1/models` lists, base model first; none when it does not answer."""
        if self.endpoint_url is None:
            return []
        url = f"{self.endpoint_url.rstrip('/')}/v1/models"
        try:
            with urllib.request.urlopen(url, timeout=MODELS_TIMEOUT_S) as reply:
                listing = json.load(reply)
        except (OSError, ValueError):
            return []
        entries = listing.get("data") if isinstance(listing, dict) else None
        return [entry["id"] for entry in entries or [] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
