"""LocalEndpoint: the HTTP server of `lmi serve`, speaking like the LMI container on port 8080.

`GET /ping` answers 503 until the model is loaded and once a tensor-parallel rank is gone, else DJL's health body.
`POST /invocations` goes through the DJL frontend replay and is written out with HTTP/1.1 chunked encoding, one
chunk as soon as the handler produces it. A client that disconnects mid-stream has its response cancelled.
"""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

from lmikit.djl.driver import BackendError, Frontend, Response
from lmikit.server.runtime import RuntimeAnswer, RuntimeConfig, handle_runtime_request, parse_runtime_path

log = logging.getLogger(__name__)
CHUNK_TIMEOUT_SECONDS = 120.0  # DJL's chunked_read_timeout
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class LocalEndpoint(ThreadingHTTPServer):
    """A threading HTTP server bound to one model; `frontend` is set once the model has loaded."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: RuntimeConfig | None = None,
                 model_name: str = "model") -> None:
        super().__init__(address, RequestHandler)
        self.runtime = runtime or RuntimeConfig()
        self.model_name = model_name
        self.frontend: Frontend | None = None

    def set_frontend(self, frontend: Frontend) -> None:
        self.frontend = frontend

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RequestHandler(BaseHTTPRequestHandler):
    """The container surface (/ping, /invocations) and the SageMaker runtime API (/endpoints/...)."""

    protocol_version = "HTTP/1.1"
    server: LocalEndpoint

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        if self.path.split("?")[0] != "/ping":
            return self.send_json(404, {"code": 404, "type": "ResourceNotFoundException", "message": "Not Found"})
        if self.server.frontend is None:
            return self.send_json(503, {"status": "Loading"})
        if not self.server.frontend.healthy:
            return self.send_json(503, {self.server.model_name: {"status": "Unhealthy"}})
        self.send_json(200, {self.server.model_name: {"status": "Healthy"}})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        runtime_route = parse_runtime_path(self.path) is not None
        if not runtime_route and self.path.split("?")[0] != "/invocations":
            return self.send_json(404, {"code": 404, "type": "ResourceNotFoundException", "message": "Not Found"})
        if self.server.frontend is None:
            return self.send_json(503, {"code": 503, "type": "ServiceUnavailableException",
                                        "message": "Model is not ready yet"})
        if runtime_route:
            answer = handle_runtime_request("POST", self.path, self.headers, body, self.submit_container,
                                            self.server.runtime)
            return self.write_answer(answer)
        self.relay(self.server.frontend.submit(self.headers.items(), body))

    def submit_container(self, headers: dict[str, str], body: bytes) -> "ContainerView":
        return ContainerView(self.server.frontend.submit(list(headers.items()), body))

    def write_answer(self, answer: RuntimeAnswer) -> None:
        """Write a runtime API answer: event-stream frames chunked as they come, or one body."""
        self.send_response(answer.status)
        for key, value in answer.headers.items():
            self.send_header(key, value)
        if not answer.streamed:
            self.end_headers()
            for part in answer.body_iter:
                self.wfile.write(part)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.write_chunks(answer.body_iter, answer.close)

    def relay(self, response: Response) -> None:
        """Write a DJL response: chunked when it streams, with a length otherwise."""
        try:
            head = response.head(CHUNK_TIMEOUT_SECONDS)
        except (BackendError, TimeoutError) as error:
            return self.send_json(500, {"code": 500, "type": type(error).__name__, "message": str(error)})
        self.send_response(head.status, head.reason)
        for key, value in head.headers.items():
            self.send_header(key, value)
        self.send_header("x-request-id", response.request_id)
        if not head.chunked:
            return self._write_whole(response, head.status)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.write_chunks(response.chunks(CHUNK_TIMEOUT_SECONDS), response.cancel)

    def _write_whole(self, response: Response, status: int) -> None:
        body = response.read(CHUNK_TIMEOUT_SECONDS)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def write_chunks(self, chunks: Iterable[bytes], on_disconnect: Callable[[], None]) -> None:
        """Relay chunks as they come; a broken connection or a failed stream cancels the response."""
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except _DISCONNECTS:
            log.info("client disconnected; cancelling its request")
            on_disconnect()
            self.close_connection = True
        except (BackendError, TimeoutError) as error:
            log.error("stream broken: %s", error)
            on_disconnect()
            self.close_connection = True

    def send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(payload, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class ContainerView:
    """A DJL `Response` seen as the runtime layer's ContainerResponse (status, headers, chunk iterator)."""

    def __init__(self, response: Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.head(CHUNK_TIMEOUT_SECONDS).status

    @property
    def headers(self) -> dict[str, str]:
        return self._response.head(CHUNK_TIMEOUT_SECONDS).headers

    def __iter__(self) -> Iterator[bytes]:
        return self._response.chunks(CHUNK_TIMEOUT_SECONDS)

    def cancel(self) -> None:
        self._response.cancel()
