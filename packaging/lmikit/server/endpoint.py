"""LocalEndpoint: the HTTP server of `lmi serve`, speaking like the LMI container on port 8080.

`GET /ping` answers 503 until the model is loaded and once a tensor-parallel rank is gone, else DJL's health body.
`GET /metrics` is Prometheus text (`metrics`). `POST /invocations` goes through the DJL frontend replay and is
written out with HTTP/1.1 chunked encoding, one chunk as soon as the handler produces it;
`POST /endpoints/{name}/invocations[-response-stream]` is the SageMaker runtime API over the same frontend.
`POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` let OpenAI clients in: their bodies go to the same handler and the
same batch as `/invocations`, and their errors come back in OpenAI's shape (`openai_api`). A client that disconnects
mid-stream has its response cancelled.

It runs on uvicorn and starlette: with the standard library's `http.server` (a listen backlog of 5, one thread per
connection) 64 simultaneous clients saw connection resets and /ping timeouts. Request bodies may be chunked; a body
over `MAX_BODY_BYTES` gets 413, an oversized header block 431/400 from uvicorn, a malformed Content-Length 400 naming the header (`h11_protocol`). The
frontend's responses are read on the event loop (`relay`): the frontend's thread that produces a chunk wakes the
loop, and no thread waits per stream; a slow client holds its own response's chunks only (see `relay`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response as HTTPResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from lmikit.djl.driver import DEFAULT_CHUNKED_READ_TIMEOUT_S, Frontend
from lmikit.djl.response import BackendError, Head
from lmikit.server.h11_protocol import NamingH11Protocol
from lmikit.server.metrics import RequestTrack, ServeMetrics
from lmikit.server.openai_api import models_list, openai_error, read_openai_body
from lmikit.server.relay import AsyncResponse, LoopWaker
from lmikit.server.runtime import (
    ContainerFailed,
    ContainerTimeout,
    RuntimeConfig,
    answer_runtime_request,
    warm_up,
)

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 << 20  # DJL's default max_request_size
MAX_HEADER_BYTES = 64 << 10
BACKLOG = 2048


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
        chunk_timeout: float = DEFAULT_CHUNKED_READ_TIMEOUT_S,
    ) -> None:
        self.runtime = runtime or RuntimeConfig()
        self.chunk_timeout = chunk_timeout  # seconds a response's head or next chunk may take (chunked_read_timeout)
        self.model_name = model_name
        self.served_model = served_model  # the id /v1/models lists
        self._created = int(time.time())
        self.frontend: Frontend | None = None
        self._socket = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(address)
        self._socket.listen(BACKLOG)  # connections queue from now on, before the server thread takes them
        self._waker: LoopWaker | None = None
        self.metrics = ServeMetrics(
            lambda: self.frontend.active_requests() if self.frontend is not None else 0,
            lambda: self.frontend.engine_stats() if self.frontend is not None else {},
        )
        routes = [
            Route("/ping", self._ping, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/invocations", self._invocations, methods=["POST"]),
            Route("/endpoints/{path:path}", self._runtime, methods=["POST"]),
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes),
            log_level="warning",
            access_log=False,
            backlog=BACKLOG,
            http=NamingH11Protocol,
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
        warm_up()
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
        return await self._openai(request, "chat")

    async def _completions(self, request: Request) -> HTTPResponse:
        return await self._openai(request, "completions")

    async def _openai(self, request: Request, route: str) -> HTTPResponse:
        """An OpenAI route: its body checked, then the same handler and batch as `/invocations`."""
        track = self.metrics.start(route)
        refusal, body = await self._admit(request)
        if refusal is None:
            problem, answer_type = read_openai_body(body, route)
            if problem is None:
                headers = [("content-type", "application/json")]
                return await self._forward(headers, body, track, shape_error=openai_error, content_type=answer_type)
            status, content = 400, problem.encode()
        else:
            status, content = refusal.status_code, bytes(refusal.body)
        track.end(status)
        return HTTPResponse(openai_error(status, content), status_code=status, media_type="application/json")

    async def _models(self, request: Request) -> HTTPResponse:
        return _json(200, models_list(self.served_model, self._created, self.runtime.adapters))

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
        response = self._submit(headers, body)
        try:
            head = await response.head(self.chunk_timeout)
        except (BackendError, TimeoutError) as error:
            track.end(500)
            return _json(500, {"code": 500, "type": type(error).__name__, "message": str(error)})
        headers_out = {**head.headers, "x-request-id": response.request_id}
        if content_type and head.status < 300:
            headers_out = {key: value for key, value in headers_out.items() if key.lower() != "content-type"}
            headers_out["content-type"] = content_type
        counted = head.status < 300
        if counted:
            track.begin(content_type or _content_type(head.headers))
        chunks = _counted(response, track if counted else None, self.chunk_timeout)
        reshape = head.status >= 400 and shape_error is not None
        if not head.chunked or reshape:
            content = b"".join([chunk async for chunk in chunks])
            track.end(head.status)
            if reshape:
                assert shape_error is not None  # reshape says so
                content = shape_error(head.status, content)
                headers_out = {"content-type": "application/json", "x-request-id": response.request_id}
            return HTTPResponse(content, status_code=head.status, headers=headers_out)
        return StreamingResponse(
            _relay(chunks, response.cancel, lambda: track.end(head.status)),
            status_code=head.status,
            headers=headers_out,
        )

    async def _runtime(self, request: Request) -> HTTPResponse:
        track = self.metrics.start("runtime")
        refusal, body = await self._admit(request)
        if refusal is not None:
            track.end(refusal.status_code)
            return refusal
        answer = await answer_runtime_request(
            "POST",
            request.url.path,
            dict(request.headers),
            body,
            lambda headers, data: RuntimeContainer(
                self._submit(list(headers.items()), data), track, self.chunk_timeout
            ),
            self.runtime,
        )
        if not isinstance(answer.body_iter, AsyncIterator):
            track.end(answer.status)
            return HTTPResponse(b"".join(answer.body_iter), status_code=answer.status, headers=answer.headers)
        return StreamingResponse(
            _relay(answer.body_iter, answer.close, lambda: track.end(answer.status)),
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

    def _submit(self, headers: list[tuple[str, str]], body: bytes) -> AsyncResponse:
        """Queue a request in the frontend; its response is read on this event loop."""
        assert self.frontend is not None  # _admit refuses requests until the model is loaded
        loop = asyncio.get_running_loop()
        if self._waker is None or self._waker.loop is not loop:  # one per serving loop
            self._waker = LoopWaker(loop)
        return AsyncResponse(self.frontend.submit(headers, body), self._waker)


class RuntimeContainer:
    """A frontend response as the runtime layer's ContainerResponse, its chunks counted by the request's metrics
    track. A wait is bounded by the time the runtime layer has left (ContainerTimeout) and by DJL's
    chunked_read_timeout (a ContainerFailed "Read chunk timeout", as the frontend's own reader raises it)."""

    def __init__(self, response: AsyncResponse, track: RequestTrack, chunk_timeout: float) -> None:
        self._response = response
        self._track = track
        self._chunk_timeout = chunk_timeout
        self._head: Head | None = None
        self._peeked: list[bytes | None | BaseException] = []

    @property
    def status(self) -> int:
        return self._head.status if self._head is not None else 500

    @property
    def headers(self) -> dict[str, str]:
        return self._head.headers if self._head is not None else {}

    async def peek(self, timeout: float) -> None:
        if not self._peeked:
            self._peeked.append(await self._get(timeout))

    async def next_chunk(self, timeout: float) -> bytes | None:
        item = self._peeked.pop() if self._peeked else await self._get(timeout)
        if isinstance(item, BaseException):
            raise ContainerFailed(str(item) or type(item).__name__) from item
        return item

    def cancel(self) -> None:
        self._response.cancel()

    async def _get(self, timeout: float) -> bytes | None | BaseException:
        if timeout <= 0:
            raise ContainerTimeout("no container output before the deadline")
        try:
            if self._head is None:
                self._head = await self._response.head(min(timeout, self._chunk_timeout))
                if self._head.status < 300:
                    self._track.begin(_content_type(self._head.headers))
            chunk = await self._response.next_chunk(min(timeout, self._chunk_timeout))
        except TimeoutError as error:
            if timeout <= self._chunk_timeout:
                raise ContainerTimeout("no container output before the deadline") from error
            return error
        except BackendError as error:
            return error
        if self._head.status < 300:
            if chunk is None:
                self._track.finish()
            else:
                self._track.see(chunk)
        return chunk


async def _counted(response: AsyncResponse, track: RequestTrack | None, timeout: float) -> AsyncIterator[bytes]:
    """A response's non-empty chunks as they come, counted by `track` (when given)."""
    while (chunk := await response.next_chunk(timeout)) is not None:
        if track is not None:
            track.see(chunk)
        yield chunk
    if track is not None:
        track.finish()


async def _relay(
    chunks: AsyncIterator[bytes], on_disconnect: Callable[[], None], on_end: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Chunks as they come; if the client goes away (or the stream breaks) the request is cancelled."""
    finished = False
    try:
        async for chunk in chunks:
            yield chunk
        finished = True
    except (BackendError, TimeoutError) as error:
        log.error("stream broken: %s", error)
        raise
    finally:
        on_end()
        if not finished:
            log.info("stream ended early (client gone or stream broken); cancelling its request")
            on_disconnect()


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
