"""`python -m lmikit.benchmarks.vllm_bench`: `lmi serve` on the vLLM engine against vLLM's own OpenAI server.

Run it with the python of a venv that has vLLM (`make test-vllm` builds `.venv-vllm`). Every system runs vLLM on the
same model with the same settings (fp32, eager mode, a 1 GiB KV cache on a CPU build, `max_num_seqs`):

* `vllm-openai`: `python -m vllm.entrypoints.openai.api_server`, streamed `/v1/completions`.
* `vllm-openai-placed`: the same, its threads then moved off the CPUs vLLM pinned its workers to, as `lmi serve`
  moves its own (`server.placement`): what that placement is worth to vLLM's own server.
* `lmi-rolling`: `lmi serve`, DJL newest rolling batch (option.rolling_batch=vllm: AsyncLLM on the engine's thread).
* `lmi-async`: `lmi serve`, DJL newest async mode (vLLM's AsyncLLM), `/invocations`.

One server runs at a time (two vLLM engines would share the CPUs), in turn over the repeats, and every level goes
through `lmi bench`'s client (`targets`, `stats`): tokens/s, TTFT, ITL. Each level also reports the server process's
own CPU time per generated token (vLLM's engine-core processes left out): the frontend's cost, where the handler's
overhead shows. The best run of each level, and the lmi/vLLM ratios (best over best, range over repeats), go to
`--out`/vllm_bench.md.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import psutil

from ..djl.dialect import DjlVersion
from ..embedded_model import ensure_smollm2
from ..launch import RunningEndpoint, running_endpoint
from ..server.placement import keep_off_pinned_cpus
from .compare import START_TIMEOUT_S, vllm_completions, vllm_openai_server
from .prompts import make_prompts
from .stats import LevelResult, Ratio, markdown_table, ratio, ratio_table, summarize
from .targets import Target, closed_loop, container_target

SYSTEMS = ("vllm-openai", "vllm-openai-placed", "lmi-rolling", "lmi-async")


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    max_batch: int


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def vllm_openai(settings: Settings) -> AbstractContextManager[RunningEndpoint]:
    return vllm_openai_server(sys.executable, settings.model_dir, settings.max_batch, _env(), "--enforce-eager")


@contextmanager
def vllm_openai_placed(settings: Settings) -> Iterator[RunningEndpoint]:
    with vllm_openai(settings) as endpoint:
        placed = keep_off_pinned_cpus(endpoint.process.pid)
        click.echo(f"vllm-openai-placed: {placed or 'nothing pinned, nothing moved'}")
        yield endpoint


def lmi_serve(settings: Settings, *options: str) -> AbstractContextManager[RunningEndpoint]:
    """`lmi serve` of the repository's own project (model/model.py) on the vLLM engine."""
    args = [
        "--project-dir",
        str(Path(__file__).resolve().parents[3]),
        "--model-id",
        str(settings.model_dir),
        "--djl-version",
        DjlVersion.NEWEST.value,
    ]
    for option in (
        "generation_engine=vllm",
        "dtype=fp32",
        "enforce_eager=true",
        f"max_rolling_batch_size={settings.max_batch}",
        *options,
    ):
        args += ["--option", option]
    return running_endpoint(args, _env(), ready_timeout=START_TIMEOUT_S)


STARTERS: dict[str, tuple[Callable[[Settings], AbstractContextManager[RunningEndpoint]], Callable[[str], Target]]] = {
    "vllm-openai": (vllm_openai, vllm_completions),
    "vllm-openai-placed": (vllm_openai_placed, vllm_completions),
    "lmi-rolling": (lambda s: lmi_serve(s, "rolling_batch=vllm", "output_formatter=jsonlines"), container_target),
    "lmi-async": (
        lambda s: lmi_serve(
            s, "rolling_batch=disable", "async_mode=true", "enable_streaming=true", "output_formatter=jsonlines"
        ),
        container_target,
    ),
}


@dataclass(frozen=True)
class Level:
    result: LevelResult
    frontend_ms_per_token: float


def run_system(
    name: str,
    settings: Settings,
    prompts: Sequence[str],
    levels: Sequence[int],
    rounds: int,
    max_new_tokens: int,
    repeat: int,
) -> list[Level]:
    """Start one system, warm it with one request, run every level, stop it."""
    start, target_for = STARTERS[name]
    with start(settings) as endpoint:
        target = target_for(endpoint.url)
        closed_loop(target, prompts, 1, 1, 8)
        return [_level(name, target, endpoint, prompts, c, rounds, max_new_tokens, repeat) for c in levels]


def _level(
    name: str,
    target: Target,
    endpoint: RunningEndpoint,
    prompts: Sequence[str],
    concurrency: int,
    rounds: int,
    max_new_tokens: int,
    repeat: int,
) -> Level:
    process = psutil.Process(endpoint.process.pid)
    before = sum(process.cpu_times()[:2])
    records = closed_loop(target, prompts, concurrency, rounds, max_new_tokens)
    result = summarize(name, concurrency, records, repeat)
    cpu_s = sum(process.cpu_times()[:2]) - before
    level = Level(result, 1000 * cpu_s / max(result.tokens, 1))
    click.echo(
        f"{name:>12} c={concurrency:<3} repeat {repeat + 1}: {result.tok_s:6.1f} tok/s  TTFT p50 "
        f"{result.ttft_p50_ms:6.0f} ms  ITL p50 {result.itl_p50_ms:5.1f} ms  frontend "
        f"{level.frontend_ms_per_token:.3f} CPU ms/token  errors {result.errors}"
    )
    return level


def _ratios(levels: Sequence[Level], systems: Sequence[str], concurrencies: Sequence[int]) -> list[Ratio]:
    """Each system's tokens/s over vLLM's server's at every level (best over best, and the per-repeat range)."""
    results = [level.result for level in levels]
    return [
        found
        for system in systems
        if system != "vllm-openai"
        for c in concurrencies
        if (found := ratio(results, system, "vllm-openai", c)) is not None
    ]


def document(levels: Sequence[Level], systems: Sequence[str], concurrencies: Sequence[int]) -> dict[str, Any]:
    """The run as JSON (every level of every repeat, and the ratios): what the README's vLLM table is rendered from."""
    return {
        "results": [{**asdict(level.result), "frontend_ms_per_token": level.frontend_ms_per_token} for level in levels],
        "ratios": [asdict(r) for r in _ratios(levels, systems, concurrencies)],
    }


def report(levels: Sequence[Level], systems: Sequence[str], concurrencies: Sequence[int]) -> str:
    """Markdown: the best run per system and level, the ratios against vLLM's server, and each best run's frontend
    CPU and TTFT against vLLM's server's."""
    best: dict[tuple[str, int], Level] = {}
    for level in levels:
        key = (level.result.system, level.result.concurrency)
        if key not in best or level.result.tok_s > best[key].result.tok_s:
            best[key] = level
    ratios = _ratios(levels, systems, concurrencies)
    lines = ["| system | c | frontend CPU ms/token | TTFT p50 / vllm-openai's |", "| --- | ---: | ---: | ---: |"]
    for (system, c), level in sorted(best.items(), key=lambda item: (item[0][1], item[0][0])):
        reference = best.get(("vllm-openai", c))
        ttft = level.result.ttft_p50_ms / reference.result.ttft_p50_ms if reference else float("nan")
        lines.append(f"| {system} | {c} | {level.frontend_ms_per_token:.3f} | {ttft:.2f} |")
    return "\n\n".join(
        [markdown_table([level.result for level in best.values()]), ratio_table(ratios), "\n".join(lines)]
    )


@click.command()
@click.option(
    "--model-id",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A local model directory (default: the embedded SmolLM2).",
)
@click.option("--systems", default=",".join(SYSTEMS), show_default=True)
@click.option("--concurrency", default="1,8,32", show_default=True)
@click.option("--prompt-tokens", default=32, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--rounds", default=2, show_default=True, help="Requests each stream sends per level.")
@click.option("--repeats", default=2, show_default=True, help="Turns of every system, alternated.")
@click.option("--out", default="bench-results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
def main(
    model_id: Path | None,
    systems: str,
    concurrency: str,
    prompt_tokens: int,
    max_new_tokens: int,
    rounds: int,
    repeats: int,
    out: Path,
) -> None:
    """lmi serve's vLLM engine against vLLM's own OpenAI server (run with a python that has vLLM)."""
    from transformers import AutoTokenizer

    settings = Settings(model_id or ensure_smollm2(), max_batch=32)
    names, levels = systems.split(","), [int(c) for c in concurrency.split(",")]
    prompts = make_prompts(max(levels) * rounds, prompt_tokens, AutoTokenizer.from_pretrained(settings.model_dir))
    results = [
        level
        for repeat in range(repeats)
        for name in names
        for level in run_system(name, settings, prompts, levels, rounds, max_new_tokens, repeat)
    ]
    out.mkdir(parents=True, exist_ok=True)
    text = report(results, names, levels)
    (out / "vllm_bench.md").write_text(text + "\n", encoding="utf-8")
    (out / "vllm_bench.json").write_text(json.dumps(document(results, names, levels), indent=1) + "\n")
    click.echo(text)


if __name__ == "__main__":
    main()
