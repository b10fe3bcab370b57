"""`lmi serve` (or another HTTP server) as a child process on a free loopback port, for the demo, the benchmarks and
the tests.

`running_endpoint` starts `lmi serve`, `running_server` any command given the port; both wait (bounded) until a GET
of the ready path (/ping) answers 200 while recording what it answered, and on exit stop it with SIGTERM (SIGKILL
after 30 s).
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass
class RunningEndpoint:
    port: int
    process: subprocess.Popen[bytes]
    ping_statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, path: str = "/ping") -> int | None:
    """The status of GET `path` on 127.0.0.1:port, or None while nothing answers."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None


@contextmanager
def running_endpoint(
    serve_args: Sequence[str],
    env: Mapping[str, str] | None = None,
    output: IO[Any] | int = subprocess.DEVNULL,
    ready_timeout: float = 300.0,
) -> Iterator[RunningEndpoint]:
    """`lmi serve --port <free> *serve_args`, ready; RuntimeError if it exits or times out first."""
    command = lambda port: [sys.executable, "-m", "lmikit", "serve", "--port", str(port), *serve_args]
    with running_server(command, env, output, ready_timeout) as endpoint:
        yield endpoint


@contextmanager
def running_server(
    command: Callable[[int], Sequence[str]],
    env: Mapping[str, str] | None = None,
    output: IO[Any] | int = subprocess.DEVNULL,
    ready_timeout: float = 300.0,
    ready_path: str = "/ping",
) -> Iterator[RunningEndpoint]:
    """`command(port)` on a free port, ready once GET `ready_path` answers 200; stopped on exit."""
    port = free_port()
    process = subprocess.Popen(list(command(port)), env=env, stdout=output, stderr=subprocess.STDOUT)
    endpoint = RunningEndpoint(port, process)
    try:
        _wait_ready(endpoint, ready_timeout, ready_path)
        yield endpoint
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(endpoint: RunningEndpoint, timeout: float, path: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if endpoint.process.poll() is not None:
            raise RuntimeError(f"the server exited ({endpoint.process.returncode}) before it was ready")
        status = ping(endpoint.port, path)
        if status is not None:
            endpoint.ping_statuses.append(status)
        if status == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")
