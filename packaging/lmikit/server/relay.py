"""Waiting for the DJL replay's responses on the event loop, without a thread per response.

The replay's threads produce a response's chunks; the HTTP server writes them from its event loop. A `Response`
calls a listener from the producing thread when a chunk arrives (`Response.listen`); the listener here hands the
wake-up to the loop through `LoopWaker`, which makes one `call_soon_threadsafe` (one self-pipe write) for every
wake-up that arrives before the loop runs it: a rolling-batch step that emits a chunk to 32 streams wakes the loop
once, not 32 times. A stream that waits holds a future and a timer, nothing else.

Buffering is the response's own: chunks wait in the `Response` until the HTTP side takes them, so a slow client
holds at most its own request's output (bounded by its max_new_tokens) and never blocks the replay's threads or
other streams; the HTTP side takes the next chunk only after the previous one was handed to the transport, whose
flow control holds a client that does not read (backpressure per connection).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from lmikit.djl.response import Head, Response


class LoopWaker:
    """Resolves futures of one event loop from other threads, batching the wake-ups."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[asyncio.Future[None]] = []

    def wake(self, future: asyncio.Future[None]) -> None:
        """Resolve `future` on the loop soon (callable from any thread)."""
        with self._lock:
            first = not self._pending
            self._pending.append(future)
        if first:
            try:
                self.loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            if not future.done():
                future.set_result(None)


class AsyncResponse:
    """A DJL `Response` read from the event loop: `head` and `chunks` as the blocking reader has them (same timeouts,
    same errors), each wait a future resolved by the producing thread."""

    def __init__(self, response: Response, waker: LoopWaker) -> None:
        self.response = response
        self.request_id = response.request_id
        self._waker = waker

    async def head(self, timeout: float | None) -> Head:
        """Status and headers once decided; TimeoutError after `timeout` seconds, BackendError if the backend broke."""
        while True:
            head = self.response.poll_head()
            if isinstance(head, Head):
                return head
            await self._arrival(timeout, f"response head not decided within {timeout} s")

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The next non-empty chunk, None at the end; TimeoutError("Read chunk timeout") when none comes within
        `timeout` seconds, BackendError if the backend broke."""
        while True:
            chunk = self.response.poll_chunk()
            if chunk is None:
                return None
            if not isinstance(chunk, bytes):  # PENDING
                await self._arrival(timeout, "Read chunk timeout")
            elif chunk:
                return chunk

    async def chunks(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The non-empty chunks as they come."""
        while (chunk := await self.next_chunk(timeout)) is not None:
            yield chunk

    async def read(self, timeout: float | None) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks(timeout)])

    def cancel(self) -> None:
        self.response.cancel()

    async def _arrival(self, timeout: float | None, message: str) -> None:
        """Until something arrives (at once if it already has); TimeoutError(message) after `timeout` seconds."""
        loop = self._waker.loop
        arrived: asyncio.Future[None] = loop.create_future()
        if not self.response.listen(lambda: self._waker.wake(arrived)):
            return
        timer = None if timeout is None else loop.call_later(timeout, _expire, arrived, message)
        try:
            await arrived
        finally:
            if timer is not None:
                timer.cancel()


def _expire(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(TimeoutError(message))
