"""`lmi serve` as a child process on a free loopback port, for the demo, the benchmarks and the tests.

`running_endpoint` starts it, waits (bounded) until /ping answers 200 while recording what /ping answered,
and on exit stops it with SIGTERM (SIGKILL after 30 s).
"""
from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Iterator, Mapping, Sequence


@dataclass
class RunningEndpoint:
    port: int
    process: subprocess.Popen
    ping_statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int) -> int | None:
    """The status of GET /ping on 127.0.0.1:port, or None while nothing answers."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ping")
        return conn.getresponse().status
    except OSError:
        return None


@contextmanager
def running_endpoint(serve_args: Sequence[str], env: Mapping[str, str] | None = None,
                     output: IO | int = subprocess.DEVNULL, ready_timeout: float = 300.0) -> Iterator[RunningEndpoint]:
    """`lmi serve --port <free> *serve_args`, ready; RuntimeError if it exits or times out first."""
    port = free_port()
    command = [sys.executable, "-m", "lmikit", "serve", "--port", str(port), *serve_args]
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    endpoint = RunningEndpoint(port, process)
    try:
        _wait_ready(endpoint, ready_timeout)
        yield endpoint
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(endpoint: RunningEndpoint, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if endpoint.process.poll() is not None:
            raise RuntimeError(f"lmi serve exited ({endpoint.process.returncode}) before it was ready")
        status = ping(endpoint.port)
        if status is not None:
            endpoint.ping_statuses.append(status)
        if status == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"lmi serve was not ready after {timeout:.0f} s")
