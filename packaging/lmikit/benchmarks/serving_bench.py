"""`python -m lmikit.benchmarks.serving_bench`: the serving stack against the hardware, side by side in one run.

Three paths generate greedily from the same prompt, `--max-new-tokens` tokens per request:

* `generate`: transformers `model.generate` with `min_new_tokens = max_new_tokens`, one stream and a static batch
  of each concurrency. This is the hardware reference (no batching scheduler, no paged cache, no handler).
* `engine`: the engine the handler picks (`option.generation_engine=auto`) driven directly, `c` requests submitted at
  once: the engine's cost.
* `endpoint`: `lmi serve` as a subprocess (DJL replay, rolling batch, jsonlines), `c` concurrent HTTP streams.
  `endpoint / engine` is the cost of the handler, the DJL replay and HTTP.

For each path and concurrency it reports TTFT p50, inter-chunk gap (ITL) p50 / p99 and aggregate tokens/s
(tokens actually streamed: a random model may stop early on EOS), then the tokens/s ratios against `generate`
with a static batch of the same size. CPU timings move with other load: `/proc/loadavg` is printed first, and
`--threads` (default 1, like the model process of a perf test) is applied to every path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lmikit.server.process import running_endpoint

REPO = Path(__file__).resolve().parents[3]
MODEL_ROOT = REPO / "model"  # model.py and the lmistream package beside it
PROMPT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who"
    " repaired every clock in the valley. One winter morning"
)
PROPERTIES = """engine=Python
option.rolling_batch=custom
option.enable_streaming=true
option.output_formatter=jsonlines
option.dtype=fp32
option.max_rolling_batch_size={batch}
"""
START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0


@dataclass
class Stream:
    """One request as the client saw it: when it was sent and (arrival time, tokens) per chunk, in seconds."""

    sent: float
    chunks: list[tuple[float, int]]

    @property
    def tokens(self) -> int:
        return sum(count for _, count in self.chunks)


@dataclass
class Row:
    path: str
    concurrency: int
    tokens: int
    tok_s: float
    ttft_p50_ms: float
    itl_p50_ms: float
    itl_p99_ms: float


# ---- statistics ---------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def summarize(path: str, streams: list[Stream]) -> Row:
    """TTFT, inter-chunk gaps and aggregate tokens/s (first send to last arrival) of concurrent streams."""
    start = min(s.sent for s in streams)
    end = max((s.chunks[-1][0] for s in streams if s.chunks), default=start)
    ttfts = [s.chunks[0][0] - s.sent for s in streams if s.chunks]
    gaps = [b[0] - a[0] for s in streams for a, b in zip(s.chunks, s.chunks[1:])]
    tokens = sum(s.tokens for s in streams)
    return Row(
        path=path,
        concurrency=len(streams),
        tokens=tokens,
        tok_s=tokens / (end - start) if end > start else 0.0,
        ttft_p50_ms=1000 * statistics.median(ttfts) if ttfts else float("nan"),
        itl_p50_ms=1000 * percentile(gaps, 50),
        itl_p99_ms=1000 * percentile(gaps, 99),
    )


# ---- reference: transformers generate -----------------------------------------------------------------------------


def load_reference(model_dir: Path) -> tuple[Any, Any]:
    """The tokenizer and the fp32 model, as the engine loads them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    return tokenizer, model.eval()


def measure_generate(model: Any, prompt_ids: list[int], batch: int, max_new_tokens: int) -> Row:
    """Greedy static batch: TTFT is a 1-token generate, ITL the per-step time of the rest, all lengths equal."""
    import torch

    input_ids = torch.tensor([prompt_ids] * batch)
    settings = {
        "do_sample": False,
        "pad_token_id": model.generation_config.eos_token_id,
        "attention_mask": torch.ones_like(input_ids),
    }

    def timed(new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
        return time.perf_counter() - start

    ttft, total = timed(1), timed(max_new_tokens)
    step = (total - ttft) / max(1, max_new_tokens - 1)
    return Row(
        "generate", batch, batch * max_new_tokens, batch * max_new_tokens / total, 1000 * ttft, 1000 * step, 1000 * step
    )


# ---- engine: driven directly -----------------------------------------------------------------------------


@dataclass
class RoutedEngine:
    """A started engine and the per-request callbacks its updates are routed to."""

    engine: Any
    routes: dict[str, Callable[[Any], None]]


def start_engine(model_dir: Path, batch: int, model_root: Path = MODEL_ROOT, engine_name: str = "auto") -> RoutedEngine:
    """A started engine (lmistream imported from `model_root`) whose updates go to per-request callbacks."""
    if str(model_root) not in sys.path:
        sys.path.insert(0, str(model_root))
    from lmistream.config import HandlerConfig
    from lmistream.engines import create_engine

    props = {
        "model_id": str(model_dir),
        "dtype": "fp32",
        "max_rolling_batch_size": str(batch),
        "generation_engine": engine_name,
    }
    engine = create_engine(HandlerConfig.from_properties(props))
    routes: dict[str, Callable[[Any], None]] = {}
    engine.start(lambda update: routes[update.request_id](update))
    return RoutedEngine(engine, routes)


def measure_engine(routed: RoutedEngine, prompt_ids: list[int], concurrency: int, max_new_tokens: int) -> Row:
    """Submit `concurrency` greedy requests at once; time every update as it reaches the callback."""
    from lmistream.params import GenerationParams

    done = threading.Semaphore(0)
    streams: dict[str, Stream] = {}

    def on_update(update: Any) -> None:
        streams[update.request_id].chunks.append((time.perf_counter(), len(update.token_ids)))
        if update.finished:
            done.release()

    params = GenerationParams(max_new_tokens=max_new_tokens)
    stamp = time.monotonic_ns()
    for index in range(concurrency):
        request_id = f"bench-{stamp}-{index}"
        streams[request_id] = Stream(time.perf_counter(), [])
        routed.routes[request_id] = on_update
        routed.engine.submit(request_id, list(prompt_ids), params)
    for _ in range(concurrency):
        if not done.acquire(timeout=REQUEST_TIMEOUT_S):
            raise TimeoutError("the engine did not finish the requests in time")
    return summarize("engine", [s for s in streams.values()])


# ---- endpoint: lmi serve over HTTP --------------------------------------------------------------------------------


@contextmanager
def serve(model_dir: Path, batch: int, threads: int, djl_version: str, model_root: Path = MODEL_ROOT) -> Iterator[int]:
    """`lmi serve` with `model_root`'s model.py on a free port; yields the port once /ping answers 200."""
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        project = Path(tmp)
        (project / "serving.properties").write_text(PROPERTIES.format(batch=batch))
        (project / "model").symlink_to(model_root, target_is_directory=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        args = ["--project-dir", str(project), "--model-id", str(model_dir), "--djl-version", djl_version]
        with running_endpoint(args, env, ready_timeout=START_TIMEOUT_S) as endpoint:
            yield endpoint.port


def stream_request(port: int, prompt: str, max_new_tokens: int) -> Stream:
    """POST /invocations and record each chunk's arrival with the number of token lines it completes."""
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    sent = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"/invocations answered {response.status}: {response.read()[:200]!r}")
    chunks, pending = [], b""
    while data := response.read1(65536):
        arrived = time.perf_counter()
        *lines, pending = (pending + data).split(b"\n")
        tokens = sum(1 for line in lines if line.strip() and _is_token_line(line))
        if tokens:
            chunks.append((arrived, tokens))
    conn.close()
    return Stream(sent, chunks)


def _is_token_line(line: bytes) -> bool:
    """A jsonlines line that carries a token: newest LMI `{"token": {...}}`, LMI 0.23 `{"outputs": [...]}`."""
    record = json.loads(line)
    return record.get("token") is not None or "outputs" in record


def measure_endpoint(port: int, prompt: str, concurrency: int, max_new_tokens: int) -> Row:
    with ThreadPoolExecutor(concurrency) as pool:
        streams = list(pool.map(lambda _: stream_request(port, prompt, max_new_tokens), range(concurrency)))
    return summarize("endpoint", streams)


# ---- the run ------------------------------------------------------------------------------------------------------


def model_dir_for(name: str) -> Path:
    from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model

    return ensure_tiny_model() if name == "tiny" else ensure_smollm2()


def best(measure: Callable[[], Row], repeats: int) -> Row:
    """One warm-up, then the fastest of `repeats` runs (the least disturbed by other load)."""
    measure()
    return max((measure() for _ in range(repeats)), key=lambda row: row.tok_s)


def measure_reference(
    model_dir: Path,
    concurrencies: Sequence[int],
    max_new_tokens: int,
    repeats: int,
    paths: Sequence[str],
    rows: list[Row],
) -> list[int]:
    """Append the `generate` rows (single stream and every batch size); return the prompt's token ids."""
    tokenizer, model = load_reference(model_dir)
    prompt_ids = list(tokenizer.encode(PROMPT))
    if "generate" in paths:
        for batch in sorted({1, *concurrencies}):
            rows.append(best(partial(measure_generate, model, prompt_ids, batch, max_new_tokens), repeats))
    return prompt_ids


T = TypeVar("T")


def in_thread(work: Callable[[], T]) -> T:
    """`work()` run in a new thread that ends with it (its result, or its exception raised here)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def run_benchmark(
    model_dir: Path,
    concurrencies: Sequence[int],
    max_new_tokens: int,
    threads: int = 1,
    repeats: int = 1,
    djl_version: str = "newest",
    paths: Sequence[str] = ("generate", "engine", "endpoint"),
    model_root: Path = MODEL_ROOT,
) -> dict[str, Any]:
    """Measure every path at every concurrency; the report holds the rows and the tokens/s ratios."""
    import torch

    torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "loadavg": _loadavg(),
        "model": str(model_dir),
        "handler": str(model_root),
        "threads": threads,
        "max_new_tokens": max_new_tokens,
        "rows": [],
    }
    rows: list[Row] = []
    # in a thread that ends with it: a live thread that ran torch ops keeps an OpenMP pool that slows the
    # engine's generation thread (see lmistream.engines.loading.in_setup_thread)
    prompt_ids = in_thread(lambda: measure_reference(model_dir, concurrencies, max_new_tokens, repeats, paths, rows))
    report["prompt_tokens"] = len(prompt_ids)
    batch = max(concurrencies)
    if "engine" in paths:
        routed = start_engine(model_dir, batch, model_root)
        try:
            for c in concurrencies:
                rows.append(best(partial(measure_engine, routed, prompt_ids, c, max_new_tokens), repeats))
        finally:
            routed.engine.stop()
    if "endpoint" in paths:
        with serve(model_dir, batch, threads, djl_version, model_root) as port:
            for c in concurrencies:
                rows.append(best(partial(measure_endpoint, port, PROMPT, c, max_new_tokens), repeats))
    report["rows"] = [asdict(row) for row in rows]
    report["ratios"] = ratios(rows)
    return report


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per concurrency: engine and endpoint tokens/s over `generate` with a static batch of that size."""
    reference = {row.concurrency: row.tok_s for row in rows if row.path == "generate"}
    by_path = {(row.path, row.concurrency): row.tok_s for row in rows}
    out = []
    for c in sorted({row.concurrency for row in rows if row.path != "generate"}):
        entry: dict[str, Any] = {"concurrency": c}
        for path in ("engine", "endpoint"):
            if (path, c) in by_path and reference.get(c):
                entry[f"{path}/generate"] = by_path[(path, c)] / reference[c]
        if by_path.get(("engine", c)) and ("endpoint", c) in by_path:
            entry["endpoint/engine"] = by_path[("endpoint", c)] / by_path[("engine", c)]
        out.append(entry)
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"loadavg at start: {report['loadavg']}",
        f"model: {report['model']}  handler: {report['handler']}",
        f"threads: {report['threads']}  prompt: {report['prompt_tokens']} tokens  max_new_tokens: {report['max_new_tokens']}",
        "",
        f"{'path':9} {'c':>3} {'tokens':>7} {'tok/s':>8} {'TTFT p50':>9} {'ITL p50':>8} {'ITL p99':>8}  (ms)",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['path']:9} {row['concurrency']:>3} {row['tokens']:>7} {row['tok_s']:>8.1f} "
            f"{row['ttft_p50_ms']:>9.1f} {row['itl_p50_ms']:>8.1f} {row['itl_p99_ms']:>8.1f}"
        )
    lines += ["", "tokens/s ratios (generate = static batch of the same size):"]
    for entry in report["ratios"]:
        parts = [f"{key} {value:.2f}" for key, value in entry.items() if key != "concurrency"]
        lines.append(f"  c={entry['concurrency']:<3} " + "  ".join(parts))
    return "\n".join(lines)


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated (default 1,4,8)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every path (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="measured runs after a warm-up; the best is kept")
    parser.add_argument(
        "--djl-version",
        choices=["0.23", "newest"],
        default="newest",
        help="replayed DJL protocol (newest streams one line per token, so counts are exact)",
    )
    parser.add_argument("--paths", default="generate,engine,endpoint", help="which paths to run")
    parser.add_argument(
        "--model-root",
        type=Path,
        default=MODEL_ROOT,
        help="directory with model.py and lmistream (default: the repo's model/)",
    )
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    report = run_benchmark(
        model_dir_for(args.model),
        concurrencies,
        args.max_new_tokens,
        args.threads,
        args.repeats,
        args.djl_version,
        args.paths.split(","),
        args.model_root.resolve(),
    )
    print(format_report(report))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
