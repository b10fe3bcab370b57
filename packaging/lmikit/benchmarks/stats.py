"""`lmi bench`'s numbers, pure: per-request token timings in, per-level summaries, ratios and the markdown table out.

A request is recorded as the clock reading it was sent at and the arrival time of each of its tokens (or the error
that ended it). A level (one system at one concurrency) is summarised as TTFT, inter-token latency (ITL: gaps
between consecutive tokens of one request), end-to-end latency (p50 / p95, in ms), aggregate tokens/s (all tokens
over first send to last token) and the error count. Ratios between systems are taken repeat by repeat, so that
machine drift between repeats cancels, and reported as the ratio of the best runs with the range of the per-repeat
ratios. No torch, no matplotlib, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """One request as its client saw it: when it was sent, when each token arrived, and its error if it failed."""

    sent: float
    token_times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.token_times, self.token_times[1:])]

    @property
    def latency(self) -> float | None:
        return self.token_times[-1] - self.sent if self.token_times else None


@dataclass(frozen=True)
class LevelResult:
    """One system at one concurrency: latencies in ms, aggregate tokens/s, errors."""

    system: str
    concurrency: int
    requests: int
    errors: int
    tokens: int
    duration_s: float
    tok_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    repeat: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(system: str, concurrency: int, records: Sequence[RequestRecord], repeat: int = 0) -> LevelResult:
    """The level's statistics; tokens/s over the span from the first send to the last token of any request."""
    done = [r for r in records if r.token_times]
    start = min((r.sent for r in records), default=0.0)
    end = max((r.token_times[-1] for r in done), default=start)
    tokens = sum(len(r.token_times) for r in records)
    ttfts = [t for t in (r.ttft for r in done) if t is not None]
    gaps = [gap for r in done for gap in r.gaps]
    latencies = [t for t in (r.latency for r in done) if t is not None]

    def ms(values: Sequence[float], q: float) -> float:
        return 1000 * percentile(values, q)

    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=len(records),
        errors=sum(r.error is not None for r in records),
        tokens=tokens,
        duration_s=end - start,
        tok_s=tokens / (end - start) if end > start else 0.0,
        ttft_p50_ms=ms(ttfts, 50),
        ttft_p95_ms=ms(ttfts, 95),
        itl_p50_ms=ms(gaps, 50),
        itl_p95_ms=ms(gaps, 95),
        e2e_p50_ms=ms(latencies, 50),
        e2e_p95_ms=ms(latencies, 95),
        repeat=repeat,
    )


def best_runs(results: Iterable[LevelResult]) -> list[LevelResult]:
    """Per (system, concurrency) the repeat with the highest tokens/s (the least disturbed by other load)."""
    best: dict[tuple[str, int], LevelResult] = {}
    for result in results:
        key = (result.system, result.concurrency)
        if key not in best or result.tok_s > best[key].tok_s:
            best[key] = result
    return list(best.values())


@dataclass(frozen=True)
class Ratio:
    """`top` tokens/s over `bottom` tokens/s at one concurrency: best over best, and the per-repeat range."""

    top: str
    bottom: str
    concurrency: int
    best: float
    low: float
    high: float


def ratio(results: Sequence[LevelResult], top: str, bottom: str, concurrency: int) -> Ratio | None:
    """The ratio of two systems' tokens/s at `concurrency`, repeat by repeat; None unless both ran."""

    def by_repeat(system: str) -> Mapping[int, float]:
        return {r.repeat: r.tok_s for r in results if r.system == system and r.concurrency == concurrency}

    tops, bottoms = by_repeat(top), by_repeat(bottom)
    paired = [tops[k] / bottoms[k] for k in tops if k in bottoms and bottoms[k] > 0]
    if not paired:
        return None
    best = max(tops.values()) / max(bottoms.values())
    return Ratio(top, bottom, concurrency, best, min(paired), max(paired))


def overhead_ms(results: Sequence[LevelResult], system: str, reference: str, concurrency: int) -> float | None:
    """ITL p50 of `system` minus ITL p50 of `reference` (the engine's step time) at one concurrency, best runs."""
    best = {(r.system, r.concurrency): r for r in best_runs(results)}
    if (system, concurrency) not in best or (reference, concurrency) not in best:
        return None
    return best[(system, concurrency)].itl_p50_ms - best[(reference, concurrency)].itl_p50_ms


COLUMNS = (
    ("system", "system"),
    ("c", "concurrency"),
    ("tok/s", "tok_s"),
    ("TTFT p50", "ttft_p50_ms"),
    ("TTFT p95", "ttft_p95_ms"),
    ("ITL p50", "itl_p50_ms"),
    ("ITL p95", "itl_p95_ms"),
    ("E2E p50", "e2e_p50_ms"),
    ("E2E p95", "e2e_p95_ms"),
    ("tokens", "tokens"),
    ("errors", "errors"),
)


def markdown_table(results: Sequence[LevelResult]) -> str:
    """One row per system and concurrency (latencies in ms), ordered by concurrency then system."""
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join(" --- " if key == "system" else " ---: " for _, key in COLUMNS) + "|",
    ]
    for result in sorted(results, key=lambda r: (r.concurrency, r.system)):
        lines.append("| " + " | ".join(_cell(getattr(result, key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def ratio_table(ratios: Sequence[Ratio]) -> str:
    lines = ["| ratio (tok/s) | c | best / best | range over repeats |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r.top} / {r.bottom} | {r.concurrency} | {r.best:.2f} | {r.low:.2f}–{r.high:.2f} |" for r in ratios]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.1f}"
    return str(value)
