"""The README's benchmark tables, rendered from the JSON the benchmarks write under docs/bench, so that no figure in
them is typed by hand: `python -m lmikit.benchmarks.readme_tables` rewrites every block between a
`<!-- table: NAME -->` marker and `<!-- end table -->`, and the test suite fails when a block differs from what its
file renders.

* `engine`: `engine_bench --out docs/bench/engine/<stack>.json`, one file per stack;
* `compare` and `compare-ttft`: `lmi bench --compare --out docs/bench/compare` (its bench.json);
* `vllm`: `vllm_bench --out docs/bench/vllm` (its vllm_bench.json).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n).*?(<!-- end table -->)", re.DOTALL)
#: `lmi bench --compare`'s system names as the README's readers know them, in the table's order
COMPARE_SYSTEMS = {
    "generate": "static-batch `generate` (limit)",
    "lmi-0.23-portable": "`lmi serve` 0.23, portable (what `auto` picks on CPU)",
    "lmi-newest-portable": "`lmi serve` newest, portable",
    "lmi-0.23-continuous": "`lmi serve` 0.23, continuous",
    "lmi-newest-continuous": "`lmi serve` newest, continuous",
    "transformers-serve": "`transformers serve --continuous-batching`",
    "vllm": "vLLM's OpenAI server",
    "naive": "naive handler",
}
ENGINE_RATIOS = ("portable/generate", "continuous/generate", "portable/continuous")
VLLM_SYSTEMS = {
    "vllm-openai-placed": "vLLM server, threads moved",
    "lmi-rolling": "`lmi serve` rolling batch",
    "lmi-async": "`lmi serve` async mode",
}
Document = Mapping[str, Any]


def engine_table(stacks: Sequence[Document]) -> str:
    """Per stack and concurrency, each engine's tokens/s over `generate`'s: best over best [run-by-run range]."""
    lines = [
        "| stack | c | portable / `generate` | continuous / `generate` | portable / continuous |",
        "|---|---|---|---|---|",
    ]
    for document in stacks:
        stack = document["stack"]
        label = f"Python {stack['python']}, torch {stack['torch']}, transformers {stack['transformers']}"
        ratios = {(r["concurrency"], r["ratio"]): r for r in document["ratios"]}
        for index, c in enumerate(sorted({c for c, _ in ratios})):
            cells = [_ranged(ratios.get((c, name))) for name in ENGINE_RATIOS]
            lines.append(f"| {label if index == 0 else ''} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_table(document: Document) -> str:
    """Per system, the best tokens/s at each concurrency, and in brackets its ratio to the static batch's."""
    best = _best(document)

    def cell(system: str, c: int, row: Mapping[str, Any]) -> str:
        limit = best.get(("generate", c))
        if system == "generate" or limit is None:
            return f"{row['tok_s']:.1f}"
        return f"{row['tok_s']:.1f} [{row['tok_s'] / limit['tok_s']:.2f}]"

    return _per_system(best, "system", cell)


def compare_ttft_table(document: Document) -> str:
    """Per system, the best run's TTFT p50 (ms) at each concurrency."""
    return _per_system(_best(document), "TTFT p50 (ms)", lambda system, c, row: f"{row['ttft_p50_ms']:.1f}")


def _per_system(
    best: Mapping[tuple[str, int], Mapping[str, Any]], title: str, cell: Callable[[str, int, Mapping[str, Any]], str]
) -> str:
    """One row per `lmi bench --compare` system that ran, one column per concurrency ("—" where it did not run)."""
    levels = sorted({c for _, c in best})
    lines = [f"| {title} | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|" + "---|" * len(levels)]
    for system, label in COMPARE_SYSTEMS.items():
        if any((system, c) in best for c in levels):
            cells = [cell(system, c, best[(system, c)]) if (system, c) in best else "—" for c in levels]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def vllm_table(document: Document) -> str:
    """Per concurrency, vLLM's server's best tokens/s, then each `lmi serve` path's [range of per-repeat ratios to
    it] and its best run's TTFT p50 over the server's."""
    best = _best(document)
    ratios = {(r["top"], r["concurrency"]): r for r in document["ratios"] if r["bottom"] == "vllm-openai"}
    systems = [s for s in VLLM_SYSTEMS if any(system == s for system, _ in best)]
    header = "| c | vLLM OpenAI server | " + " | ".join(f"{VLLM_SYSTEMS[s]} | TTFT p50 ratio" for s in systems) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(systems)]
    for c in sorted({c for system, c in best if system == "vllm-openai"}):
        server = best[("vllm-openai", c)]
        cells = [f"{server['tok_s']:.1f}"]
        for system in systems:
            row = best.get((system, c))
            if row is None:
                cells += ["—", "—"]
                continue
            cells.append(f"{row['tok_s']:.1f} {_range(ratios.get((system, c)))}".rstrip())
            cells.append(f"{row['ttft_p50_ms'] / server['ttft_p50_ms']:.2f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best(document: Document) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The run with the most tokens/s per system and concurrency."""
    best: dict[tuple[str, int], Mapping[str, Any]] = {}
    for row in document["results"]:
        key = (row["system"], row["concurrency"])
        if key not in best or row["tok_s"] > best[key]["tok_s"]:
            best[key] = row
    return best


def _ranged(ratio: Mapping[str, Any] | None) -> str:
    return "—" if ratio is None else f"{ratio['best']:.2f} {_range(ratio)}"


def _range(ratio: Mapping[str, Any] | None) -> str:
    return "" if ratio is None else f"[{ratio['low']:.2f}–{ratio['high']:.2f}]"


def renderers(bench: Path) -> dict[str, Callable[[], str]]:
    """Each README table's name and how to render it from the files under `bench`."""

    def load(path: Path) -> Document:
        document: Document = json.loads(path.read_text(encoding="utf-8"))
        return document

    return {
        "engine": lambda: engine_table([load(p) for p in sorted((bench / "engine").glob("*.json"))]),
        "compare": lambda: compare_table(load(bench / "compare" / "bench.json")),
        "compare-ttft": lambda: compare_ttft_table(load(bench / "compare" / "bench.json")),
        "vllm": lambda: vllm_table(load(bench / "vllm" / "vllm_bench.json")),
    }


def render(readme: str, tables: Mapping[str, Callable[[], str]]) -> str:
    """`readme` with every marked block replaced by its table; an unknown table name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in tables:
            raise KeyError(f"README names a table {name!r}; known: {', '.join(sorted(tables))}")
        return f"{match.group(1)}{tables[name]()}\n{match.group(3)}"

    return BLOCK.sub(replace, readme)


def main(argv: Sequence[str] | None = None) -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    updated = render(text, renderers(REPO / "docs" / "bench"))
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    print(f"{readme.name}: {'rewritten' if updated != text else 'already up to date'}", file=sys.stderr)


if __name__ == "__main__":
    main()
