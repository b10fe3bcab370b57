"""UpdateHub: hands engine updates from the engine's thread to whoever waits for them, without polling.

Threads wait on a condition; asyncio code registers an event that the engine sets through its loop, or at once when
the engine publishes from that loop itself (vLLM's AsyncLLM: no self-pipe write per token). A wait's timeout is a
timer on the loop, not a task per wait. Updates for request ids that are not (or no longer) open are dropped. A
request answered by several rows (`generation_group`) has one mailbox, which its rows' updates are routed to.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable

from .engine import EngineUpdate, UpdateCallback


class UpdateHub:
    """Per-request mailboxes of EngineUpdates."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._boxes: dict[str, deque[EngineUpdate]] = {}
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._routes: dict[str, str] = {}  # a member's id -> the mailbox its updates go to
        self._members: dict[str, list[str]] = {}
        self._observers: list[UpdateCallback] = []

    def observe(self, observer: UpdateCallback) -> None:
        """Call `observer` with every update the engine publishes, in the engine's thread, before it is filed
        (instrumentation: a benchmark's or a test's view of the engine's pace)."""
        self._observers.append(observer)

    def open(self, request_id: str, members: Iterable[str] = ()) -> None:
        """A mailbox for a request; the updates of its `members` (rows of one request) go to it too."""
        with self._cond:
            self._boxes[request_id] = deque()
            self._members[request_id] = list(members)
            self._routes.update((member, request_id) for member in self._members[request_id])

    def close(self, request_id: str) -> None:
        with self._cond:
            self._boxes.pop(request_id, None)
            self._waiters.pop(request_id, None)
            for member in self._members.pop(request_id, ()):
                self._routes.pop(member, None)

    def publish(self, update: EngineUpdate) -> None:
        """Engine callback: show the update to the observers, file it and wake its waiters."""
        for observer in self._observers:
            observer(update)
        with self._cond:
            request_id = self._routes.get(update.request_id, update.request_id)
            box = self._boxes.get(request_id)
            if box is None:
                return
            box.append(update)
            self._cond.notify_all()
            waiter = self._waiters.get(request_id)
        if waiter is not None:
            loop, event = waiter
            if _running_loop() is loop:
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

    def take(self, request_id: str) -> list[EngineUpdate]:
        """All pending updates of a request, oldest first."""
        with self._cond:
            box = self._boxes.get(request_id)
            if not box:
                return []
            items = list(box)
            box.clear()
            return items

    def wait_any(self, request_ids: Iterable[str], timeout: float) -> bool:
        """Block until one of the requests has a pending update; False on timeout."""
        ids = list(request_ids)
        with self._cond:
            return self._cond.wait_for(lambda: any(self._boxes.get(i) for i in ids), timeout=timeout)

    async def wait_async(self, request_id: str, timeout: float) -> bool:
        """Await a pending update of one request from an asyncio task; False on timeout."""
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        with self._cond:
            if self._boxes.get(request_id):
                return True
            self._waiters[request_id] = (loop, event)
        timer = loop.call_later(timeout, event.set)
        try:
            await event.wait()
        finally:
            timer.cancel()
            with self._cond:
                self._waiters.pop(request_id, None)
        with self._cond:
            return bool(self._boxes.get(request_id))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
