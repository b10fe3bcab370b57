"""Test support for the streaming client: botocore event streams over raw bytes, and a tiny chunked HTTP server
that speaks InvokeEndpointWithResponseStream to an unmodified boto3 (conftest.py's frame_server and runtime_client
fixtures serve it)."""

from __future__ import annotations

from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import botocore.parsers
import botocore.session
from botocore.eventstream import EventStream

OPERATION = "InvokeEndpointWithResponseStream"


def botocore_stream(chunks: Iterable[bytes]) -> EventStream:
    """botocore's own EventStream for InvokeEndpointWithResponseStream over raw event-stream bytes."""
    operation = botocore.session.get_session().get_service_model("sagemaker-runtime").operation_model(OPERATION)
    raw = SimpleNamespace(stream=lambda: iter(chunks), close=lambda: None)
    return EventStream(raw, operation.output_shape.members["Body"], botocore.parsers.EventStreamJSONParser(), OPERATION)


class FrameServer(ThreadingHTTPServer):
    """Answers every POST with `chunks` as HTTP/1.1 chunks; records (path, headers, body) of requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FrameHandler)
        self.chunks: list[bytes] = []
        self.content_type = "application/jsonlines"
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FrameServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("X-Amzn-SageMaker-Content-Type", self.server.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in filter(None, self.server.chunks):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass
