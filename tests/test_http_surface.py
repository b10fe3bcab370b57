"""The local endpoint's HTTP surface under malformed traffic (uvicorn + starlette): broken Content-Length values get
a 400 naming the header and the server goes on, a chunked request body is read whole, oversized bodies get 413 and oversized headers
a 4xx, an exposed bind is warned about. One `lmi serve` with the tiny model for the module."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmikit.benchmarks import http_bench
from lmikit.embedded_model import ensure_tiny_model
from lmikit.launch import RunningEndpoint
from lmikit.server.endpoint import MAX_BODY_BYTES
from local_endpoint import connection, make_project, serve

pytestmark = pytest.mark.integration

PROPERTIES = """engine=Python
option.rolling_batch=custom
option.output_formatter=jsonlines
option.max_rolling_batch_size=4
"""
GOOD = json.dumps({"inputs": "Hello, my name is", "parameters": {"max_new_tokens": 3}}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEndpoint]:
    project = make_project(tmp_path_factory.mktemp("http") / "project", PROPERTIES)
    with serve(project, "--model-id", str(ensure_tiny_model())) as endpoint:
        yield endpoint


def _raw(endpoint: RunningEndpoint, request: bytes, half_close: bool = True, timeout: float = 30.0) -> bytes:
    """Send raw bytes (then end the sending side, unless told not to); everything the server answers until it
    closes."""
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _works(endpoint: RunningEndpoint) -> bool:
    conn = connection(endpoint)
    conn.request("POST", "/invocations", GOOD, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status == 200 and b"outputs" in response.read()


@pytest.mark.parametrize("length", [b"abc", b"-1", b"0x10", b"1" * 23, b"12, 13"])
def test_a_broken_content_length_gets_400_and_the_server_goes_on(server: RunningEndpoint, length: bytes) -> None:
    answer = _raw(
        server,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + length + b"\r\n\r\n" + GOOD,
    )
    assert _status(answer) == 400, answer[:200]
    assert b"Content-Length header" in answer.partition(b"\r\n\r\n")[2], answer[:300]
    assert _works(server)


def test_a_chunked_request_body_is_read_whole(server: RunningEndpoint) -> None:
    halves = [GOOD[:10], GOOD[10:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in halves) + b"0\r\n\r\n"
    answer = _raw(
        server,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body,
        half_close=False,
    )
    assert _status(answer) == 200, answer[:300]
    assert b'"outputs"' in answer


def test_a_body_over_the_limit_gets_413_naming_it(server: RunningEndpoint) -> None:
    conn = connection(server)
    conn.request(
        "POST", "/invocations", b"", {"Content-Type": "application/json", "Content-Length": str(MAX_BODY_BYTES + 1)}
    )
    response = conn.getresponse()
    assert response.status == 413
    assert str(MAX_BODY_BYTES) in json.loads(response.read())["message"]
    assert _works(server)


def test_oversized_headers_are_refused(server: RunningEndpoint) -> None:
    """uvicorn answers 400 and closes; the close can overtake the answer (a reset), which refuses the request too."""
    try:
        answer = _raw(server, b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n")
    except ConnectionResetError:
        answer = b""
    assert answer == b"" or 400 <= _status(answer) < 500, answer[:200]
    assert b'"outputs"' not in answer
    assert _works(server)


def test_sixty_four_simultaneous_clients_are_all_served(server: RunningEndpoint) -> None:
    """http.server (listen backlog 5) reset most of such a burst."""
    result = http_bench.run(server.url, clients=64, max_new_tokens=3)
    assert result["completed"] == 64 and result["stream_errors"] == {} and result["ping_errors"] == {}, result


def test_an_exposed_bind_and_remote_code_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    project = make_project(tmp_path / "project", PROPERTIES)
    args = ("--model-id", str(ensure_tiny_model()), "--host", "0.0.0.0", "--option", "trust_remote_code=true")
    with serve(project, *args) as endpoint:
        assert _works(endpoint)
    output = capsys.readouterr().out
    assert "Warning: listening on 0.0.0.0" in output and "no authentication" in output
    assert "Warning: option.trust_remote_code=true runs Python code from the model repository" in output


def test_the_default_bind_is_loopback_and_says_nothing(server: RunningEndpoint) -> None:
    assert server.url.startswith("http://127.0.0.1:")
