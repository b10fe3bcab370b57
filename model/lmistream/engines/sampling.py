"""Per-request token selection for the portable engine: each row of a step's logits gets its own request's settings.

The order and the arithmetic are transformers' `generate`: repetition penalty over the prompt and the tokens so far
(`RepetitionPenaltyLogitsProcessor`), then for sampled rows temperature, top-k and top-p (`TemperatureLogitsWarper`,
`TopKLogitsWarper`, `TopPLogitsWarper`), then argmax for greedy rows or one draw per sampled row from the request's own
`torch.Generator`, seeded at admission. A private generator makes a seeded request reproducible whatever else shares
its batch, and gives every tensor-parallel rank the same draw. Written here because transformers' processors take one
setting for the whole batch.
"""

from __future__ import annotations

import torch

from ..params import GenerationParams


class RequestSampler:
    """One request's sampling state: its settings, its generator and the tokens its repetition penalty looks at."""

    def __init__(self, params: GenerationParams, seed: int, prompt_ids: list[int], device: torch.device) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.tensor(prompt_ids, dtype=torch.long, device=device)

    def penalize(self, row: torch.Tensor) -> None:
        """Repetition penalty, in place: scores of seen tokens below 0 are multiplied, the others divided."""
        if self._seen is None:
            return
        penalty = self.params.repetition_penalty
        scores = row.gather(0, self._seen)
        row.scatter_(0, self._seen, torch.where(scores < 0, scores * penalty, scores / penalty))

    def record(self, token_id: int) -> None:
        if self._seen is not None:
            self._seen = torch.cat([self._seen, self._seen.new_tensor([token_id])])


def select_tokens(logits: torch.Tensor, samplers: list[RequestSampler]) -> tuple[list[int], list[float | None]]:
    """The next token of every row, and its log-probability under the sampling distribution (for a greedy row, under
    the model's own distribution when its request asks for log-probabilities, else None)."""
    scores = logits.float()
    for index, sampler in enumerate(samplers):
        sampler.penalize(scores[index])
    tokens = scores.argmax(dim=-1).tolist()
    log_probs: list[float | None] = [None] * len(samplers)
    sampled = [index for index, sampler in enumerate(samplers) if sampler.params.do_sample]
    if sampled:
        warped = _warp(scores[sampled], [samplers[index].params for index in sampled])
        for row, index in zip(warped.log_softmax(dim=-1), sampled):
            token = int(torch.multinomial(row.exp(), 1, generator=samplers[index].generator))
            tokens[index], log_probs[index] = token, float(row[token])
    asked = [index for index, sampler in enumerate(samplers) if sampler.params.logprobs and log_probs[index] is None]
    if asked:
        greedy = scores[asked].log_softmax(dim=-1)
        for row, index in zip(greedy, asked):
            log_probs[index] = float(row[tokens[index]])
    for sampler, token in zip(samplers, tokens):
        sampler.record(token)
    return tokens, log_probs


def _warp(scores: torch.Tensor, params: list[GenerationParams]) -> torch.Tensor:
    """Temperature, then top-k, then top-p, each row with its own values (as generate's warpers compute them); a
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
    return scores
