"""The workloads of `lmi bench`, each a runner that takes the run's `BenchSettings`, runs and writes its results.

A plain run (`run_endpoint`) drives one endpoint through the project's client (`targets`); `--compare` runs the
workload `COMPARE_WORKLOADS` maps `--workload` to, on systems it starts itself; `--structured` runs the
structured-output workload in this process. A new compare workload is one entry there plus its runner. The sweeps
(`sweep`) report TTFT, ITL and end-to-end latency (p50 / p95), aggregate tokens/s and errors per level (`stats`) and
go to `--out`: bench.json (every run), bench.md (the best run of each level, the ratios) and bench.png (`plot`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..djl.dialect import DjlVersion
from .prompts import make_prompts, read_prompts
from .report import compare_ratios, stack_overheads, write_results
from .settings import BenchSettings, Endpoint, Load
from .stats import LevelResult, ratio_table, summarize
from .targets import ClosedLoop, RuntimeTarget, Target, container_target, openai_target

Runner = Callable[[BenchSettings, Console], None]


def sweep(
    systems: Sequence[tuple[str, Any]], prompts: Sequence[str], load: Load, console: Console
) -> list[LevelResult]:
    """Every system at every level, interleaved (repeat, level, system) so that drift touches all alike; each system
    first answers one unrecorded request (loading, first-call caches)."""
    for _, runner in systems:
        runner.run_level(prompts, 1, 1, min(load.max_new_tokens, 8), lambda _: None)
    runs = [(r, c, name, runner) for r in range(load.repeats) for c in load.levels for name, runner in systems]
    total = sum(c * load.rounds for _, c, _, _ in runs)
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("requests", total=total)
        for repeat, c, name, runner in runs:
            progress.update(task, description=f"{name} c={c} repeat {repeat + 1}/{load.repeats}")
            records = runner.run_level(prompts, c, load.rounds, load.max_new_tokens, lambda _: progress.advance(task))
            result = summarize(name, c, records, repeat)
            results.append(result)
            progress.console.print(_one_line(result))
    return results


def _one_line(r: LevelResult) -> str:
    return (
        f"{r.system:>22} c={r.concurrency:<3} {r.tok_s:7.1f} tok/s  TTFT p50 {r.ttft_p50_ms:7.0f} ms  "
        f"ITL p50 {r.itl_p50_ms:6.1f} ms  E2E p50 {r.e2e_p50_ms:7.0f} ms  errors {r.errors}"
    )


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def endpoint_target(endpoint: Endpoint) -> Target:
    """The target of a plain `lmi bench` run (no URL: a real SageMaker endpoint by name)."""
    if endpoint.route == "runtime" or endpoint.url is None:
        from ..client.runtime_client import runtime_client

        return RuntimeTarget(runtime_client(endpoint.url, endpoint.region), endpoint.endpoint_name)
    if endpoint.route == "container":
        return container_target(endpoint.url)
    api = "chat" if endpoint.route == "openai-chat" else "completions"
    return openai_target(endpoint.url, endpoint.model, api=api, api_key=endpoint.api_key)


def compare_model(name: str) -> Path:
    """`smollm2` (embedded), `tiny` (the test model) or a local model directory."""
    from ..embedded_model import ensure_smollm2, ensure_tiny_model

    if name in ("smollm2", "tiny"):
        return ensure_smollm2() if name == "smollm2" else ensure_tiny_model()
    path = Path(name)
    if not path.is_dir():
        raise click.BadParameter(f"{name} is not smollm2, tiny or a model directory", param_hint="--model-id")
    return path.resolve()


def level_prompts(load: Load, tokenizer: Any) -> list[str]:
    """The prompts of a sweep: the prompt file's lines, or enough generated ones for the largest level's rounds."""
    if load.prompt_file:
        return read_prompts(load.prompt_file)
    return make_prompts(max(load.levels) * load.rounds, load.prompt_tokens, tokenizer)


def write_sweep(settings: BenchSettings, meta: dict[str, Any], results: list[LevelResult], console: Console) -> None:
    """bench.json, .md and .png; under `--compare` with the ratios between systems and the stack's overheads."""
    ratios = compare_ratios(results) if settings.compare else []
    overheads = stack_overheads(results) if settings.compare else []
    write_results(settings.out, meta, results, ratios, overheads)
    if ratios:
        console.print(ratio_table(ratios))
    console.print(f"Wrote {settings.out / 'bench.json'}, bench.md and bench.png")


def sweep_meta(settings: BenchSettings, target: str, model: str, threads: dict[str, str]) -> dict[str, Any]:
    """What bench.json and bench.md record of a sweep: its target, model, load, machine and command."""
    load = settings.load
    prompt = f"from {load.prompt_file.name}" if load.prompt_file else f"{load.prompt_tokens} tokens"
    return {
        "target": target,
        "model": model,
        "prompt": prompt,
        "max_new_tokens": load.max_new_tokens,
        "rounds": load.rounds,
        "repeats": load.repeats,
        "machine": machine(),
        "threads": threads,
        "command": settings.command,
    }


def run_endpoint(settings: BenchSettings, console: Console) -> None:
    """A plain run: the one endpoint, over its route."""
    endpoint = settings.endpoint
    target = endpoint_target(endpoint)
    tokenizer = None
    if endpoint.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(endpoint.tokenizer)
    prompts = level_prompts(settings.load, tokenizer)
    results = sweep([(endpoint.route, ClosedLoop(target))], prompts, settings.load, console)
    meta = sweep_meta(settings, f"{endpoint.name} ({endpoint.route})", endpoint.model, {})
    write_sweep(settings, meta, results, console)


def run_single(settings: BenchSettings, console: Console) -> None:
    """`--compare --workload single`: the stack, the engine's limit, peers and a naive handler on single prompts."""
    from .compare import Plan, started_systems

    systems = settings.systems
    model_dir = compare_model(systems.model_id)
    plan = Plan(
        model_dir,
        systems.project_dir,
        systems.threads,
        max(settings.load.levels),
        engines=systems.engines,
        protocols=[DjlVersion(protocol) for protocol in systems.protocols],
        transformers_serve=systems.transformers_serve,
        vllm_python=systems.vllm_python,
        naive=systems.naive,
    )
    with started_systems(plan, console.print) as (started, tokenizer):
        prompts = level_prompts(settings.load, tokenizer)
        results = sweep([(s.name, s.runner) for s in started], prompts, settings.load, console)
        threads = {s.name: s.threads for s in started}
    meta = sweep_meta(settings, f"--compare on {model_dir.name}", model_dir.name, threads)
    write_sweep(settings, meta, results, console)


def run_chat(settings: BenchSettings, console: Console) -> None:
    """`--compare --workload chat`: the stack with its prefix cache on against off (and vLLM), on chats."""
    from .chat_bench import later_turn_ratios, ratio_table, run_chat_compare, write_chat_results
    from .compare import Plan

    systems, chats, load = settings.systems, settings.chats, settings.load
    model_dir = compare_model(systems.model_id)
    plan = Plan(model_dir, systems.project_dir, systems.threads, max(load.levels), vllm_python=systems.vllm_python)
    replays = run_chat_compare(chats, load, plan, console)
    ratios = later_turn_ratios(replays) + later_turn_ratios(replays, bottom="vllm")
    setup = (
        f"{chats.conversations} conversations of {chats.turns} turns, a shared system prompt of "
        f"{chats.system_tokens} tokens, {load.max_new_tokens} new tokens per turn, {load.repeats} "
        f"repeat(s), {machine()}"
    )
    meta = {"model": model_dir.name, "command": settings.command, "setup": setup, "threads": systems.threads}
    write_chat_results(settings.out, meta, replays, ratios)
    console.print(ratio_table(ratios))
    console.print(f"Wrote {settings.out / 'chat.json'} and chat.md")


def run_lora(settings: BenchSettings, console: Console) -> None:
    """`--compare --workload lora`: streams over LoRA adapters against streams on the base model."""
    from .lora_bench import LoraWorkload, run_lora_bench

    load, adapters = settings.load, settings.adapters
    workload = LoraWorkload(
        adapters.count,
        adapters.rank,
        list(load.levels),
        load.prompt_tokens,
        load.max_new_tokens,
        load.repeats,
        settings.systems.threads,
    )
    model_dir = compare_model(settings.systems.model_id)
    vllm_python = settings.systems.vllm_python
    console.print(run_lora_bench(model_dir, workload, vllm_python=vllm_python, out=settings.out))


def run_structured(settings: BenchSettings, console: Console) -> None:
    """`--structured`: half the rows of one batch under a JSON schema against the same batch unconstrained."""
    from .structured_bench import structured_main

    load, systems = settings.load, settings.systems
    args = (systems.model_id, max(load.levels), load.max_new_tokens, systems.threads, load.repeats)
    console.print(structured_main(*args, settings.out))


def run_long_prompt(settings: BenchSettings, console: Console) -> None:
    """`--compare --workload long-prompt`: running streams' ITL while one long prompt is prefilled whole or in
    chunks."""
    from . import prefill_bench
    from .compare import Plan

    systems, workload = settings.systems, settings.long_prompt
    model_dir = compare_model(systems.model_id)
    plan = Plan(model_dir, systems.project_dir, systems.threads, workload.streams + 1, engines=systems.engines)
    windows = prefill_bench.run_long_prompt(plan, workload, settings.load.repeats, console)
    meta = {"model": model_dir.name, "command": settings.command, "machine": machine()}
    console.print(prefill_bench.write_long_prompt_results(settings.out, meta, windows))


def run_no_prefix(settings: BenchSettings, console: Console) -> None:
    """`--compare --workload no-prefix`: the prefix cache on against off, on prompts that share no block."""
    from . import prefill_bench
    from .compare import Plan

    systems = settings.systems
    model_dir = compare_model(systems.model_id)
    plan = Plan(model_dir, systems.project_dir, systems.threads, max(settings.load.levels))
    results = prefill_bench.run_no_prefix(plan, settings.load, console)
    meta = sweep_meta(settings, f"no shared prefix on {model_dir.name}", model_dir.name, {})
    ratios = prefill_bench.cache_ratios(results)
    write_results(settings.out, meta, results, ratios, [])
    console.print(ratio_table(ratios))


#: `--compare --workload NAME`: the runner of each workload, in the order `--workload` lists them
COMPARE_WORKLOADS: dict[str, Runner] = {
    "single": run_single,
    "chat": run_chat,
    "lora": run_lora,
    "long-prompt": run_long_prompt,
    "no-prefix": run_no_prefix,
}


def run_bench(settings: BenchSettings, console: Console) -> None:
    """Run the workload the settings name."""
    if settings.structured:
        run_structured(settings, console)
    elif settings.compare:
        COMPARE_WORKLOADS[settings.workload](settings, console)
    else:
        run_endpoint(settings, console)
