"""What `lmi bench` writes: the ratios and per-token overheads of a `--compare` run, and bench.json, bench.md and
bench.png in the output folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .stats import LevelResult, Ratio, best_runs, markdown_table, overhead_ms, ratio, ratio_table


def compare_ratios(results: Sequence[LevelResult]) -> list[Ratio]:
    """The stack against the limit, the peers and the naive handler; the newest protocol against 0.23."""
    systems = sorted({r.system for r in results})
    stacks = [s for s in systems if s.startswith("lmi-")]
    pairs = [(s, "generate") for s in systems if s != "generate"]
    pairs += [(s, peer) for peer in ("transformers-serve", "vllm", "naive") for s in stacks]
    pairs += [(s, s.replace("-newest-", "-0.23-")) for s in stacks if "-newest-" in s]
    found = (ratio(results, top, bottom, c) for c in sorted({r.concurrency for r in results}) for top, bottom in pairs)
    return [r for r in found if r is not None]


def stack_overheads(results: Sequence[LevelResult]) -> list[dict[str, Any]]:
    """Per stack and level: its ITL p50 minus the static batch's step time at the same batch size."""
    rows = []
    for system in sorted({r.system for r in results if r.system.startswith("lmi-")}):
        for c in sorted({r.concurrency for r in results}):
            value = overhead_ms(results, system, "generate", c)
            if value is not None:
                rows.append({"system": system, "concurrency": c, "ms_per_token": value})
    return rows


def write_results(
    out: Path,
    meta: dict[str, Any],
    results: Sequence[LevelResult],
    ratios: Sequence[Ratio],
    overheads: Sequence[dict[str, Any]],
) -> None:
    from .plot import write_plot

    out.mkdir(parents=True, exist_ok=True)
    best = sorted(best_runs(results), key=lambda r: (r.concurrency, r.system))
    document = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "best": [asdict(r) for r in best],
        "ratios": [asdict(r) for r in ratios],
        "overheads": list(overheads),
    }
    (out / "bench.json").write_text(json.dumps(document, indent=1))
    (out / "bench.md").write_text(markdown_report(meta, best, ratios, overheads))
    write_plot(best, out / "bench.png", title(meta))


def markdown_report(
    meta: dict[str, Any], best: Sequence[LevelResult], ratios: Sequence[Ratio], overheads: Sequence[dict[str, Any]]
) -> str:
    lines = [f"# lmi bench: {meta['target']}", "", f"`{meta['command']}`", "", title(meta), ""]
    if meta.get("threads"):
        lines += ["Threads per system:", ""] + [f"* {name}: {text}" for name, text in meta["threads"].items()] + [""]
    lines += [f"Best of {meta['repeats']} repeat(s) per level; latencies in ms.", "", markdown_table(best), ""]
    if ratios:
        lines += ["Ratios of tokens/s, repeat by repeat (best / best and the range):", "", ratio_table(ratios), ""]
    if overheads:
        lines += [
            "Stack overhead per token (ITL p50 minus the static batch's step time at the same batch size):",
            "",
            "| system | c | ms/token |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {o['system']} | {o['concurrency']} | {o['ms_per_token']:.1f} |" for o in overheads] + [""]
    return "\n".join(lines)


def title(meta: dict[str, Any]) -> str:
    return (
        f"{meta['model']} · prompts {meta['prompt']} · {meta['max_new_tokens']} new tokens · "
        f"{meta['rounds']} request(s) per stream per level · {meta['machine']}"
    )
