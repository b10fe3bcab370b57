"""One request's HTTP response as DJL's frontend builds it: the writer side (status, headers, chunks, the end or a
failure), filled by the frontend's threads, and the reader side the HTTP server relays: blocking (`head`, `chunks`),
or without blocking (`poll_head`, `poll_chunk`, and `listen` to be called back from the producing thread when
something arrives), which lets an event loop wait for many responses without a thread per response."""

from __future__ import annotations

import http
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from lmikit.djl.java import gson, gson_int, gson_str, java_props, put_case_insensitive

END = object()


class _Pending:
    """The type of PENDING."""


#: what the non-blocking reads return while nothing has arrived yet
PENDING: Final = _Pending()


class BackendError(RuntimeError):
    """The emulated backend broke where real DJL would leave the client hanging until its read timeout (the
    rolling-batch thread died on a malformed item, an async generator raised, the frontend was closed).
    A server should drop the connection."""


@dataclass(frozen=True)
class Head:
    """The HTTP response head DJL decided: status, reason phrase, headers, and whether it streams chunked."""

    status: int
    reason: str
    headers: dict[str, str]
    chunked: bool


class _ChunkQueue:
    """A minimal blocking FIFO whose `get` raises TimeoutError("Read chunk timeout") like Java's supplier; a reader
    that does not block polls it and has a one-shot listener called when an item arrives."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._ready = threading.Condition()
        self._listener: Callable[[], None] | None = None

    def put(self, item: Any) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()
            listener, self._listener = self._listener, None
        if listener is not None:
            listener()

    def poll(self) -> Any:
        with self._ready:
            return self._items.popleft() if self._items else PENDING

    def listen(self, listener: Callable[[], None]) -> bool:
        """Have `listener` called once, from the producing thread, when an item arrives; False (and no call) when
        one is already there."""
        with self._ready:
            if self._items:
                return False
            self._listener = listener
            return True

    def get(self, timeout: float | None) -> Any:
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                raise TimeoutError("Read chunk timeout")
            return self._items.popleft()


class Response:
    """One request's response, filled by the frontend's threads and read by the HTTP server.

    Consumer side: blocking `head(timeout)`, `chunks(timeout)`, `read(timeout)` (in-process readers, the tests'
    replay), non-blocking `poll_head()`, `poll_chunk()` and `listen()` (the HTTP server's event loop), and
    `cancel()`. Timeouts are seconds (None waits forever) and raise TimeoutError; a broken backend raises
    BackendError from either kind of call.
    """

    def __init__(self, request_id: str, always_chunked: bool) -> None:
        self.request_id = request_id
        self._always_chunked = always_chunked
        self._lock = threading.Lock()
        self._head_ready = threading.Event()
        self._head: Head | None = None
        self._error: BaseException | None = None
        self._queue = _ChunkQueue()
        self._closed = False
        self._cancelled = False
        self._code, self._message = 200, "OK"
        self._headers: dict[str, str] = {}

    def head(self, timeout: float | None = None) -> Head:
        """Block until status and headers are decided (for streams: when the first chunk is produced)."""
        if not self._head_ready.wait(timeout):
            raise TimeoutError(f"response head not decided within {timeout} s")
        head = self.poll_head()
        assert isinstance(head, Head)  # decided: poll_head returns it or raises
        return head

    def chunks(self, timeout: float | None = None) -> Iterator[bytes]:
        """Yield the non-empty body chunks as produced; each wait is bounded by `timeout` ("Read chunk timeout")."""
        while (item := self._body_item(self._queue.get(timeout))) is not None:
            if item:
                yield item

    def poll_head(self) -> Head | _Pending:
        """The head if it is decided (PENDING otherwise), without blocking; BackendError as `head`."""
        if not self._head_ready.is_set():
            return PENDING
        if self._head is None:
            assert self._error is not None  # a head that is ready without a Head was aborted
            raise self._error
        return self._head

    def poll_chunk(self) -> bytes | None | _Pending:
        """The next body chunk without blocking: bytes (possibly empty), None at the end, PENDING while nothing has
        arrived; raises what `chunks` raises."""
        item = self._queue.poll()
        return PENDING if item is PENDING else self._body_item(item)

    @staticmethod
    def _body_item(item: Any) -> bytes | None:
        """A queued body item as readers see it: bytes, None at the end; a failure is raised."""
        if item is END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def listen(self, listener: Callable[[], None]) -> bool:
        """Have `listener` called once, from the frontend's thread, when the next chunk (or the end, or a failure)
        arrives; False, and no call, when one is waiting already. The head is decided by the time one arrives."""
        return self._queue.listen(listener)

    def read(self, timeout: float | None = None) -> bytes:
        """The whole body (each chunk wait bounded by `timeout`)."""
        return b"".join(self.chunks(timeout))

    def cancel(self) -> None:
        """The client went away: later chunks are discarded; newest also skips the job if it is still queued."""
        with self._lock:
            self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def set_status(self, code: int, message: str | None = None) -> None:
        with self._lock:
            self._code = code
            if message is not None:
                self._message = message

    def put_headers(self, headers: Mapping[str, Any]) -> None:
        with self._lock:
            for key, value in headers.items():
                put_case_insensitive(self._headers, key, str(value))

    def emit(self, data: bytes, last: bool) -> None:
        """Append a chunk to the Java ChunkedBytesSupplier; the first one fixes the head."""
        with self._lock:
            if self._closed:
                return
            if self._head is None:
                self._publish_head(chunked=self._always_chunked or not last)
            self._closed = last
            if not self._cancelled:
                self._queue.put(bytes(data))
            if last:
                self._queue.put(END)

    def complete(self, body: bytes) -> None:
        """A non-streaming response with the current status and headers."""
        with self._lock:
            if self._closed:
                return
            self._publish_head(chunked=False)
            self._closed = True
            self._queue.put(bytes(body))
            self._queue.put(END)

    def fail(self, code: int, error_type: str, message: str) -> None:
        """A server-side error response, shaped like DJL's `ErrorResponse` (pretty GSON plus newline)."""
        self.set_status(code, http.HTTPStatus(code).phrase)
        self.put_headers({"content-type": "application/json"})
        body = {"code": code, "type": error_type, "message": message}
        self.complete((gson(body, pretty=True) + "\n").encode("utf-8"))

    def abort(self, error: BaseException) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
            self._head_ready.set()
            self._queue.put(error)

    def _publish_head(self, chunked: bool) -> None:
        self._head = Head(self._code, self._message, java_props(self._headers.items()), chunked)
        self._head_ready.set()


def apply_error_status(response: Response, data: str) -> None:
    """0.23 `Request.addResponse`: data that is a JSON object with "code" sets the status (and "error" the
    reason); GSON failures are ignored. Data in which no key can read "code" (not even escaped) is not parsed:
    this runs for every token."""
    if "code" not in data and "\\u" not in data:
        return
    try:
        content = json.loads(data)
    except ValueError:
        return
    if not isinstance(content, dict):
        return
    code = gson_int(content.get("code"))
    if code is None:
        return
    error = content.get("error")
    response.set_status(code, gson_str(error) if isinstance(error, (str, int, float)) else None)
