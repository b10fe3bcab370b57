"""`python -m lmikit.benchmarks.http_bench --url URL`: many simultaneous clients against one local endpoint.

`--clients` streams are opened at the same instant (each a fresh connection, as a burst of users would), while one
more client probes `/ping` every 50 ms. It prints how many streams completed, the connection errors by kind, and
/ping latency p50 / max during the burst. Point it at any `lmi serve`, e.g. one started from an older checkout, to
compare HTTP servers side by side; this is how uvicorn + starlette replaced the standard library's `http.server`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

PROMPT = "The quick brown fox"


def one_stream(host: str, port: int, max_new_tokens: int, start: threading.Barrier) -> str:
    """'ok', or the name of the error that ended the stream."""
    body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens}})
    start.wait()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return "ok" if response.status == 200 and data else f"HTTP {response.status}"
    except Exception as error:  # counted by kind
        return type(error).__name__


def probe_ping(host: str, port: int, stop: threading.Event, latencies: list[float], errors: Counter[str]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", "/ping")
            conn.getresponse().read()
            conn.close()
            latencies.append(time.perf_counter() - started)
        except Exception as error:
            errors[f"/ping {type(error).__name__}"] += 1
        stop.wait(0.05)


def run(url: str, clients: int, max_new_tokens: int) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    start, stop = threading.Barrier(clients), threading.Event()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    prober = threading.Thread(target=probe_ping, args=(host, port, stop, latencies, errors), daemon=True)
    prober.start()
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = Counter(pool.map(lambda _: one_stream(host, port, max_new_tokens, start), range(clients)))
    elapsed = time.perf_counter() - began
    stop.set()
    prober.join()
    ordered = sorted(latencies) or [float("nan")]
    return {
        "clients": clients,
        "completed": outcomes.pop("ok", 0),
        "stream_errors": dict(outcomes),
        "ping_errors": dict(errors),
        "ping_p50_ms": 1000 * ordered[len(ordered) // 2],
        "ping_max_ms": 1000 * ordered[-1],
        "seconds": elapsed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.url, args.clients, args.max_new_tokens)))


if __name__ == "__main__":
    main()
