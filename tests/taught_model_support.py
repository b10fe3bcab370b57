"""A copy of the tiny model taught fixed replies to fixed chat requests, so that an end-to-end test sees a real model
write what it needs (a tool call in the model's own syntax under tool_choice "auto", or plain text).

Each lesson is trained on exactly the token ids the handler feeds the engine: the chat body is validated by the
handler's own `chat_request` and rendered through the chat template by the engine's tokenizer adapter, so greedy
decoding of that prompt writes the reply and then eos. Training stops once every reply token is the argmax by a wide
margin, so batching noise cannot flip a near-tie.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lmikit.embedded_model import ensure_tiny_model
from lmistream.chat import chat_request
from lmistream.engines.loading import HFTokenizer
from transformers import AutoTokenizer, LlamaForCausalLM

#: (a chat completions body: messages and tools, the answer it must get)
Lesson = tuple[Mapping[str, Any], str]
MAX_STEPS = 300
LEARNING_RATE = 1e-2
#: a reply token's logit over the runner-up's once training is done
MARGIN = 5.0


def teach(lessons: Sequence[Lesson], chat_template: str, tool_parser: str, out: Path, seed: int = 0) -> Path:
    """The tiny model, copied to `out` and trained until greedy decoding answers each lesson's body with its reply
    (served with option.chat_template=`chat_template` and option.tool_call_parser=`tool_parser`)."""
    tiny = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = chat_template
    rows = [_lesson_ids(HFTokenizer(tokenizer, frozenset()), body, reply, tool_parser) for body, reply in lessons]
    shutil.copytree(tiny, out)
    model = LlamaForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _train(model, rows, tokenizer.eos_token_id)
    model.eval().save_pretrained(out)
    return out


def _lesson_ids(tokenizer: HFTokenizer, body: Mapping[str, Any], reply: str, parser: str) -> tuple[list[int], int]:
    """The prompt's and reply's ids (as the handler encodes a chat prompt: no special tokens added), and where the
    reply starts."""
    request = chat_request({"model": "taught", **body}, 16, tokenizer.renders_tools, parser)
    prompt = tokenizer.encode(tokenizer.render_chat(request.messages, request.tools), add_special_tokens=False)
    return prompt + tokenizer.encode(reply, add_special_tokens=False), len(prompt)


def _train(model: LlamaForCausalLM, rows: list[tuple[list[int], int]], eos: int) -> None:
    """Full-batch next-token training on the replies (and their closing eos) alone, until each is decisive; the
    vocabulary's logits are computed only where a reply token is predicted."""
    width = max(len(ids) for ids, _ in rows) + 1
    inputs = torch.full((len(rows), width), eos, dtype=torch.long)
    scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)  # the positions that predict a reply token
    for row, (ids, start) in enumerate(rows):
        inputs[row, : len(ids) + 1] = torch.tensor([*ids, eos])
        scored[row, start - 1 : len(ids)] = True
    mask = (torch.arange(width) < torch.tensor([len(ids) + 1 for ids, _ in rows])[:, None]).long()
    wanted = inputs[:, 1:][scored]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=True)
    model.train()
    for _ in range(MAX_STEPS):
        hidden = model.model(input_ids=inputs, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[:, :-1][scored])
        if _decisive(logits.detach(), wanted):
            return
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, wanted).backward()
        optimizer.step()
    raise AssertionError(f"the taught model did not learn its replies in {MAX_STEPS} steps")


def _decisive(logits: torch.Tensor, wanted: torch.Tensor) -> bool:
    """Whether every wanted token wins its row of logits by MARGIN."""
    chosen = logits.gather(1, wanted[:, None])[:, 0]
    runner_up = logits.scatter(1, wanted[:, None], float("-inf")).max(dim=1).values
    return bool((chosen - runner_up > MARGIN).all())
