"""What `lmi bench` drives: one streamed request to an endpoint, timed token by token through the project's client.

Routes: the container's `POST /invocations` (`lmi serve` or the LMI container itself), the SageMaker runtime API
through boto3 (a local `lmi serve` by URL, or a real endpoint by name), and an OpenAI-compatible server's
`/v1/chat/completions` or `/v1/completions` (`lmi serve`, `transformers serve`, vLLM). Every answer is parsed by
`lmikit.client.Stream`; a token counts when its event is parsed. `closed_loop` runs `c` clients that each send
their share of a level's requests one after another.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from ..client import Stream, StreamError, invoke_body_stream
from .stats import RequestRecord

REQUEST_TIMEOUT_S = 600.0
ROUTES = ("container", "runtime", "openai-chat", "openai-completions")


class Target(Protocol):
    def request(self, prompt: str, max_new_tokens: int) -> RequestRecord: ...


#: a test of a record so far, after each of its tokens: true ends the stream there
Until = Callable[[RequestRecord], bool]


def record(sent: float, stream: Iterator[Any], until: Until | None = None) -> RequestRecord:
    """Consume a client `Stream`, stamping each non-special token with its arrival time; errors end the record, and
    so does `until` once it holds."""
    result = RequestRecord(sent)
    try:
        for event in stream:
            if event.text and not event.special:
                result.token_times.append(time.perf_counter())
                if until is not None and until(result):
                    break
    except (StreamError, ClientError, BotoCoreError, OSError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


class HttpTarget:
    """A streamed POST to one path of an HTTP server; the body is made per prompt by `body`."""

    def __init__(
        self,
        url: str,
        path: str,
        body: Callable[[str, int], dict[str, Any]],
        fmt: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._netloc = parts.netloc
        self._path = parts.path.rstrip("/") + path
        self._body, self._fmt = body, fmt
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    def request(self, prompt: str, max_new_tokens: int) -> RequestRecord:
        return self.post(self._body(prompt, max_new_tokens))

    def post(self, body: dict[str, Any], until: Until | None = None) -> RequestRecord:
        """Send this body and record the streamed answer (up to where `until` holds: then the connection closes,
        which cancels the request)."""
        conn = self._connection(self._netloc, timeout=REQUEST_TIMEOUT_S)
        sent = time.perf_counter()
        try:
            conn.request("POST", self._path, json.dumps(body), self._headers)
            response = conn.getresponse()
            if response.status != 200:
                return RequestRecord(sent, error=f"HTTP {response.status}: {response.read()[:200]!r}")
            parts = iter(lambda: response.read1(65536), b"")
            events = Stream(parts, fmt=self._fmt, content_type=response.getheader("Content-Type"), start=sent)
            return record(sent, iter(events), until)
        except OSError as error:
            return RequestRecord(sent, error=f"{type(error).__name__}: {error}")
        finally:
            conn.close()


def lmi_body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """LMI's request body, greedy and streamed."""
    return {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}, "stream": True}


def container_target(url: str) -> HttpTarget:
    """The container's own route, as the SageMaker front end calls it: `POST /invocations`."""
    return HttpTarget(url, "/invocations", lmi_body)


def openai_target(url: str, model: str, api: str = "chat", api_key: str | None = None) -> HttpTarget:
    """An OpenAI-compatible server (`url` without `/v1`): chat messages or a raw completions prompt, greedy."""

    def body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
        base = {"model": model, "max_tokens": max_new_tokens, "temperature": 0, "stream": True}
        return (
            {**base, "messages": [{"role": "user", "content": prompt}]} if api == "chat" else {**base, "prompt": prompt}
        )

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return HttpTarget(url, f"/v1/{'chat/completions' if api == 'chat' else 'completions'}", body, "sse", headers)


class RuntimeTarget:
    """The SageMaker runtime API (InvokeEndpointWithResponseStream) through a boto3 client and `invoke_body_stream`."""

    def __init__(self, client: Any, endpoint_name: str) -> None:
        self._client, self._endpoint = client, endpoint_name

    def request(self, prompt: str, max_new_tokens: int) -> RequestRecord:
        sent = time.perf_counter()
        try:
            stream = invoke_body_stream(self._client, self._endpoint, lmi_body(prompt, max_new_tokens))
        except (ClientError, BotoCoreError) as error:
            return RequestRecord(sent, error=f"{type(error).__name__}: {error}")
        return record(sent, iter(stream))


def closed_loop(
    target: Target,
    prompts: Sequence[str],
    concurrency: int,
    rounds: int,
    max_new_tokens: int,
    on_done: Callable[[RequestRecord], None] = lambda _: None,
) -> list[RequestRecord]:
    """`concurrency` clients, each sending `rounds` requests back to back (prompts taken in turn)."""

    def client(index: int) -> list[RequestRecord]:
        records = []
        for turn in range(rounds):
            records.append(target.request(prompts[(index * rounds + turn) % len(prompts)], max_new_tokens))
            on_done(records[-1])
        return records

    with ThreadPoolExecutor(concurrency) as pool:
        return [r for records in pool.map(client, range(concurrency)) for r in records]


class ClosedLoop:
    """A request target run level by level as `c` clients that each send their requests back to back."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def run_level(
        self,
        prompts: Sequence[str],
        concurrency: int,
        rounds: int,
        max_new_tokens: int,
        on_done: Callable[[RequestRecord], None],
    ) -> list[RequestRecord]:
        return closed_loop(self._target, prompts, concurrency, rounds, max_new_tokens, on_done)
