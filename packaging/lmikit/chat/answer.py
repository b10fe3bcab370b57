"""One streamed answer for the chat page: its text pieces as they arrive, its timings, and any failure as one line.

No Streamlit here: the page hands `Answer.pieces()` to `st.write_stream`, then shows `error` and `stats`. Every way
an answer can fail (the endpoint missing, unreachable, refusing the request, timing out, or breaking the stream)
ends the pieces early and leaves a readable `error`, so the page never shows a traceback. Tool calls come in pieces
under `delta.tool_calls[].index` (OpenAI's stream) and are put together per call for the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ..client import (
    ModelError,
    ModelStreamError,
    Stream,
    StreamError,
    invoke_chat_stream,
    invoke_stream,
)
from .conversation import (
    ASSISTANT,
    ChatRequest,
    Message,
    PromptRequest,
    ToolCall,
    finished_answer,
)

ANSWER_ERRORS = (ClientError, BotoCoreError, StreamError, urllib3.exceptions.HTTPError)
#: statuses with which a model container refuses a request body it does not take
REFUSALS = (400, 415, 422)


@dataclass(frozen=True)
class AnswerStats:
    """Timings of one answer, as the client library measures them (TTFT includes the request)."""

    time_to_first_token: float | None
    tokens_per_second: float | None
    tokens: int


class Answer:
    """The endpoint's answer to one request, read once through `pieces()`.

    `connect` returns the boto3 sagemaker-runtime client; it is called inside `pieces()`, so a client that cannot
    be made (no region, say) is reported like any other failure.
    """

    def __init__(self, connect: Callable[[], Any], endpoint_name: str, request: PromptRequest | ChatRequest) -> None:
        self._connect = connect
        self._endpoint_name = endpoint_name
        self._request = request
        self._texts: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}  # index -> name, arguments so far
        self.error: str | None = None
        self.refused = False  # the endpoint answered the request itself with a 4xx, before any text
        self.stats: AnswerStats | None = None

    def pieces(self) -> Iterator[str]:
        """The generated text as it streams; on a failure it stops and `error` says why."""
        stream: Stream | None = None
        try:
            stream = self._open(self._connect())
            for event in stream:
                for piece in event.tool_calls:
                    self._add_call_piece(piece)
                if event.text and not event.special:
                    self._texts.append(event.text)
                    yield event.text
        except ANSWER_ERRORS as error:
            self.error = readable_error(error)
            self.refused = not self._texts and _is_refusal(error)
        finally:
            if stream is not None:
                self.stats = AnswerStats(stream.time_to_first_token, stream.tokens_per_second, stream.tokens)

    def _open(self, client: Any) -> Stream:
        request = self._request
        if isinstance(request, ChatRequest):
            return invoke_chat_stream(client, self._endpoint_name, request.messages, request.options)
        return invoke_stream(client, self._endpoint_name, request.prompt, request.parameters)

    def _add_call_piece(self, piece: dict[str, Any]) -> None:
        call = self._calls.setdefault(int(piece.get("index", 0)), {"name": "", "arguments": ""})
        function = piece.get("function") or {}
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""

    def message(self) -> Message:
        """The answer as a history entry (after `pieces()` is exhausted)."""
        calls = tuple(ToolCall(call["name"], call["arguments"]) for _, call in sorted(self._calls.items()))
        return Message(ASSISTANT, finished_answer("".join(self._texts)), self.error, calls)


def readable_error(error: BaseException) -> str:
    """One line for the page: what went wrong, in the words of whoever reported it."""
    return " ".join(_describe(error).split())


def _describe(error: BaseException) -> str:
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
        return f"Cannot reach the endpoint at {error.kwargs.get('endpoint_url')}: is it running?"
    if isinstance(error, (ReadTimeoutError, urllib3.exceptions.ReadTimeoutError)):
        return "The endpoint did not answer in time (read timeout); try again or ask for fewer tokens."
    if isinstance(error, ClientError):
        return _client_error(error)
    if isinstance(error, ModelStreamError):
        return f"The endpoint cut the answer short ({error.code or 'ModelStreamError'}): {error.message}"
    if isinstance(error, ModelError):
        return f"The model failed while answering: {error.message}"
    if isinstance(error, StreamError):
        return f"The answer stream broke: {error.message}"
    if isinstance(error, urllib3.exceptions.HTTPError):
        return f"The connection to the endpoint broke during the answer: {error}"
    return str(error)


def _is_refusal(error: BaseException) -> bool:
    """The model container refused the request body itself (400, 415, or TGI's 422 validation error, wrapped in
    SageMaker's ModelError); DJL's 424 and 507 are failures while answering, not refusals."""
    if not isinstance(error, ClientError) or error.response.get("Error", {}).get("Code") != "ModelError":
        return False
    return error.response.get("OriginalStatusCode") in REFUSALS


def _client_error(error: ClientError) -> str:
    response = error.response
    details = response.get("Error", {})
    if details.get("Code") == "ModelError":
        status, message = response.get("OriginalStatusCode"), response.get("OriginalMessage", details.get("Message"))
        return f"The model refused the request (HTTP {status}): {message}"
    return f"The endpoint refused the request ({details.get('Code')}): {details.get('Message')}"
