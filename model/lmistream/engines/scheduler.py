"""Scheduler: which requests join the running batch and which leave it, one `StepPlan` per engine step. Pure.

The portable engine's loop asks for a plan at every step boundary. A plan is the whole of what can change the batch
from outside: the requests admitted now (in arrival order, within the free slots and the prefill token budget) and
the running requests cancelled since the last plan. Everything else a step does follows from the model's output, so
a copy of the loop that executes the same plans takes the same steps: that is how tensor-parallel ranks stay in
lockstep (rank 0 plans, every rank executes). Each queued request carries its sampling seed for the same reason.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..params import GenerationParams


@dataclass(frozen=True)
class QueuedRequest:
    """A submitted request waiting for a slot, as the engine will run it: its prompt, parameters and the seed of its
    sampling generator."""

    request_id: str
    prompt_ids: tuple[int, ...]
    params: GenerationParams
    seed: int


@dataclass(frozen=True)
class StepPlan:
    """What changes at one step boundary: requests that join, running requests that leave."""

    admit: tuple[QueuedRequest, ...] = ()
    cancel: tuple[str, ...] = ()
    stop: bool = False

    @property
    def empty(self) -> bool:
        return not (self.admit or self.cancel or self.stop)


class Scheduler:
    """Thread-safe queue of waiting requests and pending cancellations (FCFS admission).

    `max_batch_size` bounds the running rows; `max_prefill_tokens` bounds the prompt tokens admitted in one step,
    except that a single request is always admitted when a slot is free, so a long prompt cannot starve.
    `max_adapters` bounds the distinct LoRA adapters the running rows use: a request on one more waits, and the
    requests behind it go ahead.
    """

    def __init__(self, max_batch_size: int, max_prefill_tokens: int | None = None, max_adapters: int = 0) -> None:
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.max_adapters = max_adapters
        self._adapters: dict[str, str] = {}  # running request -> its adapter
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, QueuedRequest] = OrderedDict()
        self._running: set[str] = set()
        self._cancelled: list[str] = []
        self._stopping = False

    def submit(self, request: QueuedRequest) -> None:
        with self._cond:
            self._waiting[request.request_id] = request
            self._cond.notify_all()

    def cancel(self, request_id: str) -> None:
        """Forget a waiting request at once; a running one leaves the batch at the next plan."""
        with self._cond:
            if self._waiting.pop(request_id, None) is None and request_id in self._running:
                self._cancelled.append(request_id)
                self._cond.notify_all()

    def finished(self, request_ids: list[str]) -> None:
        """The engine ended these running requests by itself (eos or length)."""
        with self._cond:
            self._running.difference_update(request_ids)
            for request_id in request_ids:
                self._adapters.pop(request_id, None)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def plan(self, timeout: float | None = None) -> StepPlan:
        """The next step's plan; blocks (up to `timeout`) while nothing runs and nothing waits."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._stopping or self._running or self._waiting or self._cancelled, timeout=timeout
            )
            if self._stopping:
                return StepPlan(cancel=tuple(self._running), stop=True)
            cancel = tuple(dict.fromkeys(self._cancelled))
            self._cancelled.clear()
            self._running.difference_update(cancel)
            for request_id in cancel:
                self._adapters.pop(request_id, None)
            admit = self._admit_waiting()
            self._running.update(a.request_id for a in admit)
            return StepPlan(admit=admit, cancel=cancel)

    def _admit_waiting(self) -> tuple[QueuedRequest, ...]:
        free = self.max_batch_size - len(self._running)
        budget = self.max_prefill_tokens
        admitted: list[QueuedRequest] = []
        tokens = 0
        adapters = set(self._adapters.values())
        for request in self._waiting.values():
            if len(admitted) >= free:
                break
            adapter = request.params.adapter
            if adapter is not None and adapter not in adapters and len(adapters) >= self.max_adapters:
                continue
            tokens += len(request.prompt_ids)
            if admitted and budget is not None and tokens > budget:
                break
            admitted.append(request)
            if adapter is not None:
                adapters.add(adapter)
                self._adapters[request.request_id] = adapter
        for request in admitted:
            del self._waiting[request.request_id]
        return tuple(admitted)
