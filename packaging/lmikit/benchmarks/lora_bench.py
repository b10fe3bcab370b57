"""`python -m lmikit.benchmarks.lora_bench`: tokens/s of streams spread over LoRA adapters against streams on the base
model, on the same server, side by side in one run.

The adapters are random ones made with PEFT for the model (`--adapters` of them, rank `--rank`, every linear layer of
the decoder targeted, lora_B not zero so each changes the output). Every server holds all of them, and each level is
run twice in turn: `base` (every stream on the base model) and `mixed` (the streams dealt round-robin over the
adapters, so 32 streams over 4 adapters are 8 per adapter in every batch). Requests are greedy with `ignore_eos`, so
every stream runs to `--max-new-tokens`. Systems:

* `lmi`: `lmi serve` of this repository's handler (`--code`: its model/ folder, default this checkout's) on the
  portable engine with `option.enable_lora`, `option.max_loras` = the adapter count; streams through
  `/invocations` with the body field `adapters`;
* `lmi@baseline`: the same with another checkout's model/ folder (`--baseline-code`), to measure a change of the
  LoRA path before and after in one run;
* `vllm`: vLLM's OpenAI server with `--enable-lora` and `--lora-modules` on the same adapters (`--vllm-python`, a
  venv's python with vLLM; skipped without one), streamed `/v1/completions` with `model` naming the adapter.
  `--max-loras` is one above the adapter count: vLLM's CPU build gives rows the adapter of its last slot once every
  slot is full (see README).

One server runs at a time, in turn over the repeats. Printed and written to `--out`/lora_bench.md and .json: each
system's best run per level, and the mixed/base ratio of each system (best over best, range over repeats).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click

from ..djl.dialect import DjlVersion
from ..embedded_model import ensure_smollm2
from ..launch import RunningEndpoint, running_endpoint
from .compare import START_TIMEOUT_S, thread_env, vllm_env, vllm_openai_server
from .prompts import make_prompts
from .stats import LevelResult, Ratio, markdown_table, ratio, ratio_table, summarize
from .targets import HttpTarget, Target, closed_loop

REPO_CODE = Path(__file__).resolve().parents[3] / "model"
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE, MIXED = "base", "mixed"


def make_adapters(model_dir: Path, out: Path, count: int, rank: int) -> list[Path]:
    """`count` random PEFT adapters of `rank` for the model, saved as `out/adapter-<i>`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(LINEAR_MODULES), init_lora_weights=False, task_type="CAUSAL_LM"
    )
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        path = out / f"adapter-{index}"
        get_peft_model(base, config).save_pretrained(str(path), safe_serialization=True)
        paths.append(path)
    return paths


def lmi_project(code: Path, adapters: Sequence[Path], out: Path) -> Path:
    """A project whose model/ is `code`'s model.py and lmistream beside `adapters/` holding the adapters."""
    model = out / "model"
    (model / "adapters").mkdir(parents=True)
    for name in ("model.py", "lmistream"):
        (model / name).symlink_to(code.resolve() / name)
    for adapter in adapters:
        (model / "adapters" / adapter.name).symlink_to(adapter.resolve())
    shutil.copy(REPO_CODE.parent / "serving.properties", out / "serving.properties")
    return out


@dataclass(frozen=True)
class Plan:
    model_dir: Path
    adapters: tuple[Path, ...]
    rank: int
    max_batch: int
    threads: int
    projects: dict[str, Path]
    vllm_python: Path | None


def lmi_serve(plan: Plan, project: Path) -> AbstractContextManager[RunningEndpoint]:
    args = ["--project-dir", str(project), "--model-id", str(plan.model_dir), "--djl-version", DjlVersion.NEWEST.value]
    for option in (
        "generation_engine=portable",
        "dtype=fp32",
        f"max_rolling_batch_size={plan.max_batch}",
        "enable_lora=true",
        f"max_loras={len(plan.adapters)}",
        f"max_lora_rank={plan.rank}",
    ):
        args += ["--option", option]
    return running_endpoint(args, thread_env(plan.threads), ready_timeout=START_TIMEOUT_S)


def vllm_server(plan: Plan) -> AbstractContextManager[RunningEndpoint]:
    assert plan.vllm_python is not None
    lora = ["--enable-lora", "--max-loras", str(len(plan.adapters) + 1), "--max-lora-rank", str(plan.rank)]
    modules = [f"{path.name}={path}" for path in plan.adapters]
    env = vllm_env(plan.threads)
    return vllm_openai_server(
        plan.vllm_python, plan.model_dir, plan.max_batch, env, "--enforce-eager", *lora, "--lora-modules", *modules
    )


def lmi_target(url: str, adapter: str | None) -> Target:
    def body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
        parameters = {"max_new_tokens": max_new_tokens, "do_sample": False, "ignore_eos": True}
        named = {"adapters": adapter} if adapter else {}
        return {"inputs": prompt, "parameters": parameters, "stream": True, **named}

    return HttpTarget(url, "/invocations", body)


def vllm_target(url: str, adapter: str | None) -> Target:
    def body(prompt: str, max_new_tokens: int) -> dict[str, Any]:
        return {
            "model": adapter or "model",
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }

    return HttpTarget(url, "/v1/completions", body, "sse")


class RoundRobin:
    """A target that sends each request to the next of `targets` in turn (any thread)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = list(targets)
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def request(self, prompt: str, max_new_tokens: int) -> Any:
        with self._lock:
            target = self._targets[next(self._turn) % len(self._targets)]
        return target.request(prompt, max_new_tokens)


Starter = Callable[[Plan], AbstractContextManager[RunningEndpoint]]


def systems(plan: Plan) -> dict[str, tuple[Starter, Callable[[str, str | None], Target]]]:
    found: dict[str, tuple[Starter, Callable[[str, str | None], Target]]] = {
        name: (partial(lmi_serve, project=project), lmi_target) for name, project in plan.projects.items()
    }
    if plan.vllm_python is not None:
        found["vllm"] = (vllm_server, vllm_target)
    return found


def run_system(
    name: str, plan: Plan, prompts: Sequence[str], levels: Sequence[int], max_new_tokens: int, repeat: int
) -> list[LevelResult]:
    """Start one system, warm it on the base model and every adapter, then run `base` and `mixed` at every level."""
    start, target_for = systems(plan)[name]
    results = []
    with start(plan) as endpoint:
        base = target_for(endpoint.url, None)
        mixed = RoundRobin([target_for(endpoint.url, path.name) for path in plan.adapters])
        closed_loop(mixed, prompts, len(plan.adapters) + 1, 1, 4)
        for c in levels:
            for workload, target in ((BASE, base), (MIXED, mixed)):
                result = summarize(f"{name} {workload}", c, closed_loop(target, prompts, c, 1, max_new_tokens), repeat)
                click.echo(
                    f"{result.system:>22} c={c:<3} repeat {repeat + 1}: {result.tok_s:7.1f} tok/s  TTFT p50 "
                    f"{result.ttft_p50_ms:6.0f} ms  ITL p50 {result.itl_p50_ms:6.1f} ms  errors {result.errors}"
                )
                results.append(result)
    return results


def ratios(results: Sequence[LevelResult], names: Sequence[str], levels: Sequence[int]) -> list[Ratio]:
    """Each system's mixed over base tokens/s, and each other system's mixed over the first one's, per level."""
    pairs = [(f"{name} {MIXED}", f"{name} {BASE}") for name in names]
    pairs += [(f"{name} {MIXED}", f"{names[0]} {MIXED}") for name in names[1:]]
    return [found for top, bottom in pairs for c in levels if (found := ratio(results, top, bottom, c)) is not None]


def report(results: Sequence[LevelResult], found: Sequence[Ratio], plan: Plan, max_new_tokens: int) -> str:
    best: dict[tuple[str, int], LevelResult] = {}
    for result in results:
        key = (result.system, result.concurrency)
        if key not in best or result.tok_s > best[key].tok_s:
            best[key] = result
    settings = (
        f"{plan.model_dir.name}, {len(plan.adapters)} adapters of rank {plan.rank} on {', '.join(LINEAR_MODULES)}, "
        f"{max_new_tokens} new tokens (ignore_eos), {plan.threads} threads per server, fp32"
    )
    return "\n\n".join([settings, markdown_table(list(best.values())), ratio_table(found)])


@contextmanager
def prepared(model_dir: Path, count: int, rank: int, codes: dict[str, Path], **settings: Any) -> Iterator[Plan]:
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        adapters = make_adapters(model_dir, Path(tmp) / "adapters", count, rank)
        projects = {name: lmi_project(code, adapters, Path(tmp) / name) for name, code in codes.items()}
        yield Plan(model_dir, tuple(adapters), rank, projects=projects, **settings)


@dataclass(frozen=True)
class LoraWorkload:
    """What the mixed-adapter benchmark runs: `adapters` random adapters of `rank`, at each concurrency level."""

    adapters: int
    rank: int
    levels: list[int]
    prompt_tokens: int
    max_new_tokens: int
    repeats: int
    threads: int


def run_lora_bench(
    model_dir: Path,
    workload: LoraWorkload,
    code: Path = REPO_CODE,
    baseline_code: Path | None = None,
    vllm_python: Path | None = None,
    out: Path = Path("bench-results"),
) -> str:
    """Run every system in turn, `repeats` times, write lora_bench.json and .md under `out`; the printed report."""
    from transformers import AutoTokenizer

    w = workload
    codes = {"lmi": code, **({"lmi@baseline": baseline_code} if baseline_code else {})}
    prompts = make_prompts(max(w.levels), w.prompt_tokens, AutoTokenizer.from_pretrained(str(model_dir)))
    settings = {"max_batch": max(w.levels), "threads": w.threads, "vllm_python": vllm_python}
    with prepared(model_dir, w.adapters, w.rank, codes, **settings) as plan:
        names = list(systems(plan))
        results = [
            result
            for repeat in range(w.repeats)
            for name in names
            for result in run_system(name, plan, prompts, w.levels, w.max_new_tokens, repeat)
        ]
    found = ratios(results, names, w.levels)
    text = report(results, found, plan, w.max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora_bench.md").write_text(text + "\n", encoding="utf-8")
    run: dict[str, Any] = {"adapters": w.adapters, "rank": w.rank, "prompt_tokens": w.prompt_tokens}
    run.update(repeats=w.repeats, model=model_dir.name, max_new_tokens=w.max_new_tokens, threads=w.threads)
    run.update(systems=names)
    document = {"settings": run, "results": [asdict(r) for r in results], "ratios": [asdict(r) for r in found]}
    (out / "lora_bench.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return text


@click.command()
@click.option("--model-id", type=click.Path(exists=True, file_okay=False, path_type=Path), help="default: SmolLM2")
@click.option("--adapters", "count", default=4, show_default=True, type=click.IntRange(1))
@click.option("--rank", default=8, show_default=True, type=click.IntRange(1))
@click.option("--concurrency", default="32", show_default=True)
@click.option("--prompt-tokens", default=32, show_default=True)
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--repeats", default=2, show_default=True, help="Turns of every system, alternated.")
@click.option("--threads", default=2, show_default=True, help="Intra-op threads of every server.")
@click.option("--code", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_CODE)
@click.option("--baseline-code", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--vllm-python", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", default="bench-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
def main(
    model_id: Path | None,
    count: int,
    rank: int,
    concurrency: str,
    prompt_tokens: int,
    max_new_tokens: int,
    repeats: int,
    threads: int,
    code: Path,
    baseline_code: Path | None,
    vllm_python: Path | None,
    out: Path,
) -> None:
    """Streams over LoRA adapters against streams on the base model, on lmi serve and vLLM's server."""
    levels = [int(c) for c in concurrency.split(",")]
    workload = LoraWorkload(count, rank, levels, prompt_tokens, max_new_tokens, repeats, threads)
    click.echo(run_lora_bench(model_id or ensure_smollm2(), workload, code, baseline_code, vllm_python, out))


if __name__ == "__main__":
    main()
