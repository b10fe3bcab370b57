"""Token masks for structured output on the portable and continuous engines: one grammar matcher per constrained row.

The grammar library is llguidance (the Rust core of guidance, also one of vLLM's structured-output backends), chosen
over xgrammar and outlines-core because it is the one that installs on both stacks without replacing anything: its
wheels need neither torch nor transformers (1.3.0 is its last release for Python 3.9, LMI 0.23's; newer ones on the
main stack), while xgrammar requires transformers >= 4.38, which would replace 0.23's 4.30.2. outlines-core installs
on both too, but compiles an index over the whole vocabulary for each schema before the first token and has no
context-free grammars; llguidance takes JSON schemas, regexes and Lark grammars alike and computes each step's mask
lazily from the tokens so far (about half a millisecond per row on a 49k vocabulary), so a request starts at once.

A step's masks are computed for the constrained rows only, into one packed bitmask, unpacked and applied to those
rows' logits before any other processing; unconstrained rows are never touched. A row's matcher consumes every token
the row takes, so its next mask allows exactly the continuations of the grammar, and the tokenizer's eos token once
the answer is complete.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from ..errors import InvalidRequest
from ..structured import Constraint

try:
    import llguidance
    import llguidance.hf
    from llguidance.torch import fill_next_token_bitmask
except ImportError:  # an image without it: constrained requests are refused (`GrammarCompiler.check`)
    llguidance = None  # type: ignore[assignment]

#: answers without runs of free whitespace between JSON tokens (a small model can loop there)
JSON_OPTIONS: Any = {"whitespace_flexible": False}
_BITS = 32


class GrammarCompiler:
    """Turns constraints into matchers over one model's tokenizer (whose llguidance view is built on first use)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def check(self, constraint: Constraint) -> None:
        """InvalidRequest naming the constraint's field when its schema, regex or grammar does not compile."""
        message = llguidance.LLMatcher.validate_grammar(self._grammar(constraint), self._ll_tokenizer())
        if message:
            raise InvalidRequest(f"{constraint.field} does not compile: {message.strip()}", param=constraint.field)

    def matcher(self, constraint: Constraint) -> TokenMatcher:
        return TokenMatcher(llguidance.LLMatcher(self._ll_tokenizer(), self._grammar(constraint), log_level=1))

    def _ll_tokenizer(self) -> Any:
        if llguidance is None:
            raise InvalidRequest(
                "structured output needs the llguidance package, which this image lacks: add llguidance to the "
                "model's requirements.txt (llguidance==1.3.0 on Python 3.9)"
            )
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab_size)
            return self._tokenizer

    def _grammar(self, constraint: Constraint) -> str:
        matcher = llguidance.LLMatcher
        if constraint.kind == "json":
            return str(matcher.grammar_from_json_schema(constraint.spec, defaults=JSON_OPTIONS))
        if constraint.kind == "regex":
            return str(matcher.grammar_from_regex(constraint.spec))
        if constraint.kind == "choice":
            return str(matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in constraint.choices)))
        return str(matcher.grammar_from_lark(constraint.spec))


class TokenMatcher:
    """One row's grammar state: which tokens may come next, advanced by each token the row takes."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32 words, one bit per token)."""
        fill_next_token_bitmask(self._matcher, bitmask, row)

    def consume(self, token_id: int) -> None:
        if not self._matcher.is_stopped() and not self._matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar matcher refused token {token_id}: {self._matcher.get_error()}")


def apply_masks(scores: torch.Tensor, matchers: dict[int, TokenMatcher]) -> None:
    """Set to -inf, in place, every score a row's grammar forbids (for the rows of `scores` that `matchers` names
    only)."""
    vocab = scores.size(-1)
    bitmask = torch.empty((len(matchers), (vocab + _BITS - 1) // _BITS), dtype=torch.int32)
    for slot, matcher in enumerate(matchers.values()):
        matcher.fill(bitmask, slot)
    index = torch.tensor(list(matchers), dtype=torch.long, device=scores.device)
    forbidden = unpack(bitmask.to(scores.device), vocab).logical_not_()
    scores.index_put_((index,), scores.index_select(0, index).masked_fill_(forbidden, -float("inf")))


def unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Packed int32 words to one bool per token (bit i of word w is token 32 w + i)."""
    shifts = torch.arange(_BITS, dtype=torch.int32, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.size(0), -1)[:, :vocab].bool()
