"""Test support for the runtime API: a scripted fake container and a tiny HTTP server that answers with
`answer_runtime_request`, written out the way the local endpoint does (chunked when streamed). conftest.py's
runtime_server fixture serves it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config
from lmikit.server.runtime import ContainerFailed, ContainerTimeout, RuntimeConfig, answer_runtime_request

ENDPOINT = "local"
REGION = "us-west-2"


@dataclass
class FakeResponse:
    """A container response (runtime.ContainerResponse, read once): `script` is (wait, chunk or exception to raise)
    steps; a wait is seconds, or an Event the test sets to release the step.

    A wait ends early when the request is cancelled; the response then stops producing. Waits poll, so that the
    event loop (and the time limit on it) keeps running.
    """

    script: list[tuple[float | threading.Event, bytes | Exception]]
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/jsonlines"})
    cancelled: threading.Event = field(default_factory=threading.Event)
    _step: int = field(default=0, init=False, repr=False)
    _peeked: list[bytes | None] = field(default_factory=list, init=False, repr=False)

    async def peek(self, timeout: float) -> None:
        if not self._peeked:
            self._peeked.append(await self.next_chunk(timeout))

    async def next_chunk(self, timeout: float) -> bytes | None:
        if self._peeked:
            return self._peeked.pop()
        try:
            if timeout <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(self._produce(), timeout)
        except asyncio.TimeoutError:
            raise ContainerTimeout("no container output before the deadline") from None

    def cancel(self) -> None:
        self.cancelled.set()

    async def _produce(self) -> bytes | None:
        if self._step == len(self.script) or not await self._waited(self.script[self._step][0]):
            return None
        item = self.script[self._step][1]
        self._step += 1
        if isinstance(item, Exception):
            raise ContainerFailed(str(item) or type(item).__name__) from item
        return item

    async def _waited(self, wait: float | threading.Event) -> bool:
        """Wait out a step's wait; False when the request was cancelled first."""
        until = time.monotonic() + (0.0 if isinstance(wait, threading.Event) else wait)
        while not self.cancelled.is_set():
            if wait.is_set() if isinstance(wait, threading.Event) else time.monotonic() >= until:
                return True
            await asyncio.sleep(0.01)
        return False


class FakeContainer:
    """`submit` for `answer_runtime_request`: records each request, answers with `response`."""

    def __init__(self) -> None:
        self.response = FakeResponse([(0.0, b'{"outputs": ["Hi"]}\n')])
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def submit(self, headers: dict[str, str], body: bytes) -> FakeResponse:
        self.requests.append((headers, body))
        return self.response


class RuntimeServer(ThreadingHTTPServer):
    """The runtime API over a FakeContainer, on 127.0.0.1 and a free port."""

    daemon_threads = True

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(("127.0.0.1", 0), _RuntimeHandler)
        self.config = config
        self.container = FakeContainer()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RuntimeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RuntimeServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        loop = asyncio.new_event_loop()  # this request's own, on this handler thread
        try:
            self._answer(loop, body)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())  # closes frames the client left unread
            loop.close()

    def _answer(self, loop: asyncio.AbstractEventLoop, body: bytes) -> None:
        submit, config = self.server.container.submit, self.server.config
        answer = loop.run_until_complete(answer_runtime_request("POST", self.path, self.headers, body, submit, config))
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if not isinstance(answer.body_iter, AsyncIterator):
            self.end_headers()
            self.wfile.writelines(answer.body_iter)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while (chunk := loop.run_until_complete(anext(answer.body_iter, None))) is not None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            answer.close()
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def client_for(url: str | None = None) -> object:
    """An unmodified boto3 sagemaker-runtime client with dummy credentials and no retries."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}),
    )
