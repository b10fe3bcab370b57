"""What the engine tests share: a callback that records every update and waits on conditions (never on sleeps)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from lmistream.engine import EngineUpdate

WAIT_S = 60.0


class Collector:
    """The engine callback: records every update and lets the test wait for conditions, always with a timeout."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.updates: dict[str, list[EngineUpdate]] = defaultdict(list)

    def __call__(self, update: EngineUpdate) -> None:
        with self._cond:
            self.updates[update.request_id].append(update)
            self._cond.notify_all()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold every update back while the body runs (the engine's callback waits), so that it sees none arrive."""
        with self._cond:
            yield

    def wait_for(self, predicate, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_finished(self, *request_ids: str, timeout: float = WAIT_S) -> None:
        assert self.wait_for(lambda: all(self.finished(r) for r in request_ids), timeout), dict(self.updates)

    def finished(self, request_id: str) -> bool:
        return any(u.finished for u in self.updates.get(request_id, ()))

    def tokens(self, request_id: str) -> list[int]:
        with self._cond:
            return [t for u in self.updates.get(request_id, ()) for t in u.token_ids]
