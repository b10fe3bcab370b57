"""RankedEngine: an engine on one tensor-parallel rank, as the handler of that rank sees it.

Rank 0's engine takes the requests. The other ranks' engines only follow it (the portable engine executes rank 0's
plans; transformers' continuous batching broadcasts its own), so their handler must never submit to them. What the
other ranks' handlers see depends on DJL:

* newest LMI sends requests to rank 0 only ("passive workers"): the other handlers get the init call and nothing more;
* LMI 0.23 sends every request to every rank and answers with the LAST rank's output: so rank 0 relays its updates
  to the others over a broadcast channel, and each follower hands them to its handler once its handler has admitted
  that request (DJL gives every rank the same requests in the same order, so the request ids agree). Updates that
  arrive first wait in an inbox; updates of a request its handler has dropped are discarded.

LoRA adapters are served by every rank's engine (each slices them to its shards), so every rank must hold the same
ones: those of `adapters/`, which every rank's handler registers before the engines start. Registrations after the
start are refused: DJL sends them to one handler, and the other ranks would not have the adapter.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any

from ..adapters import AdapterSpec
from ..engine import Engine, EngineUpdate, UpdateCallback, deliver
from ..errors import ConfigError
from ..params import GenerationParams
from .distributed import Channel, TensorParallel

logger = logging.getLogger(__name__)
#: request ids a follower remembers as dropped, so that late updates for them are not held forever
FORGOTTEN_IDS = 4096
_STOP = "stop"


class RankedEngine:
    """The `Engine` protocol for one rank of a tensor-parallel group around that rank's engine."""

    def __init__(self, inner: Engine, tp: TensorParallel, relay: Channel | None) -> None:
        self.inner = inner
        self.tp = tp
        self.tokenizer = inner.tokenizer
        self.max_sequence_length = inner.max_sequence_length
        self.load_path = inner.load_path
        self.parameter_bytes = inner.parameter_bytes
        self._relay = relay
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._on_update: UpdateCallback | None = None
        self._lock = threading.Lock()
        self._admitted: set[str] = set()
        self._held: dict[str, list[EngineUpdate]] = {}
        self._forgotten: deque[str] = deque(maxlen=FORGOTTEN_IDS)
        self._relay_thread: threading.Thread | None = None

    def start(self, on_update: UpdateCallback) -> None:
        self._on_update = on_update
        if self.tp.leader:
            self.inner.start(self._publish)
            target = self._send_updates
        else:
            self.inner.start(lambda update: None)  # rank 0's updates are the ones that count
            target = self._receive_updates
        if self._relay is not None:
            self._relay_thread = threading.Thread(target=target, name="rank-relay", daemon=True)
            self._relay_thread.start()

    def validate(self, params: GenerationParams) -> None:
        self.inner.validate(params)

    def add_adapter(self, spec: AdapterSpec) -> None:
        """An adapter of `adapters/` on this rank (before the start only: every rank must hold the same adapters)."""
        if self._on_update is not None:
            raise ConfigError(
                f"adapter {spec.name!r}: with option.tensor_parallel_degree={self.tp.degree} adapters load from the "
                "model's adapters/ folder at start on every rank; a registration at run time reaches one rank only"
            )
        add = getattr(self.inner, "add_adapter", None)
        if add is None:
            raise ConfigError(f"option.enable_lora: the {type(self.inner).__name__} does not serve LoRA adapters")
        add(spec)

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        if self.tp.leader:
            self.inner.submit(request_id, prompt_ids, params)
            return
        with self._lock:
            self._admitted.add(request_id)
            held = self._held.pop(request_id, [])
        for update in held:
            self._route(update)

    def cancel(self, request_id: str) -> None:
        if self.tp.leader:
            self.inner.cancel(request_id)
            return
        with self._lock:
            self._admitted.discard(request_id)
            self._held.pop(request_id, None)
            self._forgotten.append(request_id)

    def stop(self) -> None:
        self.inner.stop()
        if self.tp.leader and self._relay is not None:
            self._outbox.put(_STOP)

    # -- the relay -------------------------------------------------------------------------------------------------
    def _publish(self, update: EngineUpdate) -> None:
        """Rank 0: hand the update to this handler, and queue it for the other ranks' handlers."""
        if self._relay is not None:
            self._outbox.put(update)
        if self._on_update is not None:
            self._on_update(update)

    def _send_updates(self) -> None:
        assert self._relay is not None  # started only with a relay
        while True:
            batch = [self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            self._relay.send(batch)
            if _STOP in batch:
                return

    def _receive_updates(self) -> None:
        assert self._relay is not None  # started only with a relay
        while True:
            try:
                batch = self._relay.receive()
            except Exception as error:  # rank 0 is gone
                logger.error("rank %d lost rank 0 (%s)", self.tp.ranks.rank, error)
                return
            for update in batch:
                if update == _STOP:
                    return
                self._route(update)

    def _route(self, update: EngineUpdate) -> None:
        with self._lock:
            if update.request_id in self._forgotten:
                return
            if update.request_id not in self._admitted:
                self._held.setdefault(update.request_id, []).append(update)
                return
            if update.finished:
                self._admitted.discard(update.request_id)
        deliver(self._on_update, update)
