"""`lmi bench --compare --workload chat`: multi-turn conversations that share one long system prompt, replayed against
the stack with its prefix cache on and with it off (and vLLM's OpenAI server, its prefix caching on, where
`--vllm-python` names a venv with vLLM), side by side in one run.

Every conversation opens with the same system prompt of `--system-tokens` tokens, then `--turns` user turns. The
assistant's turns are scripted (the same text for every system, as a recorded chat replays), so every system answers the
same prompts and each turn's prompt extends the one before. `c` clients each replay their share of the conversations,
one turn after another, over `/v1/chat/completions` (streamed, greedy). Reported per system and concurrency: TTFT
p50 / p95 by turn and tokens/s; the printed ratio is the TTFT p50 of turns 2 and later with the cache on over off,
repeat by repeat (systems alternate within a repeat).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..djl.dialect import DjlVersion
from .compare import CACHE_STACKS, Plan, lmi_stack, vllm_missing, vllm_server
from .prompts import make_prompts
from .settings import Chats, Load
from .stats import RequestRecord, percentile, summarize
from .targets import openai_target

REPLY = "Thank you for asking. Here is a short answer to that, in a few plain words, as you asked. "
Conversation = list[str]  # the user's turns


@dataclass
class Replay:
    """The requests of one system at one concurrency, by turn (turn 1 first)."""

    system: str
    concurrency: int
    repeat: int
    by_turn: list[list[RequestRecord]]

    def ttft_ms(self, q: float, turns: slice = slice(None)) -> float:
        ttfts = [r.ttft for records in self.by_turn[turns] for r in records if r.ttft is not None]
        return 1000 * percentile(ttfts, q)

    def summary(self) -> dict[str, Any]:
        overall = summarize(self.system, self.concurrency, [r for records in self.by_turn for r in records])
        return {
            "system": self.system,
            "concurrency": self.concurrency,
            "repeat": self.repeat,
            "tok_s": overall.tok_s,
            "errors": overall.errors,
            "ttft_p50_ms_by_turn": [self.ttft_ms(50, slice(t, t + 1)) for t in range(len(self.by_turn))],
            "ttft_p95_ms_by_turn": [self.ttft_ms(95, slice(t, t + 1)) for t in range(len(self.by_turn))],
            "ttft_p50_ms_later_turns": self.ttft_ms(50, slice(1, None)),
        }


def system_prompt(tokens: int, tokenizer: Any) -> str:
    """A system prompt of `tokens` tokens (of this tokenizer), the same for every conversation."""
    return "You are the assistant of a lighthouse museum. " + make_prompts(1, tokens, tokenizer)[0]


def conversations(count: int, turns: int) -> list[Conversation]:
    """`count` conversations of `turns` user turns each, every one different from the others."""
    return [
        [f"Visitor {index}, question {turn + 1}: what is there to see?" for turn in range(turns)]
        for index in range(count)
    ]


def messages(system: str, conversation: Conversation, turn: int) -> list[dict[str, str]]:
    """The messages a chat client sends at `turn` (0-based): the system prompt, the earlier turns with their scripted
    answers, and this turn's question."""
    sent = [{"role": "system", "content": system}]
    for earlier in conversation[:turn]:
        sent += [{"role": "user", "content": earlier}, {"role": "assistant", "content": REPLY}]
    return [*sent, {"role": "user", "content": conversation[turn]}]


def chat_target(url: str, model: str, max_new_tokens: int) -> Callable[[list[dict[str, str]]], RequestRecord]:
    """One streamed, greedy chat completion of these messages at an OpenAI-compatible server."""
    target = openai_target(url, model, api="chat")

    def send(sent: list[dict[str, str]]) -> RequestRecord:
        return target.post(
            {"model": model, "messages": sent, "max_tokens": max_new_tokens, "temperature": 0, "stream": True}
        )

    return send


def replay(
    send: Callable[[list[dict[str, str]]], RequestRecord],
    system: str,
    chats: Sequence[Conversation],
    concurrency: int,
) -> list[list[RequestRecord]]:
    """`concurrency` clients, each replaying its conversations turn by turn; the records by turn."""
    turns = len(chats[0])
    by_turn: list[list[RequestRecord]] = [[] for _ in range(turns)]

    def client(index: int) -> None:
        for conversation in chats[index::concurrency]:
            for turn in range(turns):
                by_turn[turn].append(send(messages(system, conversation, turn)))

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return by_turn


def run_chat_compare(workload: Chats, load: Load, plan: Plan, console: Console) -> list[Replay]:
    """Every system at every level, alternating within each repeat; each answers one unrecorded chat first."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(plan.model_dir), local_files_only=True)
    system = system_prompt(workload.system_tokens, tokenizer)
    chats = conversations(workload.conversations, workload.turns)
    replays = []
    with ExitStack() as stack:
        senders = {}
        for name, extra in CACHE_STACKS.items():
            console.print(f"starting {name} ...")
            endpoint = stack.enter_context(lmi_stack(plan, DjlVersion.NEWEST, "portable", extra))
            senders[name] = chat_target(endpoint.url, "model", load.max_new_tokens)
        missing = vllm_missing(plan.vllm_python)
        if missing is None:
            console.print("starting vllm ...")
            endpoint = stack.enter_context(vllm_server(plan))
            senders["vllm"] = chat_target(endpoint.url, "model", load.max_new_tokens)
        else:
            console.print(f"vllm: {missing}")
        for send in senders.values():
            send(messages("Warm up.", ["Hello?"], 0))
        for repeat in range(load.repeats):
            for concurrency in load.levels:
                for name, send in senders.items():
                    # a fresh system prompt per level: no level starts from the cache a level before it left
                    level_system = f"[{repeat}.{concurrency}] {system}"
                    result = Replay(name, concurrency, repeat, replay(send, level_system, chats, concurrency))
                    replays.append(result)
                    console.print(_one_line(result))
    return replays


def later_turn_ratios(
    replays: Sequence[Replay], top: str = "lmi-cache-on", bottom: str = "lmi-cache-off"
) -> list[dict[str, Any]]:
    """TTFT p50 of turns 2 and later, `top` over `bottom`, per concurrency: the ratio of the medians over repeats and
    the range of the per-repeat ratios."""
    rows = []
    for concurrency in sorted({r.concurrency for r in replays}):
        pairs = [
            (a.ttft_ms(50, slice(1, None)), b.ttft_ms(50, slice(1, None)))
            for a in replays
            for b in replays
            if (a.system, b.system) == (top, bottom)
            and a.concurrency == b.concurrency == concurrency
            and a.repeat == b.repeat
        ]
        if pairs:
            per_repeat = [x / y for x, y in pairs]
            rows.append(
                {
                    "top": top,
                    "bottom": bottom,
                    "concurrency": concurrency,
                    "ratio": percentile(per_repeat, 50),
                    "low": min(per_repeat),
                    "high": max(per_repeat),
                }
            )
    return rows


def markdown_report(meta: dict[str, Any], replays: Sequence[Replay], ratios: Sequence[dict[str, Any]]) -> str:
    turns = len(replays[0].by_turn) if replays else 0
    header = "| system | c | repeat | tok/s | " + " | ".join(f"turn {t + 1} p50 / p95" for t in range(turns)) + " |"
    lines = [
        f"# lmi bench --workload chat: {meta['model']}",
        "",
        f"`{meta['command']}`",
        "",
        meta["setup"],
        "",
        "TTFT in ms by turn (p50 / p95):",
        "",
        header,
        "|" + " --- |" * 2 + " ---: |" * (turns + 2),
    ]
    for replay_ in replays:
        s = replay_.summary()
        cells = [f"{p50:.0f} / {p95:.0f}" for p50, p95 in zip(s["ttft_p50_ms_by_turn"], s["ttft_p95_ms_by_turn"])]
        lines.append(
            f"| {s['system']} | {s['concurrency']} | {s['repeat'] + 1} | {s['tok_s']:.1f} | " + " | ".join(cells) + " |"
        )
    lines += ["", ratio_table(ratios), ""]
    return "\n".join(lines)


def ratio_table(ratios: Sequence[dict[str, Any]]) -> str:
    lines = ["| ratio (TTFT p50, turns 2+) | c | median over repeats | range |", "| --- | ---: | ---: | ---: |"]
    lines += [
        f"| {r['top']} / {r['bottom']} | {r['concurrency']} | {r['ratio']:.2f}x | {r['low']:.2f}–{r['high']:.2f} |"
        for r in ratios
    ]
    return "\n".join(lines)


def write_chat_results(
    out: Path, meta: dict[str, Any], replays: Sequence[Replay], ratios: Sequence[dict[str, Any]]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "replays": [r.summary() for r in replays], "ratios": list(ratios)}
    (out / "chat.json").write_text(json.dumps(document, indent=1))
    (out / "chat.md").write_text(markdown_report(meta, replays, ratios))


def _one_line(r: Replay) -> str:
    s = r.summary()
    return (
        f"{r.system:>14} c={r.concurrency:<3} repeat {r.repeat + 1}  {s['tok_s']:7.1f} tok/s  TTFT p50 turn 1 "
        f"{s['ttft_p50_ms_by_turn'][0]:7.0f} ms, turns 2+ {s['ttft_p50_ms_later_turns']:7.0f} ms  errors {s['errors']}"
    )
