"""The SageMaker runtime API on the local endpoint: pure translation between it and the container, on an event loop.

`answer_runtime_request` answers one request: it checks it and maps its headers (`runtime_request`), submits it to the
container, and translates the response: `stream_headers` + `stream_frames` for InvokeEndpointWithResponseStream (one
PayloadPart frame per container chunk, in-stream ModelStreamError frames), the whole body for InvokeEndpoint, or
`model_error` and `fault_response` (JSON errors with `x-amzn-ErrorType`, which botocore maps to its modeled exception
classes). The HTTP layer only writes the `RuntimeAnswer` out (a streamed answer's body is an async iterator, written
chunked).

The container is read without blocking (`ContainerResponse`), each wait bounded by the time left, so the time
limit fires while the container is silent, with no thread per request. On a time limit, a failure, or a consumer
that stops early (`RuntimeAnswer.close`, or the frames closed or cancelled), `cancel()` is called.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lmikit.server.eventstream import PayloadTooLarge, exception_frame, payload_part
from lmikit.server.runtime_request import (
    ACCOUNT,
    CUSTOM_ATTRIBUTES,
    INVOKE,
    STREAM,
    Headers,
    RuntimeFault,
    container_headers,
    input_members,
    lower_headers,
    parse_runtime_path,
    validate,
)

EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
STREAM_TIMEOUT_MESSAGE = "Your model primary did not complete sending the inference response in the allotted time."
STREAM_BROKEN_MESSAGE = "Your model primary stopped sending the inference response before it was complete."
INVOKE_TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. Review the latency "
    "metrics for each container in Amazon CloudWatch, resolve the issue, and try again."
)


class ContainerResponse(Protocol):
    """The container's answer to one request: `status` and `headers` are known once `peek` returned."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> dict[str, str]: ...

    async def peek(self, timeout: float) -> None:
        """Wait until the first chunk or the end is known (so `status` is); raises as `next_chunk`."""

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next chunk, None at the end; ContainerTimeout after `timeout` seconds, ContainerFailed."""

    def cancel(self) -> None: ...


Submit = Callable[[dict[str, str], bytes], ContainerResponse]


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime API needs to know about the one local endpoint."""

    endpoint_name: str = "local"
    region: str = "us-east-1"
    stream_time_limit: float = 480.0  # whole streamed response; the service's value is not documented
    invoke_time_limit: float = 60.0  # InvokeEndpoint: "respond to requests within 60 seconds"
    variant: str = "AllTraffic"
    #: the LoRA adapters the model serves: InferenceComponentName naming one reaches the container as its adapter
    adapters: tuple[str, ...] = ()


@dataclass
class RuntimeAnswer:
    """What the HTTP layer writes: chunked (no Content-Length) when `streamed`, else one body with a length."""

    status: int
    headers: dict[str, str]
    body_iter: Iterable[bytes] | AsyncIterator[bytes]  # async when `streamed`
    streamed: bool = False
    on_close: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        """The client went away mid-body: stop the stream and cancel the container request."""
        self.on_close()


class ContainerTimeout(TimeoutError):
    """The container produced nothing before the deadline."""


class ContainerFailed(Exception):
    """Reading the container response failed; the original exception is the `__cause__`."""


async def stream_frames(
    response: ContainerResponse, deadline: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    """Event-stream frames for a container response: one PayloadPart per non-empty chunk, as it arrives.

    Ends after the last chunk; a container failure gives a ModelStreamError frame (StreamBroken), no end by
    `deadline` (a `clock` reading) one with ModelInvocationTimeExceeded, after cancel(). A chunk over the 24 MiB
    that one event-stream message holds gives an InternalStreamFailure frame naming its size (what the service sends
    then is not documented; a frame botocore cannot read would fail the client with a parser error). Closing the
    frames early, or cancelling a wait (the client gone), also cancels the container request.
    """
    try:
        while (chunk := await response.next_chunk(deadline - clock())) is not None:
            if chunk:
                yield payload_part(chunk)
        return
    except ContainerTimeout:
        final = exception_frame("ModelStreamError", STREAM_TIMEOUT_MESSAGE, "ModelInvocationTimeExceeded")
    except ContainerFailed:
        final = exception_frame("ModelStreamError", STREAM_BROKEN_MESSAGE, "StreamBroken")
    except PayloadTooLarge as too_large:
        final = exception_frame("InternalStreamFailure", str(too_large))
    except BaseException:  # closed early (GeneratorExit) or cancelled
        response.cancel()
        raise
    response.cancel()  # before the client can see the error frame
    yield final


def stream_headers(response: ContainerResponse, request_id: str, variant: str = "AllTraffic") -> dict[str, str]:
    """Headers of the 200 streaming answer; the container's content type and custom attributes when set."""
    headers = {
        "Content-Type": EVENTSTREAM_CONTENT_TYPE,
        "x-Amzn-Invoked-Production-Variant": variant,
        "x-amzn-RequestId": request_id,
    }
    return headers | _passed_back(response.headers, "X-Amzn-SageMaker-Content-Type")


async def answer_runtime_request(
    method: str,
    path: str,
    headers: Headers,
    body: bytes,
    submit: Submit,
    config: RuntimeConfig,
    clock: Callable[[], float] = time.monotonic,
) -> RuntimeAnswer:
    """Answer one runtime API request: validate it, submit it to the container, translate the response.

    InvokeEndpointWithResponseStream: a ModelError before the first chunk, else the stream (`stream_frames`).
    InvokeEndpoint: the whole container body, or a ModelError (status >= 400, failure, time limit).
    """
    request_id = str(uuid.uuid4())
    operation, refusal = _operation(method, path, headers, len(body), config, request_id)
    if refusal is not None:
        return refusal
    try:
        response = submit(container_headers(headers, operation, config.adapters), body)
    except Exception as error:  # the container refused the request: the service reports a model error
        return _fault_answer(model_error(500, str(error), config), request_id)
    if operation == STREAM:
        deadline = clock() + config.stream_time_limit
        fault = await _pre_stream_fault(response, deadline, clock, config)
        if fault is not None:
            return _fault_answer(fault, request_id)
        frames = stream_frames(response, deadline, clock)
        headers_out = stream_headers(response, request_id, config.variant)
        return RuntimeAnswer(200, headers_out, frames, streamed=True, on_close=response.cancel)
    try:
        whole = await _read_all(response, clock() + config.invoke_time_limit, clock)
    except (ContainerTimeout, ContainerFailed) as error:
        return _fault_answer(_failure_fault(response, error, config), request_id)
    if response.status >= 400:
        return _fault_answer(model_error(response.status, _text(whole), config), request_id)
    headers_out = {"x-Amzn-Invoked-Production-Variant": config.variant, "x-amzn-RequestId": request_id}
    headers_out |= _passed_back(response.headers, "Content-Type") | {"Content-Length": str(len(whole))}
    return RuntimeAnswer(200, headers_out, (whole,))


def _operation(
    method: str, path: str, headers: Headers, size: int, config: RuntimeConfig, request_id: str
) -> tuple[str, RuntimeAnswer | None]:
    """The runtime operation a request asks for, or the answer that refuses it (unknown operation, invalid)."""
    parsed = parse_runtime_path(path)
    if method != "POST" or parsed is None:
        unknown = RuntimeFault(404, "UnknownOperationException", {"message": "Unknown operation"})
        return "", _fault_answer(unknown, request_id)
    endpoint_name, operation = parsed
    fault = validate(endpoint_name, config.endpoint_name, headers, size, operation)
    return operation, None if fault is None else _fault_answer(fault, request_id)


def warm_up() -> None:
    """Load the service model that validation reads (a fraction of a second, once), so that no request pays it."""
    for operation in (STREAM, INVOKE):
        input_members(operation)


# --- error answers ----------------------------------------------------------------------------------


def model_error(status: int, original_message: str, config: RuntimeConfig) -> RuntimeFault:
    """424 ModelError for a container status (0: no answer in time), shaped like the service's body."""
    kind = "client" if 400 <= status < 500 else "server"
    region, group = config.region, f"/aws/sagemaker/Endpoints/{config.endpoint_name}"
    logs = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group={group}"
    message = (
        f'Received {kind} error ({status}) from primary with message "{original_message}". '
        f"See {logs} in account {ACCOUNT} for more information."
    )
    body = {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "Message": message,
        "OriginalStatusCode": status,
        "OriginalMessage": original_message,
        "LogStreamArn": f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{group}",
    }
    return RuntimeFault(424, "ModelError", body)


def fault_response(fault: RuntimeFault, request_id: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a JSON error answer; botocore reads the code from x-amzn-ErrorType."""
    body = json.dumps(fault.body).encode()
    headers = {
        "Content-Type": "application/json",
        "x-amzn-ErrorType": fault.code,
        "x-amzn-RequestId": request_id or str(uuid.uuid4()),
        "Content-Length": str(len(body)),
    }
    return fault.status, headers, body


# --- helpers ----------------------------------------------------------------------------------------


async def _pre_stream_fault(
    response: ContainerResponse, deadline: float, clock: Callable[[], float], config: RuntimeConfig
) -> RuntimeFault | None:
    """The ModelError that replaces the stream: an error status (with the container's whole body), a failure, or the
    time limit before the first chunk; None when the stream can start."""
    try:
        await response.peek(deadline - clock())
        if response.status < 400:
            return None
        body = await _read_all(response, deadline, clock)
    except (ContainerTimeout, ContainerFailed) as error:
        return _failure_fault(response, error, config)
    return model_error(response.status, _text(body), config)


def _failure_fault(response: ContainerResponse, error: Exception, config: RuntimeConfig) -> RuntimeFault:
    response.cancel()
    if isinstance(error, ContainerTimeout):
        return model_error(0, INVOKE_TIMEOUT_MESSAGE, config)
    status = response.status if response.status >= 400 else 500
    return model_error(status, str(error), config)


async def _read_all(response: ContainerResponse, deadline: float, clock: Callable[[], float]) -> bytes:
    chunks = []
    while (chunk := await response.next_chunk(deadline - clock())) is not None:
        chunks.append(chunk)
    return b"".join(chunks)


def _fault_answer(fault: RuntimeFault, request_id: str) -> RuntimeAnswer:
    status, headers, body = fault_response(fault, request_id)
    return RuntimeAnswer(status, headers, (body,))


def _passed_back(container: Mapping[str, str], content_type_header: str) -> dict[str, str]:
    """The container's Content-Type (under `content_type_header`) and custom attributes, when it set them."""
    present = lower_headers(container)
    found = {
        content_type_header: present.get("content-type"),
        CUSTOM_ATTRIBUTES: present.get(CUSTOM_ATTRIBUTES.lower()),
    }
    return {name: value for name, value in found.items() if value is not None}


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
