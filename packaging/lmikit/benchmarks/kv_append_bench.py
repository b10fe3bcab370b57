"""`python -m lmikit.benchmarks.kv_append_bench`: the portable engine with its KV appended in place (`kv_headroom`)
against the same engine on transformers' own `DynamicLayer`, which concatenates a layer's whole cache every token.

`--rows` prompts of `--context-words` words of notes (`engine_bench.prompts`: 1,000 words are about 1,150 SmolLM2
tokens) are submitted at once, `--max-new-tokens` each, through `engine_bench.EngineDriver`. Each variant runs in a
process of its own, the two alternating `--repeats` times so that machine drift touches them alike; the `dynamic`
variant makes `kv_headroom.adopt` the identity, so the model keeps the cache layers it made. Prints tokens/s (the
prompts' prefill included) of each run and the ratio per repeat. For transformers with cache layers only (the LMI
0.23 stack's 4.30 keeps tuples, which the engine leaves to the model). Default model: the embedded SmolLM2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import engine_bench

VARIANTS = ("dynamic", "headroom")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", type=Path, help="model directory (default: the embedded SmolLM2)")
parser.add_argument("--rows", type=int, default=16, help="requests submitted at once (default 16)")
parser.add_argument("--context-words", type=int, default=1000, help="words of notes before every prompt")
parser.add_argument("--max-new-tokens", type=int, default=128)
parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process and print its tok/s")


def run_variant(args: argparse.Namespace) -> float:
    import torch

    if str(engine_bench.MODEL_ROOT) not in sys.path:
        sys.path.insert(0, str(engine_bench.MODEL_ROOT))
    from lmistream.engines import kv_headroom

    if args.variant == "dynamic":
        kv_headroom.adopt = lambda cache: cache
    torch.set_num_threads(args.threads)
    driver = engine_bench.EngineDriver("portable", args.model, args.rows)
    try:
        return driver.measure(engine_bench.prompts(args.rows, args.context_words), args.max_new_tokens, 0)
    finally:
        driver.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parser.parse_args(argv)
    if args.model is None:
        from lmikit.embedded_model import ensure_smollm2

        args.model = ensure_smollm2()
    if args.variant:
        print(json.dumps({"tok_s": run_variant(args)}))
        return
    common = [f"--model={args.model}", f"--rows={args.rows}", f"--context-words={args.context_words}"]
    common += [f"--max-new-tokens={args.max_new_tokens}", f"--threads={args.threads}"]
    for repeat in range(args.repeats):
        tok_s = {variant: _one(variant, common) for variant in VARIANTS}
        print(
            f"repeat {repeat + 1}: dynamic {tok_s['dynamic']:.1f} tok/s, headroom {tok_s['headroom']:.1f} tok/s, "
            f"headroom / dynamic {tok_s['headroom'] / tok_s['dynamic']:.2f}",
            flush=True,
        )


def _one(variant: str, common: list[str]) -> float:
    command = [sys.executable, "-m", __spec__.name if __spec__ else __name__, f"--variant={variant}", *common]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["tok_s"])


if __name__ == "__main__":
    main()
