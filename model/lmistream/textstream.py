"""Incremental detokenization with stop sequences: token ids in, safe text deltas out. Pure, no torch.

Text is decoded with prefix/read offsets so a multi-byte character split over tokens is never emitted half
(a trailing U+FFFD is held back), and the last `max(len(stop)) - 1` characters are held back until the
request ends, so a stop sequence is never partly streamed. The stop sequence itself is not emitted, nor the text of
a stop token (`stop_token_ids`, which end the request as vLLM ends it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .engine import Tokenizer
from .params import GenerationParams

_REPLACEMENT = "\ufffd"


class FinishReason(str, Enum):
    """Why a request ended (the values LMI and TGI put in `details.finish_reason`)."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    ERROR = "error"


@dataclass(frozen=True)
class TopToken:
    """One of the most likely tokens at a position: its id, its own text, its log-probability."""

    id: int
    text: str
    log_prob: float
    special: bool = False


@dataclass(frozen=True)
class Token:
    """One generated token and the text it released into the generated text (may be empty while held back); `top`
    holds the most likely tokens at its position, when the request asks for them."""

    id: int
    text: str
    log_prob: float | None = None
    special: bool = False
    top: tuple[TopToken, ...] = ()


class TextStream:
    """Turns one request's generated token ids into text deltas, honouring stop sequences."""

    def __init__(self, tokenizer: Tokenizer, params: GenerationParams) -> None:
        self._tokenizer = tokenizer
        self._stops = params.stop_sequences
        self._stop_ids = frozenset(params.stop_token_ids)
        self._holdback = max((len(s) for s in self._stops), default=1) - 1
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""  # decoded text so far (complete characters only)
        self._released = 0  # characters of _text already emitted
        self.count = 0  # tokens generated, special ones included
        self.finish_reason: FinishReason | None = None

    @property
    def generated_text(self) -> str:
        """The text released so far (the whole generated text once finished)."""
        return self._text[: self._released]

    def push(self, token_id: int, log_prob: float | None = None) -> Token:
        """Add one token; returns it with the text it releases. Sets `finish_reason` on a stop sequence."""
        self.count += 1
        if token_id in self._stop_ids:
            self.finish_reason = FinishReason.STOP_SEQUENCE
            special = token_id in self._tokenizer.special_token_ids
            return Token(token_id, self._release(len(self._text)), log_prob, special=special)
        if token_id in self._tokenizer.special_token_ids:
            return Token(token_id, "", log_prob, special=True)
        self._ids.append(token_id)
        self._decode_new_text()
        if self._match_stop():
            self.finish_reason = FinishReason.STOP_SEQUENCE
            return Token(token_id, self._release(len(self._text)), log_prob)
        return Token(token_id, self._release(len(self._text) - self._holdback), log_prob)

    def finish(self, reason: FinishReason) -> str:
        """End the stream (unless a stop sequence already did); returns the text still held back."""
        if self.finish_reason is None:
            self.finish_reason = reason
        return self._release(len(self._text))

    def _decode_new_text(self) -> None:
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._tokenizer.decode(self._ids[self._prefix_offset :])
        new_text = full[len(prefix) :]
        if new_text and not new_text.endswith(_REPLACEMENT):
            self._text += new_text
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def _match_stop(self) -> bool:
        if not self._stops:
            return False
        window_start = max(0, self._released - self._holdback)
        hits = [i for i in (self._text.find(s, window_start) for s in self._stops) if i >= 0]
        if not hits:
            return False
        self._text = self._text[: min(hits)]
        return True

    def _release(self, upto: int) -> str:
        upto = max(upto, self._released)
        delta = self._text[self._released : upto]
        self._released = upto
        return delta
