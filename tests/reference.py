"""transformers' own `generate`, the reference every engine's tokens are compared with (any supported stack): greedy,
seeded sampling, and vLLM's frequency / presence penalties as a logits processor (transformers has none)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

#: a reference token must beat the runner-up by this much (in logits) for an exact comparison to be meaningful
MIN_GAP = 1e-3
#: `torch_dtype` before transformers 4.56, `dtype` after
DTYPE_KEYWORD = "dtype" if tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"


class OutputPenalties(LogitsProcessor):
    """vLLM's (and OpenAI's) definition: minus `frequency` times each generated token's count, minus `presence` once
    it occurred; the prompt's tokens do not count."""

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.zeros_like(scores)
        generated = input_ids[:, self.prompt_length :]
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def penalties(prompt_length: int, frequency: float, presence: float) -> dict[str, LogitsProcessorList]:
    """`generate` arguments applying vLLM's frequency / presence penalties."""
    return {"logits_processor": LogitsProcessorList([OutputPenalties(prompt_length, frequency, presence)])}


@dataclass(frozen=True)
class Reference:
    """transformers' greedy continuation of one prompt."""

    token_ids: tuple[int, ...]  # the new tokens, an eos included
    text: str  # decoded with special tokens skipped
    finish_reason: str  # "eos_token" when it ended on an eos token, else "length"


class ReferenceModel:
    """One loaded model answering greedy `generate` for (prompt, max_new_tokens), each computed once."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **{DTYPE_KEYWORD: torch.float32}).eval()
        configured = self.model.generation_config.eos_token_id
        eos = configured if isinstance(configured, list) else [configured]
        self.eos = frozenset(i for i in [*eos, self.tokenizer.eos_token_id] if i is not None)
        self._cache: dict[tuple, Reference] = {}

    def __call__(self, prompt: str, max_new_tokens: int, check_gaps: bool = True, **settings: Any) -> Reference:
        """Greedy continuation; `settings` are more `generate` arguments (repetition_penalty, a logits_processor)."""
        key = (
            prompt,
            max_new_tokens,
            tuple(sorted((k, v if isinstance(v, Hashable) else id(v)) for k, v in settings.items())),
        )
        if key not in self._cache:
            self._cache[key] = self._generate(prompt, max_new_tokens, check_gaps, **settings)
        return self._cache[key]

    def top_log_probs(self, prompt: str, answer: tuple[int, ...], count: int) -> list[list[tuple[int, float]]]:
        """At each position of `answer` after `prompt`, the model's `count` most likely tokens and their
        log-probabilities (one forward pass over prompt and answer)."""
        prompt_ids = self.tokenizer.encode(prompt)
        with torch.inference_mode():
            logits = self.model(torch.tensor([prompt_ids + list(answer)])).logits[0].float()
        positions = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(answer)].log_softmax(dim=-1)
        tops = positions.topk(count, dim=-1)
        return [list(zip(ids.tolist(), values.tolist())) for values, ids in zip(tops.values, tops.indices)]

    def prompt_log_probs(self, prompt: str) -> list[tuple[int, float | None]]:
        """Each prompt token and its log-probability given the tokens before it (the first has none), from one
        forward pass over the prompt."""
        ids = self.tokenizer.encode(prompt)
        with torch.inference_mode():
            log_probs = self.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(dim=-1)
        picked = log_probs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).tolist()
        return list(zip(ids, [None, *picked]))

    def sample(self, prompt: str, max_new_tokens: int, seed: int, **settings: float) -> tuple[int, ...]:
        """Sampled continuation from the global generator seeded with `seed` (top-k and top-p off unless given)."""
        prompt_ids = self.tokenizer.encode(prompt)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                do_sample=True,
                max_new_tokens=max_new_tokens,
                **{"top_k": 0, "top_p": 1.0, **settings},
            )
        return tuple(out[0, len(prompt_ids) :].tolist())

    def _generate(self, prompt: str, max_new_tokens: int, check_gaps: bool, **settings: Any) -> Reference:
        prompt_ids = self.tokenizer.encode(prompt)  # exactly what the handler's tokenizer adapter does
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                output_scores=True,
                **settings,
                return_dict_in_generate=True,
            )
        tokens = out.sequences[0, len(prompt_ids) :].tolist()
        if check_gaps:
            for index, scores in enumerate(out.scores):
                top2 = scores[0].topk(2).values
                gap = (top2[0] - top2[1]).item()
                assert gap >= MIN_GAP, f"{prompt!r}: near-tie at token {index} (gap {gap:g}); choose another prompt"
        ended_on_eos = bool(tokens) and tokens[-1] in self.eos
        return Reference(
            token_ids=tuple(tokens),
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason="eos_token" if ended_on_eos else "length",
        )
