"""`lmi bench`'s PNG: tokens/s, TTFT, ITL and end-to-end latency against concurrency, one line per system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .stats import LevelResult

PANELS = (
    ("tok_s", "aggregate tokens/s"),
    ("ttft_p50_ms", "TTFT p50 (ms)"),
    ("itl_p50_ms", "ITL p50 (ms)"),
    ("e2e_p50_ms", "end-to-end p50 (ms)"),
)


def write_plot(results: Sequence[LevelResult], path: Path, title: str) -> None:
    """Four panels against concurrency (log scale), from the given (best) results."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=(11, 8))
    systems = sorted({r.system for r in results})
    for axis, (key, label) in zip(axes.flat, PANELS):
        for system in systems:
            points = sorted((r.concurrency, getattr(r, key)) for r in results if r.system == system)
            axis.plot([c for c, _ in points], [v for _, v in points], marker="o", label=system)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent streams")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
