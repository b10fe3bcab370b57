"""Test doubles for the pure logic: a byte-level tokenizer and a scripted engine with its own loop thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lmistream.engine import EngineUpdate, UpdateCallback
from lmistream.params import GenerationParams

EOS = 256


class ByteTokenizer:
    """ids 0-255 are bytes, 256 is <eos>, 257+ are extra pieces; decoding replaces broken UTF-8 like real BPE."""

    def __init__(self, extra_pieces: Sequence[str] = ()) -> None:
        self._pieces = {i: bytes([i]) for i in range(256)}
        self._pieces[EOS] = b"<eos>"
        for offset, piece in enumerate(extra_pieces):
            self._pieces[EOS + 1 + offset] = piece.encode()
        self.eos_token_ids = frozenset({EOS})
        self.special_token_ids = frozenset({EOS})
        self.renders_tools = False
        self.max_token_chars = max(len(piece.decode("utf-8", errors="replace")) for piece in self._pieces.values())

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def render_chat(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        """A plain template: one `role: content` line per message, then `assistant:`."""
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def decode(self, token_ids: Sequence[int]) -> str:
        return b"".join(self._pieces[i] for i in token_ids).decode("utf-8", errors="replace")

    def ids(self, text: str) -> list[int]:
        """Token ids spelling `text` byte by byte."""
        return list(text.encode())


Script = Callable[[str, GenerationParams], list[int]]


def echo_script(prompt: str, params: GenerationParams) -> list[int]:
    """Answers with the prompt reversed, then EOS."""
    return list(prompt[::-1].encode()) + [EOS]


class ScriptedEngine:
    """An Engine whose loop thread emits one scripted token per active request per tick."""

    max_sequence_length = 4096
    load_path = "scripted"
    parameter_bytes = 0

    def __init__(self, script: Script = echo_script, tick: float = 0.002, tokenizer: ByteTokenizer | None = None):
        self.tokenizer = tokenizer or ByteTokenizer()
        self._script = script
        self._tick = tick
        self._lock = threading.Lock()
        self._active: dict[str, tuple[list[int], int, int]] = {}
        self.submitted: dict[str, GenerationParams] = {}
        self.cancelled: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_update: UpdateCallback) -> None:
        self._on_update = on_update
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def validate(self, params: GenerationParams) -> None:
        """The script honours every parameter."""

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        tokens = self._script(self.tokenizer.decode(prompt_ids), params)
        with self._lock:
            self.submitted[request_id] = params
            self._active[request_id] = (tokens, 0, params.max_new_tokens)

    def cancel(self, request_id: str) -> None:
        with self._lock:
            if self._active.pop(request_id, None) is not None:
                self.cancelled.append(request_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            for update in self._step():
                self._on_update(update)

    def _step(self) -> list[EngineUpdate]:
        updates = []
        with self._lock:
            for request_id, (tokens, position, limit) in list(self._active.items()):
                if not self._may_advance(position):
                    continue
                token = tokens[position]
                done = token in self.tokenizer.eos_token_ids or position + 1 >= min(len(tokens), limit)
                updates.append(EngineUpdate(request_id, (token,), (-0.5,), finished=done))
                if done:
                    del self._active[request_id]
                else:
                    self._active[request_id] = (tokens, position + 1, limit)
        return updates

    def _may_advance(self, position: int) -> bool:
        """Whether a request may emit its token at this position in this tick."""
        return True


class HeldEngine(ScriptedEngine):
    """The scripted engine holding every request after its first token until `release()`: a step boundary the test
    decides, so that it sees the first token reach the client before the second exists."""

    def __init__(self) -> None:
        super().__init__()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def _may_advance(self, position: int) -> bool:
        return position == 0 or self._released.is_set()


def serve_engines(monkeypatch, make: Callable[[], ScriptedEngine]) -> Iterator[list]:
    """Fixture body: every engine the handler creates comes from `make`; yields them, and stops them afterwards."""
    import lmistream.service

    made: list = []

    def factory(config):
        made.append(make())
        return made[-1]

    monkeypatch.setattr(lmistream.service, "create_engine", factory)
    yield made
    for engine in made:
        engine.stop()
