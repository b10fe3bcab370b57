"""The settings of one `lmi bench` run, typed: read once from its command line, then handed to the workload that runs.

`Load` is the shape of every level, the same for every workload; `Endpoint` is the target of a plain run; `Systems`
is what `--compare` (and `--structured`) start; `Chats`, `Adapters` and `LongPrompt` are the knobs of the chat,
LoRA and long-prompt workloads.
Each workload reads the parts it needs and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click


def parse_levels(text: str, option: str = "--concurrency") -> tuple[int, ...]:
    """Positive integers, comma-separated (the concurrency levels of `--concurrency`, or another such `option`)."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise click.BadParameter("expected positive integers, comma-separated", param_hint=option)
    return levels


@dataclass(frozen=True)
class Load:
    """Every level: `concurrency x rounds` requests of `max_new_tokens` new tokens, on prompts of `prompt_tokens`
    (or the lines of `prompt_file`), the whole sweep `repeats` times."""

    levels: tuple[int, ...]
    rounds: int
    prompt_tokens: int
    prompt_file: Path | None
    max_new_tokens: int
    repeats: int


@dataclass(frozen=True)
class Endpoint:
    """The endpoint a plain run drives, by `route`; `tokenizer` makes the prompt lengths exact."""

    url: str | None
    route: str
    endpoint_name: str
    region: str | None
    model: str
    api_key: str | None
    tokenizer: str | None

    @property
    def name(self) -> str:
        return self.url or f"sagemaker:{self.endpoint_name}"


@dataclass(frozen=True)
class Systems:
    """What `--compare` starts: the model (`smollm2`, `tiny` or a directory), the project served, the stack's engines
    and DJL protocols (as given; a workload that uses them reads them), which peers, and every system's threads."""

    model_id: str
    project_dir: Path
    threads: int
    engines: tuple[str, ...]
    protocols: tuple[str, ...]
    transformers_serve: bool
    naive: bool
    vllm_python: Path | None


@dataclass(frozen=True)
class Chats:
    """`--workload chat`: `conversations` of `turns` user turns, all opening with one system prompt."""

    conversations: int
    turns: int
    system_tokens: int


@dataclass(frozen=True)
class Adapters:
    """`--workload lora`: `count` random adapters of `rank`."""

    count: int
    rank: int


@dataclass(frozen=True)
class LongPrompt:
    """`--workload long-prompt`: `streams` running streams, one prompt of `long_tokens` among them, the stack with
    each of `chunk_sizes` as its prefill chunk (and unchunked), `before_s` of running streams measured first."""

    streams: int
    long_tokens: int
    chunk_sizes: tuple[int, ...]
    before_s: float


@dataclass(frozen=True)
class BenchSettings:
    """One run: which workload (`structured`, else `workload` under `compare`, else the endpoint), its parts, where
    the results go, and the command line that asked for it (recorded with them)."""

    command: str
    out: Path
    compare: bool
    workload: str
    structured: bool
    load: Load
    endpoint: Endpoint
    systems: Systems
    chats: Chats
    adapters: Adapters
    long_prompt: LongPrompt
