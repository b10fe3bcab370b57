"""Start `lmi serve` as a real subprocess on a free port, for HTTP and boto3 tests."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lmikit.server.probe import free_port, ping

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0


def make_project(root: Path, properties: str) -> Path:
    """A project dir with these serving.properties and the repo's model/ beside them."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "serving.properties").write_text(properties)
    (root / "model").symlink_to(REPO / "model", target_is_directory=True)
    return root


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    ping_statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@contextmanager
def serve(project: Path, *args: str) -> Iterator[Server]:
    """`lmi serve` on a free port; waits (bounded) until /ping answers 200, recording what it answered."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lmikit", "serve", "--project-dir", str(project), "--port", str(port), *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server(port, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            status = ping(port)
            if status is not None:
                server.ping_statuses.append(status)
            if status == 200:
                break
            time.sleep(0.05)
        if 200 not in server.ping_statuses:
            raise RuntimeError(f"lmi serve did not become ready: {process.poll()=}")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(output)


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


def stream(server: Server, payload: dict, start: float) -> Streamed:
    """POST /invocations and record each chunk with its arrival time (seconds since `start`)."""
    conn = server.connection()
    conn.request("POST", "/invocations", json.dumps(payload), {"Content-Type": "application/json"})
    response = conn.getresponse()
    chunks = []
    while True:
        data = response.read1(65536)
        if not data:
            break
        chunks.append((time.monotonic() - start, data))
    conn.close()
    return Streamed(response.status, chunks)
