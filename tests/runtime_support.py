"""Test support for the runtime API: a scripted fake container and a tiny HTTP server that answers with
`handle_runtime_request`, written out the way the local endpoint does (chunked when streamed). conftest.py's runtime_server fixture serves
it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config
from lmikit.server.runtime import RuntimeConfig, handle_runtime_request

ENDPOINT = "local"
REGION = "us-west-2"


@dataclass
class FakeResponse:
    """A container response: `script` is (wait, chunk or exception to raise) steps; a wait is seconds, or an Event
    the test sets to release the step.

    A wait ends early when the request is cancelled; the response then stops producing.
    """

    script: list[tuple[float | threading.Event, bytes | Exception]]
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/jsonlines"})
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[bytes]:
        for wait, item in self.script:
            if self._cancelled_during(wait):
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled.set()

    def _cancelled_during(self, wait: float | threading.Event) -> bool:
        if not isinstance(wait, threading.Event):
            return self.cancelled.wait(wait)
        while not wait.wait(0.01):
            if self.cancelled.is_set():
                return True
        return self.cancelled.is_set()


class FakeContainer:
    """`submit` for `handle_runtime_request`: records each request, answers with `response`."""

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
        answer = handle_runtime_request(
            "POST", self.path, self.headers, body, self.server.container.submit, self.server.config
        )
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if not answer.streamed:
            self.end_headers()
            self.wfile.writelines(answer.body_iter)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in answer.body_iter:
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
