"""`lmi bench --structured` (or `python -m lmikit.benchmarks.structured_bench`): what structured output costs a batch
on the portable engine.

One batch of `c` different prompts (default 32 streams), greedy, `ignore_eos`, `--max-new-tokens` each, is run two
ways, interleaved `--repeats` times after a warm-up: every row unconstrained, and the same batch with half of its rows
under a JSON schema (an open-ended array of small objects, so the grammar stays live for the whole answer). Printed:
the tokens/s of each (best of the repeats), the ratio half-constrained / unconstrained with its range over the
repeats (the goal is >= 0.9), and the masks' cost per step: the time inside the engine's `apply_masks`, which builds
and applies one step's masks for its constrained rows, per step and as a share of the constrained runs' time. The
timing wraps `apply_masks` where the sampler calls it; nothing else of the engine changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .engine_bench import MODEL_ROOT, EngineDriver, build_bench_model, prompts

SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}
GOAL = 0.9


class MaskTimer:
    """Times every call of the sampler's `apply_masks` (one call per step that has constrained rows)."""

    def __init__(self) -> None:
        from lmistream.engines import sampling

        self._names = vars(sampling)  # the module's namespace, where `select_tokens` looks `apply_masks` up
        self._original: Callable[..., None] = self._names["apply_masks"]
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0
        self._names["apply_masks"] = self._timed

    def _timed(self, *args: Any) -> None:
        start = time.perf_counter()
        self._original(*args)
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - start

    def reset(self) -> None:
        with self._lock:
            self.calls, self.seconds = 0, 0.0

    def close(self) -> None:
        self._names["apply_masks"] = self._original


def run_structured(model_dir: Path, streams: int, max_new_tokens: int, threads: int, repeats: int) -> dict[str, Any]:
    """Tokens/s unconstrained and half-constrained (interleaved), their ratio and the masks' cost per step."""
    import torch
    import transformers
    from lmistream.params import GenerationParams
    from lmistream.structured import json_constraint

    torch.set_num_threads(threads)
    driver = EngineDriver("portable", model_dir, streams)
    plain = GenerationParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    constrained = replace(plain, constraint=json_constraint(SCHEMA, "bench"))
    batches = {"unconstrained": [plain] * streams, "half constrained": [constrained, plain] * (streams // 2)}
    batches["half constrained"] += [plain] * (streams % 2)
    texts = prompts(streams)
    samples: dict[str, list[float]] = {name: [] for name in batches}
    timer = MaskTimer()
    mask_seconds = mask_steps = constrained_seconds = 0.0
    try:
        for run in range(repeats + 1):  # run 0 warms up (and compiles the schema) and is not kept
            for name, params in batches.items():
                timer.reset()
                start = time.perf_counter()
                tok_s = driver.measure(texts, max_new_tokens, run, params)
                if run and name == "half constrained":
                    constrained_seconds += time.perf_counter() - start
                    mask_seconds, mask_steps = mask_seconds + timer.seconds, mask_steps + timer.calls
                if run:
                    samples[name].append(tok_s)
    finally:
        timer.close()
        driver.stop()
    per_run = [a / b for a, b in zip(samples["half constrained"], samples["unconstrained"])]
    return {
        "stack": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": threads,
            "model": model_dir.name,
            "streams": streams,
            "constrained_streams": streams // 2,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "schema": SCHEMA,
        },
        "tok_s": {name: max(values) for name, values in samples.items()},
        "runs": samples,
        "ratio": {
            "best": max(samples["half constrained"]) / max(samples["unconstrained"]),
            "low": min(per_run),
            "high": max(per_run),
            "goal": GOAL,
        },
        "mask_ms_per_step": 1000 * mask_seconds / max(mask_steps, 1),
        "mask_share": mask_seconds / constrained_seconds if constrained_seconds else 0.0,
    }


def format_structured(result: dict[str, Any]) -> str:
    stack, ratio = result["stack"], result["ratio"]
    lines = [
        (
            f"Python {stack['python']}, torch {stack['torch']}, transformers {stack['transformers']}, {stack['threads']} "
            f"threads, {stack['model']}, {stack['streams']} streams ({stack['constrained_streams']} under a JSON schema), "
            f"{stack['max_new_tokens']} new tokens, best of {stack['repeats']}"
        ),
        "",
    ]
    lines += [f"{name:17} {tok_s:8.1f} tok/s" for name, tok_s in result["tok_s"].items()]
    lines += [
        (
            f"ratio half constrained / unconstrained: {ratio['best']:.2f} [{ratio['low']:.2f}-{ratio['high']:.2f}] "
            f"(goal >= {ratio['goal']})"
        ),
        (
            f"masks: {result['mask_ms_per_step']:.2f} ms per step ({stack['constrained_streams']} rows), "
            f"{100 * result['mask_share']:.0f}% of the half-constrained runs' time"
        ),
    ]
    return "\n".join(lines)


def resolve_model(name: str, tmp: Path) -> Path:
    """tiny (the test model), smollm2 (embedded), random (SmolLM2-shaped random weights) or a model directory."""
    from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model

    named: dict[str, Callable[[], Path]] = {
        "tiny": ensure_tiny_model,
        "smollm2": ensure_smollm2,
        "random": lambda: build_bench_model(tmp),
    }
    return named[name]() if name in named else Path(name)


def structured_main(model: str, streams: int, max_new_tokens: int, threads: int, repeats: int, out: Path | None) -> str:
    """Run the workload, write structured.json (and .md) under `out` when given, and return the printed report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(MODEL_ROOT) not in sys.path:
        sys.path.insert(0, str(MODEL_ROOT))
    with tempfile.TemporaryDirectory(prefix="structured-bench-") as tmp:
        result = run_structured(resolve_model(model, Path(tmp)), streams, max_new_tokens, threads, repeats)
    text = format_structured(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "structured.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (out / "structured.md").write_text(f"```\n{text}\n```\n", encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2, random or a model directory (default tiny)")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="measured rounds after a warm-up round")
    parser.add_argument("--out", type=Path, help="write structured.json and structured.md here")
    args = parser.parse_args(argv)
    print(structured_main(args.model, args.streams, args.max_new_tokens, args.threads, args.repeats, args.out))


if __name__ == "__main__":
    main()
