"""The request side of the SageMaker runtime API on the local endpoint: the operation a path names, the service's
validation of a request, and the headers the container sees.

Validation gives the service's 400 ValidationError cases, worded like the service; the lengths and patterns it checks
are read from botocore's own sagemaker-runtime service model (`input_members`), so they are exactly the modeled ones,
its Java patterns translated to Python ones (`python_pattern`). Pure: no I/O beyond reading that model once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import botocore.session
from botocore.model import Shape

#: the header an adapter inference component adds on SageMaker (the handler reads it; the two never import each other)
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"

ACCOUNT = "123456789012"
STREAM = "InvokeEndpointWithResponseStream"
INVOKE = "InvokeEndpoint"
_OPERATIONS = {"invocations-response-stream": STREAM, "invocations": INVOKE}
_PATH = re.compile(r"/endpoints/([^/]+)/([^/]+)")
_JAVA_REGEX = {r"[\p{Print}]": r"[\x20-\x7e]", r"\p{ASCII}": r"[\x00-\x7f]", r"\z": r"\Z"}

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class RuntimeFault:
    """An error answer before any body byte: HTTP status, botocore error code, JSON body."""

    status: int
    code: str
    body: Mapping[str, Any]


def parse_runtime_path(path: str) -> tuple[str, str] | None:
    """(endpoint name, operation) of a runtime API path (query ignored, name URL-decoded); else None."""
    match = _PATH.fullmatch(urlsplit(path).path)
    if match is None or match.group(2) not in _OPERATIONS:
        return None
    return unquote(match.group(1)), _OPERATIONS[match.group(2)]


def validate(
    endpoint_name: str, configured_name: str, headers: Headers, body_length: int, operation: str = STREAM
) -> RuntimeFault | None:
    """The service's 400 ValidationError for this request, or None when it is valid.

    Modeled constraints come first (all violations in one message, worded like the service), then the
    endpoint lookup: "Endpoint {name} of account 123456789012 not found.".
    """
    members = input_members(operation)
    present = lower_headers(headers)
    checks = [("EndpointName", endpoint_name, len(endpoint_name)), ("Body", None, body_length)]
    for member, shape in members.items():
        value = present.get(shape.serialization.get("name", "").lower())
        if shape.serialization.get("location") == "header" and value is not None:
            checks.append((member, value, len(value)))
    problems = [p for member, value, size in checks for p in _violations(member, members[member], value, size)]
    if problems:
        count = len(problems)
        return validation_error(f"{count} validation error{'s' * (count > 1)} detected: {'; '.join(problems)}")
    if endpoint_name != configured_name:
        return validation_error(f"Endpoint {endpoint_name} of account {ACCOUNT} not found.")
    return None


def container_headers(
    runtime_headers: Headers, operation: str = STREAM, adapters: tuple[str, ...] = ()
) -> dict[str, str]:
    """The headers the container sees: Content-Type, Accept (the operation's accept header), custom attributes, and
    the inference component; one that names an adapter sets the adapter header, as an adapter inference component
    does on SageMaker (any other name is the base model's component)."""
    present = lower_headers(runtime_headers)
    component = _header_name(operation, "InferenceComponentName")
    wanted = {
        "Content-Type": "Content-Type",
        "Accept": _header_name(operation, "Accept"),
        CUSTOM_ATTRIBUTES: CUSTOM_ATTRIBUTES,
        component: component,
    }
    found = {name: present.get(source.lower()) for name, source in wanted.items()}
    if found[component] in adapters:
        found[ADAPTER_HEADER] = found[component]
    return {name: value for name, value in found.items() if value is not None}


def validation_error(message: str) -> RuntimeFault:
    """400 ValidationError (botocore: client.exceptions.ValidationError)."""
    return RuntimeFault(400, "ValidationError", {"message": message})


def lower_headers(headers: Headers) -> dict[str, str]:
    """The headers by lower-case name (HTTP header names are case-insensitive)."""
    pairs = headers.items() if hasattr(headers, "items") else headers
    return {name.lower(): value for name, value in pairs}


@functools.cache
def input_members(operation: str) -> dict[str, Shape]:
    """The modeled input members of a runtime operation (its constraints in each shape's metadata)."""
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    shape = model.operation_model(operation).input_shape
    assert shape is not None  # both runtime operations have an input
    return dict(shape.members)


def _header_name(operation: str, member: str) -> str:
    return str(input_members(operation)[member].serialization["name"])


def _violations(member: str, shape: Shape, value: str | None, size: int) -> list[str]:
    """Constraint failures of one member, worded like the service (sensitive values are not echoed)."""
    subject = "Value" if value is None or shape.metadata.get("sensitive") else f"Value '{value}'"
    where = f"{subject} at '{member[0].lower()}{member[1:]}' failed to satisfy constraint: Member must"
    limits, problems = shape.metadata, []
    if "max" in limits and size > limits["max"]:
        problems.append(f"{where} have length less than or equal to {limits['max']}")
    if "min" in limits and size < limits["min"]:
        problems.append(f"{where} have length greater than or equal to {limits['min']}")
    if value is not None and "pattern" in limits and not python_pattern(limits["pattern"]).fullmatch(value):
        problems.append(f"{where} satisfy regular expression pattern: {limits['pattern']}")
    return problems


@functools.cache
def python_pattern(java_pattern: str) -> re.Pattern[str]:
    """A modeled (Java) pattern as a Python regex: the ASCII classes it uses, and \\z."""
    python = java_pattern
    for java, replacement in _JAVA_REGEX.items():
        python = python.replace(java, replacement)
    if r"\p{" in python:
        raise ValueError(f"unsupported character class in modeled pattern {java_pattern!r}")
    return re.compile(python)
