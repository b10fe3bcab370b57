"""A streamed SageMaker response you iterate for `TokenEvent`s or read whole with `.text()`.

Layers: boto3 EventStream (or any iterable of byte parts) → PayloadPart bytes → `EventParser` → events.
botocore raises `EventStreamError` for in-stream exception frames; they become this package's
`ModelStreamError` / `InternalStreamFailure`, and in-band error events become `ModelError`.
Timings use one clock (`time.perf_counter` unless injected); a token counts when it is parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from botocore.exceptions import EventStreamError

from .errors import InternalStreamFailure, ModelError, ModelStreamError, StreamError
from .events import ErrorEvent, Event, EventParser, TokenEvent

_STREAM_ERRORS = ("ModelStreamError", "InternalStreamFailure")


class Stream:
    """Lazy, single-pass token stream with time-to-first-token, token count and decode rate.

    `source` is a boto3 `invoke_endpoint_with_response_stream` response (its "Body" and "ContentType"
    are used) or an iterable of raw byte parts. `start` is the clock reading TTFT counts from
    (default: when the Stream is created).
    """

    def __init__(
        self,
        source: Mapping[str, Any] | Iterable[bytes],
        fmt: str | None = None,
        content_type: str | None = None,
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if isinstance(source, Mapping):
            parts = _payload_bytes(source["Body"])
            content_type = content_type or source.get("ContentType")
        else:
            parts = iter(source)
        self._clock = clock
        self._start = clock() if start is None else start
        self._first: float | None = None
        self._last: float | None = None
        self._texts: list[str] = []
        self.tokens = 0  # tokens seen so far: non-special events with non-empty text
        self._events = self._generate(parts, EventParser(fmt, content_type))

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events

    def text(self) -> str:
        """Consume the rest of the stream; return the text of all its non-special tokens."""
        for _ in self._events:
            pass
        return "".join(self._texts)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the start to the first non-empty token; None before it arrives."""
        return None if self._first is None else self._first - self._start

    @property
    def tokens_per_second(self) -> float | None:
        """Decode rate after the first token: (tokens - 1) / (last - first); None below two tokens."""
        if self._first is None or self._last is None or self._last <= self._first:
            return None
        return (self.tokens - 1) / (self._last - self._first)

    def _generate(self, parts: Iterator[bytes], parser: EventParser) -> Iterator[TokenEvent]:
        for part in parts:
            yield from self._record(parser.feed(part))
        yield from self._record(parser.close())

    def _record(self, events: list[Event]) -> Iterator[TokenEvent]:
        for event in events:
            if isinstance(event, ErrorEvent):
                raise ModelError(event.message, event.code)
            if event.text and not event.special:
                self._last = self._clock()
                self._first = self._last if self._first is None else self._first
                self.tokens += 1
                self._texts.append(event.text)
            yield event


def invoke_stream(
    client: Any,
    endpoint_name: str,
    prompt: str,
    parameters: Mapping[str, Any],
    fmt: str | None = None,
    custom_attributes: str | None = None,
) -> Stream:
    """Send the LMI body `{"inputs", "parameters", "stream": true}` to a streaming endpoint.

    Args:
        client: a boto3 `sagemaker-runtime` client.
        fmt: the output format to parse (see `FORMATS`); detected when None.
        custom_attributes: sent as `X-Amzn-SageMaker-Custom-Attributes`.
    Returns:
        The response as a `Stream`, whose time to first token includes the request itself.
    """
    body = {"inputs": prompt, "parameters": dict(parameters)}
    return invoke_body_stream(client, endpoint_name, body, fmt, custom_attributes)


def invoke_chat_stream(
    client: Any,
    endpoint_name: str,
    messages: Sequence[Mapping[str, str]],
    options: Mapping[str, Any],
    custom_attributes: str | None = None,
) -> Stream:
    """Send an OpenAI chat body `{"messages", **options, "stream": true}`: the endpoint renders the conversation
    through the model's chat template and answers `chat.completion.chunk` events.

    Args:
        messages: `{"role", "content"}` dicts, oldest first.
        options: OpenAI chat fields such as `max_tokens`, `temperature`, `top_p`, `stop`, `seed`.
    """
    body = {"messages": [dict(message) for message in messages], **options}
    return invoke_body_stream(client, endpoint_name, body, "sse", custom_attributes)


def invoke_body_stream(
    client: Any,
    endpoint_name: str,
    body: Mapping[str, Any],
    fmt: str | None = None,
    custom_attributes: str | None = None,
    inference_component: str | None = None,
) -> Stream:
    """Send any JSON request body with `"stream": true` added; the two functions above build the usual ones.
    `inference_component` routes it to one inference component of the endpoint (a LoRA adapter's, say)."""
    request: dict[str, Any] = {
        "EndpointName": endpoint_name,
        "ContentType": "application/json",
        "Body": json.dumps({**body, "stream": True}).encode(),
    }
    if custom_attributes is not None:
        request["CustomAttributes"] = custom_attributes
    if inference_component is not None:
        request["InferenceComponentName"] = inference_component
    start = time.perf_counter()
    return Stream(client.invoke_endpoint_with_response_stream(**request), fmt=fmt, start=start)


def _payload_bytes(body: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """The PayloadPart bytes of an event stream; exception frames raise this package's errors."""
    try:
        for event in body:
            if "PayloadPart" in event:
                yield event["PayloadPart"]["Bytes"]
            for code in _STREAM_ERRORS:  # how the service model shapes them, if a client yields them
                if code in event:
                    raise _stream_error(code, event[code].get("Message", ""), event[code].get("ErrorCode"))
    except EventStreamError as error:
        details = error.response.get("Error", {})
        raise _stream_error(details.get("Code", ""), details.get("Message", ""), None) from error


def _stream_error(code: str, message: str, error_code: str | None) -> StreamError:
    if code == "ModelStreamError":
        return ModelStreamError(message, error_code)
    if code == "InternalStreamFailure":
        return InternalStreamFailure(message)
    return StreamError(f"{code}: {message}")
