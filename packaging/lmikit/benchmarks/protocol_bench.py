"""`lmi serve` configurations side by side over HTTP: tokens/s, TTFT and the server's CPU per token, alternated.

Every system is a `lmi serve` of the same model (`PROTOCOL-ENGINE`, e.g. `newest-portable`, `0.23-continuous`),
optionally from another checkout (`DIR:newest-portable`, DIR holding `packaging/` and `model/`, to compare two
commits). All are started first; then each repeat runs one closed-loop level on each in turn, so machine drift
hits them alike, and the ratios of every system to the first are printed repeat by repeat. The server's CPU per
token (its process's user + system time from /proc over the tokens it streamed) does not depend on what else
runs on the machine the way wall-clock figures do: on a shared box, compare that.

    python -m lmikit.benchmarks.protocol_bench --systems 0.23-portable,newest-portable -c 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..embedded_model import ensure_smollm2, ensure_tiny_model
from ..launch import RunningEndpoint, running_endpoint
from .compare import thread_env
from .targets import closed_loop, container_target

PROJECT = Path(__file__).resolve().parents[3]  # the checkout this module runs from


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_args(system: str, model: Path, max_batch: int) -> tuple[list[str], Path]:
    """`lmi serve` arguments of one system (`[DIR:]PROTOCOL-ENGINE`) and the checkout it runs from."""
    tree, _, rest = system.rpartition(":")
    protocol, engine = rest.split("-", 1)
    root = Path(tree).resolve() if tree else PROJECT
    args = ["--project-dir", str(root), "--model-id", str(model), "--djl-version", protocol]
    for option in (f"generation_engine={engine}", f"max_rolling_batch_size={max_batch}", "dtype=fp32"):
        args += ["--option", option]
    return args, root


def level(endpoint: RunningEndpoint, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    before, start = process_cpu_seconds(endpoint.process.pid), time.perf_counter()
    records = closed_loop(container_target(endpoint.url), prompts, args.c, args.rounds, args.max_new_tokens)
    wall, used = time.perf_counter() - start, process_cpu_seconds(endpoint.process.pid) - before
    tokens = sum(len(record.token_times) for record in records)
    ttfts = sorted(record.token_times[0] - record.sent for record in records if record.token_times)
    return {
        "tok_s": round(tokens / wall, 1),
        "tokens": tokens,
        "errors": sum(1 for record in records if record.error),
        "ttft_p50_s": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
        "cpu_ms_per_token": round(1000 * used / max(tokens, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="0.23-portable,newest-portable", help="[DIR:]PROTOCOL-ENGINE,...")
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("-c", type=int, default=32, help="concurrent streams")
    parser.add_argument("--rounds", type=int, default=1, help="requests per stream per level")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    model = ensure_smollm2(log=lambda _: None) if args.model == "smollm2" else ensure_tiny_model()
    prompts = [f"Story number {index} begins:" for index in range(64)]
    systems = args.systems.split(",")
    results: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
    with ExitStack() as stack:
        servers = {}
        for system in systems:
            serve, root = serve_args(system, model, args.max_batch)
            env = {**thread_env(args.threads), "PYTHONPATH": str(root / "packaging")}
            servers[system] = stack.enter_context(running_endpoint(serve, env, ready_timeout=600))
            closed_loop(container_target(servers[system].url), prompts, 2, 1, 8)  # warm-up, not kept
        for repeat in range(args.repeats):
            for system, endpoint in servers.items():
                row = {"system": system, "repeat": repeat, **level(endpoint, prompts, args)}
                results[system].append(row)
                print(json.dumps(row), flush=True)
    base = systems[0]
    for other in systems[1:]:
        pairs = list(zip(results[other], results[base]))
        speed = [round(o["tok_s"] / b["tok_s"], 3) for o, b in pairs]
        cpu = [round(o["cpu_ms_per_token"] / b["cpu_ms_per_token"], 3) for o, b in pairs]
        print(f"{other} / {base}: tok/s {speed}; server CPU per token {cpu}")


if __name__ == "__main__":
    main()
