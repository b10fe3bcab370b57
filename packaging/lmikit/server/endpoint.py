"""LocalEndpoint: the HTTP server of `lmi serve`, speaking like the LMI container on port 8080.

`GET /ping` answers 503 until the model is loaded and once a tensor-parallel rank is gone, else DJL's health body.
`GET /metrics` is Prometheus text (`metrics`). `POST /invocations` goes through the DJL frontend replay and is
written out with HTTP/1.1 chunked encoding, one chunk as soon as the handler produces it;
`POST /endpoints/{name}/invocations[-response-stream]` is the SageMaker runtime API over the same frontend.
`POST /v1/chat/completions` and `GET /v1/models` let OpenAI clients in: chat bodies go to the same handler and the
same batch as `/invocations`, and their errors come back in OpenAI's shape (`openai_api`). A client that disconnects
mid-stream has its response cancelled.

It runs on uvicorn and starlette: with the standard library's `http.server` (a listen backlog of 5, one thread per
connection) 64 simultaneous clients saw connection resets and /ping timeouts. Request bodies may be chunked; a body
over `MAX_BODY_BYTES` gets 413, an oversized header block 431/400 from uvicorn, a malformed Content-Length 400. The
frontend's responses are blocking iterators: each wait runs in a worker thread of a limiter sized for every stream
the frontend can hold, so waiting streams never starve the event loop or each other.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response as HTTPResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from lmikit.djl.driver import Frontend
from lmikit.djl.response import BackendError, Response
from lmikit.server.metrics import RequestTrack, ServeMetrics
from lmikit.server.openai_api import models_list, openai_error, read_chat_body
from lmikit.server.runtime import RuntimeAnswer, RuntimeConfig, handle_runtime_request

log = logging.getLogger(__name__)
CHUNK_TIMEOUT_SECONDS = 120.0  # DJL's chunked_read_timeout
MAX_BODY_BYTES = 64 << 20  # DJL's default max_request_size
MAX_HEADER_BYTES = 64 << 10
BACKLOG = 2048
#: threads that may wait on the frontend at once (one per open stream)
WAITING_THREADS = 2048
_END = object()


class BodyTooLarge(Exception):
    """The request body passed MAX_BODY_BYTES."""


class LocalEndpoint:
    """One model's HTTP server; `frontend` is set once the model has loaded. Binds in the constructor, so a busy
    port fails at once (OSError)."""

    def __init__(
        self,
        address: tuple[str, int],
        runtime: RuntimeConfig | None = None,
        model_name: str = "model",
        served_model: str = "model",
    ) -> None:
        self.runtime = runtime or RuntimeConfig()
        self.model_name = model_name
        self.served_model = served_model  # the id /v1/models lists
        self._created = int(time.time())
        self.frontend: Frontend | None = None
        self._socket = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(address)
        self._socket.listen(BACKLOG)  # connections queue from now on, before the server thread takes them
        self._limiter: anyio.CapacityLimiter | None = None
        self.metrics = ServeMetrics(lambda: self.frontend.active_requests() if self.frontend is not None else 0)
        routes = [
            Route("/ping", self._ping, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/invocations", self._invocations, methods=["POST"]),
            Route("/endpoints/{path:path}", self._runtime, methods=["POST"]),
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes),
            log_level="warning",
            access_log=False,
            backlog=BACKLOG,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=75,
        )
        self._server = uvicorn.Server(config)

    def set_frontend(self, frontend: Frontend) -> None:
        self.frontend = frontend

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until `shutdown` (blocks; run it in a thread)."""
        self._server.run(sockets=[self._socket])

    def shutdown(self) -> None:
        self._server.should_exit = True

    # -- routes --------------------------------------------------------------------------------------------------
    async def _ping(self, request: Request) -> HTTPResponse:
        if self.frontend is None:
            return _json(503, {"status": "Loading"})
        if not self.frontend.healthy:
            return _json(503, {self.model_name: {"status": "Unhealthy"}})
        return _json(200, {self.model_name: {"status": "Healthy"}})

    async def _metrics(self, request: Request) -> HTTPResponse:
        return HTTPResponse(self.metrics.exposition(), media_type=self.metrics.content_type)

    async def _invocations(self, request: Request) -> HTTPResponse:
        track = self.metrics.start("invocations")
        refusal, body = await self._admit(request)
        if refusal is not None:
            track.end(refusal.status_code)
            return refusal
        return await self._forward(list(request.headers.items()), body, track)

    async def _chat_completions(self, request: Request) -> HTTPResponse:
        track = self.metrics.start("chat")
        refusal, body = await self._admit(request)
        problem, answer_type = read_chat_body(body) if refusal is None else (None, "")
        if refusal is None and problem is None:
            headers = [("content-type", "application/json")]
            return await self._forward(headers, body, track, shape_error=openai_error, content_type=answer_type)
        status, content = (400, problem.encode()) if refusal is None else (refusal.status_code, refusal.body)
        track.end(status)
        return HTTPResponse(openai_error(status, content), status_code=status, media_type="application/json")

    async def _models(self, request: Request) -> HTTPResponse:
        return _json(200, models_list(self.served_model, self._created))

    async def _forward(
        self,
        headers: list[tuple[str, str]],
        body: bytes,
        track: RequestTrack,
        shape_error: Callable[[int, bytes], bytes] | None = None,
        content_type: str | None = None,
    ) -> HTTPResponse:
        """Send one request through the frontend and relay its answer; `shape_error` rewrites an error body,
        `content_type` labels a successful one."""
        response = self.frontend.submit(headers, body)
        try:
            head = await self._wait(response.head, CHUNK_TIMEOUT_SECONDS)
        except (BackendError, TimeoutError) as error:
            track.end(500)
            return _json(500, {"code": 500, "type": type(error).__name__, "message": str(error)})
        headers_out = {**head.headers, "x-request-id": response.request_id}
        if content_type and head.status < 300:
            headers_out = {key: value for key, value in headers_out.items() if key.lower() != "content-type"}
            headers_out["content-type"] = content_type
        chunks = response.chunks(CHUNK_TIMEOUT_SECONDS)
        if head.status < 300:
            chunks = track.watch(chunks, content_type or _content_type(head.headers))
        reshape = head.status >= 400 and shape_error is not None
        if not head.chunked or reshape:
            content = b"".join(await self._wait(list, chunks))
            track.end(head.status)
            if reshape:
                content = shape_error(head.status, content)
                headers_out = {"content-type": "application/json", "x-request-id": response.request_id}
            return HTTPResponse(content, status_code=head.status, headers=headers_out)
        return StreamingResponse(
            self._relay(chunks, response.cancel, lambda: track.end(head.status)),
            status_code=head.status,
            headers=headers_out,
        )

    async def _runtime(self, request: Request) -> HTTPResponse:
        track = self.metrics.start("runtime")
        refusal, body = await self._admit(request)
        if refusal is not None:
            track.end(refusal.status_code)
            return refusal
        answer: RuntimeAnswer = await self._wait(
            handle_runtime_request,
            "POST",
            request.url.path,
            dict(request.headers),
            body,
            lambda headers, data: ContainerView(self.frontend.submit(list(headers.items()), data), track),
            self.runtime,
        )
        if not answer.streamed:
            content = b"".join(await self._wait(list, answer.body_iter))
            track.end(answer.status)
            return HTTPResponse(content, status_code=answer.status, headers=answer.headers)
        return StreamingResponse(
            self._relay(iter(answer.body_iter), answer.close, lambda: track.end(answer.status)),
            status_code=answer.status,
            headers=answer.headers,
        )

    # -- helpers -------------------------------------------------------------------------------------------------
    async def _admit(self, request: Request) -> tuple[HTTPResponse | None, bytes]:
        """The request body, or the answer that refuses the request (model loading, body too large)."""
        if self.frontend is None:
            return _json(
                503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model is not ready yet"}
            ), b""
        try:
            return None, await _read_body(request)
        except BodyTooLarge:
            return _json(
                413,
                {
                    "code": 413,
                    "type": "RequestEntityTooLarge",
                    "message": f"request body is larger than {MAX_BODY_BYTES} bytes",
                },
            ), b""
        except ClientDisconnect:
            return HTTPResponse(status_code=400), b""

    async def _wait(self, function: Callable[..., Any], *args: Any) -> Any:
        """A blocking frontend call, in a worker thread."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WAITING_THREADS)
        return await anyio.to_thread.run_sync(lambda: function(*args), limiter=self._limiter)

    async def _relay(
        self, chunks: Iterator[bytes], on_disconnect: Callable[[], None], on_end: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        """Chunks as they come; if the client goes away (or the stream breaks) the request is cancelled."""
        finished = False
        try:
            while True:
                chunk = await self._wait(next, chunks, _END)
                if chunk is _END:
                    finished = True
                    return
                yield chunk
        except (BackendError, TimeoutError) as error:
            log.error("stream broken: %s", error)
            raise
        finally:
            on_end()
            if not finished:
                log.info("stream ended early (client gone or stream broken); cancelling its request")
                on_disconnect()


class ContainerView:
    """A DJL `Response` seen as the runtime layer's ContainerResponse (status, headers, chunk iterator), its chunks
    counted by the request's metrics track."""

    def __init__(self, response: Response, track: RequestTrack) -> None:
        self._response = response
        self._track = track

    @property
    def status(self) -> int:
        return self._response.head(CHUNK_TIMEOUT_SECONDS).status

    @property
    def headers(self) -> dict[str, str]:
        return self._response.head(CHUNK_TIMEOUT_SECONDS).headers

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._response.chunks(CHUNK_TIMEOUT_SECONDS)
        return self._track.watch(chunks, _content_type(self.headers)) if self.status < 300 else chunks

    def cancel(self) -> None:
        self._response.cancel()


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        parts.append(part)
    return b"".join(parts)


def _content_type(headers: dict[str, str]) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == "content-type"), None)


def _json(status: int, payload: object) -> HTTPResponse:
    return HTTPResponse(json.dumps(payload, indent=2) + "\n", status_code=status, media_type="application/json")
