"""`python -m lmikit.benchmarks.engine_bench`: each engine against the same stack's static-batch `generate`.

For every concurrency `c` (default 8 and 32), `c` different prompts are generated greedily, `--max-new-tokens` each:

* `generate`: transformers' `model.generate` on one left-padded static batch of the `c` prompts, with
  `min_new_tokens = max_new_tokens` (the hardware reference: no scheduler, no joins, no handler);
* each engine this stack can run (`portable` everywhere, `continuous` where transformers has continuous batching),
  driven directly: the `c` requests are submitted at once and every update is counted as it reaches the callback.

The paths run interleaved, `--repeats` times, so that machine drift touches them alike; the best tokens/s of each is
kept and the ratios to `generate` (and portable / continuous) are printed with their range over the repeats. The
default model is random, SmolLM2-135M-shaped with multi-head attention so that every stack loads it (LMI 0.23's
transformers 4.30 lacks grouped-query attention); random weights almost never emit eos, so every request runs to its
length. `--device cuda --dtype fp16` runs every path on the GPU in that dtype (the GPU tier does). Runs on Python 3.9
too (the LMI 0.23 tier): only torch, transformers and lmistream are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
MODEL_ROOT = REPO / "model"
#: SmolLM2-135M's shape, but with as many KV heads as query heads
BENCH_SHAPE: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 9,
    "max_position_embeddings": 2048,
}
Samples = dict[tuple[str, int], list[float]]  # (path, concurrency) -> tok/s of each kept run
SUBJECTS = (
    "a clockmaker",
    "the river",
    "an old map",
    "a quiet village",
    "the lighthouse keeper",
    "a red kite",
    "the winter market",
    "a lost letter",
)
REQUEST_TIMEOUT_S = 900.0


def prompts(count: int, context_words: int = 0) -> list[str]:
    """`count` different prompts of a few different lengths, each after `context_words` words of notes (a long
    context makes the decode steps' attention and KV appends count)."""
    return [
        _notes(i, context_words)
        + f"Story {i}: once upon a time {SUBJECTS[i % len(SUBJECTS)]}"
        + " far away" * (i % 4)
        + " and then"
        for i in range(count)
    ]


def _notes(story: int, words: int) -> str:
    subjects = [subject.split()[-1] for subject in SUBJECTS]
    return "".join(f"{subjects[(story + j) % len(subjects)]} " for j in range(words))


def build_bench_model(out: Path) -> Path:
    """A random SmolLM2-shaped multi-head Llama with the tiny test model's tokenizer, saved by this stack."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmikit.embedded_model import ensure_tiny_model

    tiny = ensure_tiny_model()
    settings = json.loads((tiny / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=settings["vocab_size"],
        bos_token_id=settings["bos_token_id"],
        eos_token_id=settings["eos_token_id"],
        pad_token_id=settings.get("pad_token_id"),
        tie_word_embeddings=True,
        **BENCH_SHAPE,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / name, out / name)
    return out


def measure_generate(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int) -> float:
    """Tokens/s of one static batch of `texts`, left-padded."""
    import torch

    rows = [tokenizer.encode(text) for text in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=pad,
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    return len(texts) * max_new_tokens / (time.perf_counter() - start)


class EngineDriver:
    """A started engine whose updates are counted per run; `measure` submits a run's requests at once."""

    def __init__(self, name: str, model_dir: Path, batch: int, dtype: str = "fp32", device: str = "cpu") -> None:
        from lmistream.config import HandlerConfig
        from lmistream.engines import FACTORIES

        props = {
            "model_id": str(model_dir),
            "dtype": dtype,
            "device_id": "0" if device == "cuda" else "-1",
            "max_rolling_batch_size": str(batch),
            "generation_engine": name,
        }
        self.engine = FACTORIES[name](HandlerConfig.from_properties(props))
        self._cond = threading.Condition()
        self._tokens = 0
        self._finished = 0
        self.engine.start(self._on_update)

    def _on_update(self, update: Any) -> None:
        with self._cond:
            self._tokens += len(update.token_ids)
            self._finished += update.finished
            self._cond.notify_all()

    def measure(self, texts: list[str], max_new_tokens: int, run: int, params: Sequence[Any] = ()) -> float:
        """tok/s of the requests of `texts`, greedy, `max_new_tokens` each, or with `params` (one per text)."""
        from lmistream.params import GenerationParams

        rows = list(params) or [GenerationParams(max_new_tokens=max_new_tokens)] * len(texts)
        encoded = [self.engine.tokenizer.encode(text) for text in texts]
        with self._cond:
            self._tokens = self._finished = 0
        start = time.perf_counter()
        for index, (ids, row) in enumerate(zip(encoded, rows)):
            self.engine.submit(f"bench-{run}-{index}", ids, row)
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished == len(texts), timeout=REQUEST_TIMEOUT_S):
                raise TimeoutError("the engine did not finish the requests in time")
            return self._tokens / (time.perf_counter() - start)

    def stop(self) -> None:
        self.engine.stop()


def available_engines() -> list[str]:
    from lmistream.engines import available

    return sorted(available(), reverse=True)  # portable first


def run_benchmark(
    model_dir: Path,
    concurrencies: Sequence[int],
    max_new_tokens: int,
    threads: int,
    repeats: int,
    dtype: str = "fp32",
    device: str = "cpu",
    context_words: int = 0,
) -> dict[str, Any]:
    """tok/s of every path at every concurrency (best of the repeats), and the ratios with their ranges; every path
    runs on `device` ("cpu" or "cuda", GPU 0) in `dtype` (fp32, fp16, bf16)."""
    import torch
    import transformers
    from lmistream.engines.loading import DTYPES
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    engines = {name: EngineDriver(name, model_dir, max(concurrencies), dtype, device) for name in available_engines()}
    samples: Samples = {}
    try:
        for run in range(repeats + 1):  # run 0 warms every path up and is not kept
            for c in concurrencies:
                texts = prompts(c, context_words)
                measures: dict[str, Callable[[], float]] = {
                    "generate": partial(measure_generate, model, tokenizer, texts, max_new_tokens)
                }
                for name, driver in engines.items():
                    measures[name] = partial(driver.measure, texts, max_new_tokens, run)
                for path, measure in measures.items():
                    tok_s = measure()
                    if run:
                        samples.setdefault((path, c), []).append(tok_s)
    finally:
        for driver in engines.values():
            driver.stop()
    return report(
        samples,
        {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": threads,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "dtype": dtype,
            "max_new_tokens": max_new_tokens,
            "context_words": context_words,
            "repeats": repeats,
            "model": str(model_dir),
        },
    )


def report(samples: Samples, stack: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {"path": path, "concurrency": c, "tok_s": max(values), "runs": values}
        for (path, c), values in sorted(samples.items(), key=lambda item: (item[0][1], item[0][0]))
    ]
    ratios = []
    for c in sorted({c for _, c in samples}):
        for top, bottom in (("portable", "generate"), ("continuous", "generate"), ("portable", "continuous")):
            if (top, c) in samples and (bottom, c) in samples:
                per_run = [a / b for a, b in zip(samples[(top, c)], samples[(bottom, c)])]
                ratios.append(
                    {
                        "concurrency": c,
                        "ratio": f"{top}/{bottom}",
                        "best": max(samples[(top, c)]) / max(samples[(bottom, c)]),
                        "low": min(per_run),
                        "high": max(per_run),
                    }
                )
    return {"stack": stack, "rows": rows, "ratios": ratios}


def format_report(result: dict[str, Any]) -> str:
    stack = result["stack"]
    lines = [
        (
            f"Python {stack['python']}, torch {stack['torch']}, transformers {stack['transformers']}, "
            f"{stack['device']} in {stack['dtype']}, {stack['threads']} threads, {stack['max_new_tokens']} new tokens, "
            f"best of {stack['repeats']}"
        ),
        "",
        f"{'path':11} {'c':>3} {'tok/s':>8}",
    ]
    lines += [f"{row['path']:11} {row['concurrency']:>3} {row['tok_s']:>8.1f}" for row in result["rows"]]
    lines += ["", "ratios (best / best, and the range of run-by-run ratios):"]
    lines += [
        f"  c={r['concurrency']:<3} {r['ratio']:22} {r['best']:.2f}  [{r['low']:.2f}-{r['high']:.2f}]"
        for r in result["ratios"]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: a random SmolLM2-shaped model)")
    parser.add_argument("--concurrency", default="8,32", help="comma-separated (default 8,32)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--context-words", type=int, default=0, help="words of notes before every prompt (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="measured rounds after a warm-up round")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every path runs (cuda: GPU 0)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here (the README's table reads it)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(MODEL_ROOT) not in sys.path:
        sys.path.insert(0, str(MODEL_ROOT))
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        model_dir = args.model or build_bench_model(Path(tmp))
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        result = run_benchmark(
            model_dir,
            concurrencies,
            args.max_new_tokens,
            args.threads,
            args.repeats,
            args.dtype,
            args.device,
            args.context_words,
        )
    print(format_report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
