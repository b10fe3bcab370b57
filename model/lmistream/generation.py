"""Generation: one request's journey from engine updates to formatted output text. Pure (no torch, no DJL; the clock is
injected).

It owns the request's TextStream and Formatter and knows when the request is over: on the engine's
finish (EOS or length), on a stop sequence (then the engine must cancel it: see `needs_cancel`) or on error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Callable

from .engine import EngineUpdate, Tokenizer
from .errors import HandlerError
from .formatters import Formatter, StreamEvent
from .params import GenerationRequest
from .textstream import FinishReason, TextStream, Token, TopToken


class Generation:
    """State of one admitted request."""

    def __init__(
        self,
        request_id: str,
        request: GenerationRequest,
        tokenizer: Tokenizer,
        formatter: Formatter,
        buffered: bool = False,
        prompt_tokens: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_id = request_id
        self.request = request
        self.formatter = formatter
        self._stream = TextStream(tokenizer, request.params)
        self._tokenizer = tokenizer
        self._eos = tokenizer.eos_token_ids
        self._events = 0
        self.finished = False
        self.needs_cancel = False  # a stop sequence ended it while the engine still runs it
        self.buffered = buffered  # a non-streaming request: hand out the whole output at the end
        self.error: HandlerError | None = None  # why it failed, once it has
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0  # prompt tokens the engine's prefix cache held
        self._clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self._held: list[str] = []
        self._prefill: tuple[Token, ...] | None = None

    @property
    def content_type(self) -> str:
        return self.formatter.content_type

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._stream.finish_reason

    def absorb(self, updates: Iterable[EngineUpdate]) -> str:
        """Formatted output for these updates ('' if nothing to emit yet; everything at the end if buffered)."""
        out = []
        for update in updates:
            if self.finished:
                break
            if update.error is not None:
                failure = self.fail(update.error, update.code)
                if self.buffered:  # one body: the error alone
                    return failure
                out.append(failure)
                break
            out.extend(self._tokens(update))
            if update.finished and not self.finished:
                out.append(self._finish_without_token())
        if not self.buffered:
            return "".join(out)
        self._held.extend(out)
        if not self.finished:
            return ""
        text, self._held = "".join(self._held), []
        return text

    def abandon(self) -> None:
        """The client went away: end without output and have the engine request cancelled on release."""
        self.finished = True
        self.needs_cancel = True

    def rows_to_cancel(self) -> list[str]:
        """The engine row to cancel on release, if it may still be generating."""
        return [self.request_id] if not self.finished or self.needs_cancel else []

    def fail(self, message: str, code: int) -> str:
        """End the request with an in-band error in its format; a non-streaming request drops what it held and
        answers the error alone (DJL then sets the response status from it)."""
        self.finished = True
        self._stream.finish_reason = FinishReason.ERROR
        self.error = HandlerError(message)
        self.error.status, self.error.api = code, self.request.api
        if self.buffered:
            self._held = []  # what it held is dropped: the answer is the error alone
            return self.formatter.error_body(message, code)
        event = StreamEvent(
            self._next_index(),
            None,
            last=True,
            error=message,
            code=code,
            finish_reason=FinishReason.ERROR,
            generated_tokens=self._stream.count,
        )
        return self.formatter.error(event)

    def summary(self) -> str:
        """One log line's worth of what happened to the request (never its text)."""
        ttft = "-" if self.first_token_at is None else f"{1000 * (self.first_token_at - self.started):.0f}"
        reason = self.finish_reason.value if self.finish_reason is not None else "abandoned"
        return (
            f"{self.request_id} {reason}: prompt_tokens={self.prompt_tokens} cached_tokens={self.cached_tokens} "
            f"generated_tokens={self._stream.count} ttft_ms={ttft} "
            f"total_ms={1000 * (self._clock() - self.started):.0f}"
        )

    def _tokens(self, update: EngineUpdate) -> list[str]:
        if self.first_token_at is None and update.token_ids:
            self.first_token_at = self._clock()
        if update.prefill:
            self._prefill = self._prefill_tokens(update.prefill)
        self.cached_tokens = max(self.cached_tokens, update.cached_tokens)
        out = []
        log_probs = update.log_probs or (None,) * len(update.token_ids)
        tops = update.top_log_probs or ((),) * len(update.token_ids)
        last_position = len(update.token_ids) - 1
        for position, (token_id, log_prob, top) in enumerate(zip(update.token_ids, log_probs, tops)):
            token = self._stream.push(token_id, log_prob)
            if top:
                token = replace(token, top=self._top_tokens(top))
            engine_done = update.finished and position == last_position
            if self._stream.finish_reason is None and not engine_done:
                out.append(self.formatter.write(StreamEvent(self._next_index(), token)))
                continue
            on_eos = token_id in self._eos and not self.request.params.ignore_eos
            reason = FinishReason.EOS_TOKEN if on_eos else FinishReason.LENGTH
            tail = self._stream.finish(reason)
            self.needs_cancel = not update.finished
            out.append(self.formatter.write(self._final_event(replace(token, text=token.text + tail))))
            break
        return out

    def _top_tokens(self, top: tuple[tuple[int, float], ...]) -> tuple[TopToken, ...]:
        special = self._tokenizer.special_token_ids
        return tuple(TopToken(i, self._tokenizer.decode([i]), lp, i in special) for i, lp in top)

    def _prefill_tokens(self, prefill: tuple[tuple[int, float | None], ...]) -> tuple[Token, ...]:
        """The prompt's tokens, each with its own text (as DJL and TGI decode them)."""
        special = self._tokenizer.special_token_ids
        return tuple(Token(i, self._tokenizer.decode([i]), lp, i in special) for i, lp in prefill)

    def _finish_without_token(self) -> str:
        """The engine ended the request in an update without tokens: the summary alone."""
        self._stream.finish(FinishReason.LENGTH)
        return self.formatter.write(self._final_event(None))

    def _final_event(self, token: Token | None) -> StreamEvent:
        self.finished = True
        text = self._stream.generated_text
        if self.request.params.return_full_text:
            text = self.request.inputs + text
        return StreamEvent(
            self._next_index(),
            token,
            last=True,
            generated_text=text,
            finish_reason=self._stream.finish_reason,
            generated_tokens=self._stream.count,
            cached_tokens=self.cached_tokens,
            inputs=self.request.inputs,
            details=self.request.params.details or self.request.params.prompt_logprobs,  # TGI's rule
            seed=self.request.params.seed,
            prefill=self._prefill,
        )

    def _next_index(self) -> int:
        self._events += 1
        return self._events - 1
