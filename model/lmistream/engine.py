"""The engine interface: what the handler needs from a token generator, free of torch.

An engine runs its own generation loop in the background. The handler submits tokenized prompts with
their parameters and receives `EngineUpdate`s through the callback given to `start`, from the engine's
thread. `lmistream.engines` holds the implementations (transformers' continuous batching, and the portable
iteration-level batcher for older stacks) and chooses one; tests use a scripted one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .params import GenerationParams

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """The few tokenizer operations the text pipeline needs."""

    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int]
    #: the most characters one token spans: a text longer than limit * this cannot fit, whatever it tokenizes to
    max_token_chars: int
    #: whether the model's chat template renders the tools a chat request gives
    renders_tools: bool

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Prompt text to token ids (with the model's usual special tokens unless told not to)."""

    def render_chat(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        """A conversation (and the tools it may call) as prompt text through the model's chat template, ready for the
        assistant's turn; InvalidRequest naming `messages` when the model has no template or the template refuses
        them."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids to text, special tokens kept as their text."""


@dataclass(frozen=True)
class EngineUpdate:
    """New tokens of one request since its previous update; `finished` once the engine stopped it."""

    request_id: str
    token_ids: tuple[int, ...] = ()
    log_probs: tuple[float | None, ...] = ()
    #: per token, the most likely alternatives as (token id, log-probability), when the request asks for them
    top_log_probs: tuple[tuple[tuple[int, float], ...], ...] = ()
    #: the prompt's tokens as (token id, log-probability; None for the first), on a request's first update when it
    #: asks for them (`decoder_input_details`)
    prefill: tuple[tuple[int, float | None], ...] = ()
    finished: bool = False
    error: str | None = None
    #: the HTTP status of an error update (DJL's 424; 507 when the engine ran out of memory)
    code: int = 424
    #: prompt tokens whose KV the engine took from its prefix cache instead of computing them
    cached_tokens: int = 0


UpdateCallback = Callable[[EngineUpdate], None]


def deliver(on_update: UpdateCallback | None, update: EngineUpdate) -> None:
    """Hand an update to the handler's callback (if started); a failing callback is logged, never raised into the
    engine's loop, where it would stop every other request."""
    if on_update is None:
        return
    try:
        on_update(update)
    except Exception:
        logger.exception("on_update failed for request %s", update.request_id)


class Engine(Protocol):
    """A continuous-batching token generator."""

    #: most tokens (prompt + generated) one sequence may hold
    max_sequence_length: int
    #: how the model was placed ("one device", or the tensor-parallel path) and the parameter bytes it holds here
    load_path: str
    parameter_bytes: int

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (read-only here, so an engine may hold a more specific one)."""

    def start(self, on_update: UpdateCallback) -> None:
        """Start the background loop; every update of every request goes to `on_update`."""

    def validate(self, params: GenerationParams) -> None:
        """Raise InvalidRequest, naming the parameter, for a setting this engine cannot honour."""

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        """Queue a request; it joins the running batch at the engine's next step."""

    def cancel(self, request_id: str) -> None:
        """Stop generating for a request and free its slot; no further updates are required for it."""

    def stop(self) -> None:
        """Stop the loop and release resources."""
