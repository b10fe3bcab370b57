"""Per-request token selection for the portable engine: each row of a step's logits gets its own request's settings.

The order and the arithmetic are transformers' `generate`: repetition penalty over the prompt and the tokens so far
(`RepetitionPenaltyLogitsProcessor`), then vLLM's frequency and presence penalties over the generated tokens (which
transformers lacks: minus `frequency_penalty` times a token's count, minus `presence_penalty` once it occurred), then
for sampled rows temperature, top-k, top-p and min-p (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper`, `MinPLogitsWarper`), then argmax for greedy rows or one draw per sampled row from the request's own
`torch.Generator`, seeded at admission. A private generator makes a seeded request reproducible whatever else shares
its batch, and gives every tensor-parallel rank the same draw. Written here because transformers' processors take one
setting for the whole batch.
"""

from __future__ import annotations

import torch

from ..params import GenerationParams
from .constraints import TokenMatcher, apply_masks


class RequestSampler:
    """One request's sampling state: its settings, its generator and the tokens its repetition penalty looks at."""

    def __init__(
        self,
        params: GenerationParams,
        seed: int,
        prompt_ids: list[int],
        device: torch.device,
        matcher: TokenMatcher | None = None,
    ) -> None:
        self.params = params
        self.matcher = matcher  # structured output: the row's grammar state
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.tensor(prompt_ids, dtype=torch.long, device=device)
        self._generated: torch.Tensor | None = None
        if params.frequency_penalty or params.presence_penalty:
            self._generated = torch.zeros(0, dtype=torch.long, device=device)

    def penalize(self, row: torch.Tensor) -> None:
        """The penalties, in place: repetition (scores of seen tokens below 0 are multiplied, the others divided),
        then frequency and presence over the generated tokens."""
        if self._seen is not None:
            penalty = self.params.repetition_penalty
            scores = row.gather(0, self._seen)
            row.scatter_(0, self._seen, torch.where(scores < 0, scores * penalty, scores / penalty))
        if self._generated is not None and self._generated.numel():
            tokens, counts = torch.unique(self._generated, return_counts=True)
            row.index_add_(0, tokens, -(self.params.frequency_penalty * counts + self.params.presence_penalty))

    def record(self, token_id: int) -> None:
        if self.matcher is not None:
            self.matcher.consume(token_id)
        if self._seen is not None:
            self._seen = torch.cat([self._seen, self._seen.new_tensor([token_id])])
        if self._generated is not None:
            self._generated = torch.cat([self._generated, self._generated.new_tensor([token_id])])


def select_tokens(
    logits: torch.Tensor, samplers: list[RequestSampler]
) -> tuple[list[int], list[float | None], list[tuple[tuple[int, float], ...]]]:
    """The next token of every row, its log-probability under the sampling distribution (for a greedy row, under
    the model's own distribution when its request asks for log-probabilities, else None), and the row's most likely
    tokens under that same distribution when its request asks for them (`top_logprobs`)."""
    scores = logits.float()
    for index, sampler in enumerate(samplers):
        sampler.penalize(scores[index])
    matchers = {index: sampler.matcher for index, sampler in enumerate(samplers) if sampler.matcher is not None}
    if matchers:
        apply_masks(scores, matchers)
    tokens = scores.argmax(dim=-1).tolist()
    log_probs: list[float | None] = [None] * len(samplers)
    tops: list[tuple[tuple[int, float], ...]] = [()] * len(samplers)
    sampled = [index for index, sampler in enumerate(samplers) if sampler.params.do_sample]
    if sampled:
        warped = _warp(scores[sampled], [samplers[index].params for index in sampled])
        for row, index in zip(warped.log_softmax(dim=-1), sampled):
            token = int(torch.multinomial(row.exp(), 1, generator=samplers[index].generator))
            tokens[index], log_probs[index] = token, float(row[token])
            tops[index] = _top(row, samplers[index].params.top_logprobs)
    asked = [
        index
        for index, sampler in enumerate(samplers)
        if (sampler.params.logprobs or sampler.params.top_logprobs) and log_probs[index] is None
    ]
    if asked:
        greedy = scores[asked].log_softmax(dim=-1)
        for row, index in zip(greedy, asked):
            log_probs[index] = float(row[tokens[index]])
            tops[index] = _top(row, samplers[index].params.top_logprobs)
    for sampler, token in zip(samplers, tokens):
        sampler.record(token)
    return tokens, log_probs, tops


def _top(log_probs: torch.Tensor, count: int) -> tuple[tuple[int, float], ...]:
    """The `count` most likely tokens of a row of log-probabilities, most likely first (impossible ones left out)."""
    if not count:
        return ()
    values, ids = torch.topk(log_probs, count)
    return tuple((int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v != -float("inf"))


def _warp(scores: torch.Tensor, params: list[GenerationParams]) -> torch.Tensor:
    """Temperature, then top-k, then top-p, then min-p, each row with its own values (as generate's warpers compute them); a
    neutral setting leaves its rows alone, as generate then builds no warper."""
    scores = scores / scores.new_tensor([p.temperature for p in params]).unsqueeze(-1)
    vocab = scores.size(-1)
    limited = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
    if limited:
        rows = scores[limited]
        k = torch.tensor([params[i].top_k for i in limited], device=scores.device).unsqueeze(-1)
        kth = torch.topk(rows, int(k.max()), dim=-1).values.gather(-1, k - 1)
        scores[limited] = rows.masked_fill(rows < kth, -float("inf"))
    nucleus = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if nucleus:
        rows = scores[nucleus]
        top_p = rows.new_tensor([params[i].top_p for i in nucleus]).unsqueeze(-1)
        ascending, order = torch.sort(rows, descending=False, dim=-1)
        remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[:, -1] = False  # the most likely token always stays
        scores[nucleus] = rows.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    floor = [i for i, p in enumerate(params) if p.min_p > 0]
    if floor:
        rows = scores[floor]
        probs = rows.softmax(dim=-1)
        min_p = probs.new_tensor([params[i].min_p for i in floor]).unsqueeze(-1)
        scores[floor] = rows.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, -float("inf"))
    return scores
