"""`lmi serve` as a real subprocess for HTTP and boto3 tests, and a client that timestamps chunks."""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmikit.launch import RunningEndpoint, running_endpoint

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0


def make_project(root: Path, properties: str) -> Path:
    """A project dir with these serving.properties and the repo's model/ beside them."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "serving.properties").write_text(properties)
    (root / "model").symlink_to(REPO / "model", target_is_directory=True)
    return root


@contextmanager
def serve(project: Path, *args: str) -> Iterator[RunningEndpoint]:
    """`lmi serve` on a free port, ready; its output is printed when it stops (pytest shows it on failure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as output:
        try:
            with running_endpoint(["--project-dir", str(project), *args], env, output, START_TIMEOUT) as endpoint:
                yield endpoint
        finally:
            output.seek(0)
            print(output.read())


def connection(endpoint: RunningEndpoint, timeout: float = 60.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=timeout)


@dataclass
class Streamed:
    status: int
    chunks: list[tuple[float, bytes]]

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.body.decode().splitlines()]


def stream(
    endpoint: RunningEndpoint, payload: dict, start: float, first_chunk: threading.Event | None = None
) -> Streamed:
    """POST /invocations and record each chunk with its arrival time (seconds since `start`); `first_chunk` is set
    once the first chunk arrived (or the response ended without one)."""
    conn = connection(endpoint)
    conn.request("POST", "/invocations", json.dumps(payload), {"Content-Type": "application/json"})
    response = conn.getresponse()
    chunks = []
    while True:
        data = response.read1(65536)
        if first_chunk is not None:
            first_chunk.set()
        if not data:
            break
        chunks.append((time.monotonic() - start, data))
    conn.close()
    return Streamed(response.status, chunks)
