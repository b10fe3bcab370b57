"""`lmi bench --compare --workload long-prompt` and `--workload no-prefix`: what chunked prefill buys running streams,
and what the prefix cache costs where it cannot help.

long-prompt: `--streams` streams decode (greedy, `ignore_eos`) until one prompt of `--long-tokens` tokens arrives
among them; their inter-token gaps before it arrives and while it is prefilled (from its send to its first token) are
compared, per system: the stack on each of `--engines` without the chunk option (the portable engine prefills
every prompt whole) and with `option.max_rolling_batch_prefill_tokens` at each of `--prefill-chunks`. A gap counts as
"during" when it overlaps the prefill, so a stream stalled through the whole prefill shows as one gap that long.
Printed: ITL p95 during over before.

no-prefix: closed-loop levels of prompts that share no cache block with any other request of the run (a salt ahead of
each prompt), the stack with its prefix cache on and off, side by side; printed: the tokens/s ratio, repeat by repeat.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..djl.dialect import DjlVersion
from .compare import CACHE_STACKS, Plan, lmi_stack
from .prompts import make_prompts
from .settings import Load, LongPrompt
from .stats import LevelResult, RequestRecord, percentile, ratio, summarize
from .targets import ClosedLoop, HttpTarget, container_target

READY_TIMEOUT_S = 600.0
#: the long prompt's response starts with its first token, after its whole prefill, which in small chunks on a CPU
#: takes longer than DJL's default chunked_read_timeout (120 s, a 500 then)
STACK_ENV = {"SERVING_CHUNKED_READ_TIMEOUT": str(int(READY_TIMEOUT_S))}
STREAM_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class PrefillWindow:
    """One system's running streams before the long prompt and during its prefill (gaps in ms)."""

    system: str
    repeat: int
    prefill_ms: float
    before_gaps: int
    during_gaps: int
    itl_p50_before_ms: float
    itl_p95_before_ms: float
    itl_p50_during_ms: float
    itl_p95_during_ms: float

    @property
    def p95_ratio(self) -> float:
        return self.itl_p95_during_ms / self.itl_p95_before_ms


def window(
    system: str, repeat: int, streams: Sequence[RequestRecord], ready: float, long: RequestRecord
) -> PrefillWindow:
    """Split the streams' gaps at the long prompt: "before" lie wholly between `ready` and its send, "during"
    overlap the span from its send to its first token."""
    start = long.sent
    end = long.token_times[0] if long.token_times else start
    pairs = [pair for r in streams for pair in zip(r.token_times, r.token_times[1:])]
    before = [1000 * (b - a) for a, b in pairs if a >= ready and b <= start]
    during = [1000 * (b - a) for a, b in pairs if a < end and b > start]
    return PrefillWindow(
        system,
        repeat,
        1000 * (end - start),
        len(before),
        len(during),
        percentile(before, 50),
        percentile(before, 95),
        percentile(during, 50),
        percentile(during, 95),
    )


def decoding_body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """A greedy stream that decodes its whole budget (until the client hangs up)."""
    parameters = {"max_new_tokens": max_new_tokens, "do_sample": False, "ignore_eos": True}
    return {"inputs": prompt, "parameters": parameters, "stream": True}


def long_prompt_round(
    target: HttpTarget, prompts: Sequence[str], long_prompt: str, before_s: float, budget: int
) -> tuple[list[RequestRecord], float, RequestRecord]:
    """Start a stream per prompt (`budget` new tokens each); once each has two tokens, wait `before_s`, send
    `long_prompt` (one new token), then hang up on the streams. Returns (the streams' records, when they were all
    running, the long prompt's record)."""
    done = threading.Event()
    live: list[RequestRecord | None] = [None] * len(prompts)
    results: list[RequestRecord] = []

    def stream(index: int) -> None:
        def until(so_far: RequestRecord) -> bool:
            live[index] = so_far
            return done.is_set()

        results.append(target.post(decoding_body(prompts[index], budget), until))

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    _wait(lambda: all(r is not None and len(r.token_times) >= 2 for r in live) or len(results) == len(prompts))
    ready = time.perf_counter()
    time.sleep(before_s)
    long = target.post(decoding_body(long_prompt, 1))
    time.sleep(max(0.5, before_s / 4))  # the gap that ends the stall lands after the long prompt's first token
    done.set()
    for thread in threads:
        thread.join(READY_TIMEOUT_S)
    return results, ready, long


def _tokenizer(plan: Plan) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(plan.model_dir), local_files_only=True)


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the running streams did not start within the time limit")
        time.sleep(0.05)


def long_prompt_systems(engines: Sequence[str], chunk_sizes: Sequence[int]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Per engine, the stack without the chunk option (the portable engine then prefills whole, the continuous one
    on CPU in its default batch of tokens) and with each chunk size: name -> (engine, lmi serve options)."""
    systems: dict[str, tuple[str, tuple[str, ...]]] = {}
    for engine in engines:
        systems[f"lmi-{engine}"] = (engine, ())
        for size in chunk_sizes:
            systems[f"lmi-{engine}-chunk-{size}"] = (engine, (f"max_rolling_batch_prefill_tokens={size}",))
    return systems


def run_long_prompt(plan: Plan, workload: LongPrompt, repeats: int, console: Console) -> list[PrefillWindow]:
    """Every system in every repeat (a fresh long prompt each time, so the prefix cache never holds it)."""
    tokenizer = _tokenizer(plan)
    prompts = make_prompts(workload.streams, STREAM_PROMPT_TOKENS, tokenizer)
    context = json.loads((plan.model_dir / "config.json").read_text())["max_position_embeddings"]
    budget = context - 2 * STREAM_PROMPT_TOKENS  # the streams decode until hung up on, within the model's context
    windows = []
    for name, (engine, extra) in long_prompt_systems(plan.engines, workload.chunk_sizes).items():
        console.print(f"starting {name} ...")
        with lmi_stack(plan, DjlVersion.NEWEST, engine, extra, STACK_ENV) as endpoint:
            target = HttpTarget(endpoint.url, "/invocations", decoding_body)
            target.post(decoding_body("Warm up.", 2))
            for repeat in range(repeats):
                long_prompt = f"[{name} {repeat}] " + make_prompts(1, workload.long_tokens, tokenizer)[0]
                streams, ready, long = long_prompt_round(target, prompts, long_prompt, workload.before_s, budget)
                if long.error or any(r.error and not r.token_times for r in streams):
                    raise RuntimeError(f"{name}: {long.error or [r.error for r in streams]}")
                windows.append(window(name, repeat, streams, ready, long))
                console.print(_window_line(windows[-1]))
    return windows


def run_no_prefix(plan: Plan, load: Load, console: Console) -> list[LevelResult]:
    """The stack with its prefix cache on and off at every level, on prompts no other request shares a block with."""
    tokenizer = _tokenizer(plan)
    results = []
    with _cache_stacks(plan, console) as loops:
        for repeat in range(load.repeats):
            for concurrency in load.levels:
                salt = f"[{repeat}.{concurrency}]"
                count = concurrency * load.rounds
                prompts = [f"{salt} {p}" for p in make_prompts(count, load.prompt_tokens, tokenizer)]
                for name, loop in loops.items():
                    records = loop.run_level(prompts, concurrency, load.rounds, load.max_new_tokens, lambda _: None)
                    results.append(summarize(name, concurrency, records, repeat))
                    console.print(f"{name:>14} c={concurrency:<3} repeat {repeat + 1}  {results[-1].tok_s:7.1f} tok/s")
    return results


@contextmanager
def _cache_stacks(plan: Plan, console: Console) -> Iterator[dict[str, ClosedLoop]]:
    """Both cache stacks started (and stopped) together, each warmed by one request."""
    with ExitStack() as stack:
        loops = {}
        for name, extra in CACHE_STACKS.items():
            console.print(f"starting {name} ...")
            target = container_target(stack.enter_context(lmi_stack(plan, DjlVersion.NEWEST, "portable", extra)).url)
            target.request("Warm up.", 2)
            loops[name] = ClosedLoop(target)
        yield loops


def cache_ratios(results: Sequence[LevelResult]) -> list[Any]:
    """Tokens/s with the cache on over off, per level, repeat by repeat."""
    found = (ratio(results, "lmi-cache-on", "lmi-cache-off", c) for c in sorted({r.concurrency for r in results}))
    return [r for r in found if r is not None]


def write_long_prompt_results(out: Path, meta: dict[str, Any], windows: Sequence[PrefillWindow]) -> str:
    """long_prompt.json and long_prompt.md in `out`; returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(w), "p95_ratio": w.p95_ratio} for w in windows]
    (out / "long_prompt.json").write_text(json.dumps({"meta": meta, "windows": rows}, indent=1))
    table = long_prompt_table(windows)
    (out / "long_prompt.md").write_text(f"# lmi bench --workload long-prompt\n\n`{meta['command']}`\n\n{table}\n")
    return table


def long_prompt_table(windows: Sequence[PrefillWindow]) -> str:
    lines = [
        "| system | repeat | prefill (ms) | ITL p50 / p95 before (ms) | ITL p50 / p95 during (ms) | p95 during / before |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {w.system} | {w.repeat + 1} | {w.prefill_ms:.0f} | {w.itl_p50_before_ms:.0f} / {w.itl_p95_before_ms:.0f} "
        f"| {w.itl_p50_during_ms:.0f} / {w.itl_p95_during_ms:.0f} | {w.p95_ratio:.2f}x |"
        for w in windows
    ]
    return "\n".join(lines)


def _window_line(w: PrefillWindow) -> str:
    return (
        f"{w.system:>26} repeat {w.repeat + 1}  prefill {w.prefill_ms:7.0f} ms  ITL p95 before {w.itl_p95_before_ms:6.0f}"
        f" ms, during {w.itl_p95_during_ms:7.0f} ms ({w.p95_ratio:.2f}x, {w.during_gaps} gaps)"
    )
