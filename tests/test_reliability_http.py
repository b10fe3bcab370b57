"""Reliability through `lmi serve` (a subprocess, the tiny trained model, the portable engine, DJL 0.23 rolling batch
of 32): hostile and careless requests, a load of 1,000 requests at concurrency 128, a client that reads one byte at a
time, and what the logs keep. A streaming canary runs while the bad requests arrive and must come out exact."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmikit.embedded_model import ensure_tiny_model
from lmikit.launch import RunningEndpoint, running_endpoint
from lmistream.params import NEUTRAL_TGI_PARAMETERS, PARAMETERS
from local_endpoint import START_TIMEOUT, make_project
from reference import ReferenceModel
from reliability_figures import record

pytestmark = pytest.mark.integration

PROPERTIES = """engine=Python
option.rolling_batch=custom
option.output_formatter=jsonlines
option.max_rolling_batch_size=32
option.dtype=fp32
"""
CASES_PER_ROUTE = 5000
PROMPTS = [
    "Hello, my name is",
    "The quick brown fox",
    "1, 2, 3,",
    "Once upon a time, there was a little",
    "Why?",
    "def fibonacci(n):",
    "Roses are",
    "Monday, Tuesday,",
]
NEW_TOKENS = 8
CANARY = ("Hello, my name is", 14)
LOAD_REQUESTS, LOAD_CONCURRENCY, LOAD_ROUNDS = 1000, 128, 3
SECRET_BODY, SECRET_KEY = "zebra-canary-7731 prompt text", "AKIAQZ7SECRETKEY0042"


@dataclass
class Server:
    endpoint: RunningEndpoint
    log: Path
    reference: ReferenceModel

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.endpoint.port, timeout=timeout)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.endpoint.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("reliability")
    project = make_project(root / "project", PROPERTIES)
    model = ensure_tiny_model()
    log = root / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as output:
        args = ["--project-dir", str(project), "--model-id", str(model)]
        with running_endpoint(args, env, output, START_TIMEOUT) as endpoint:
            yield Server(endpoint, log, ReferenceModel(model))
    assert endpoint.process.returncode in (0, -15), "lmi serve crashed"


def _text(body: bytes) -> str:
    return "".join(json.loads(line)["outputs"][0] for line in body.decode().splitlines())


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    return response.status, response.read()


# -- 1. bad input ------------------------------------------------------------------------------------------------
def _body(payload: object) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
CONTENT_TYPES = st.sampled_from(["application/json", "application/xml", "", "application/octet-stream"])


def _case(kind_and_value: tuple) -> tuple[bytes, str]:
    """(body, a fragment the error must contain) for one generated bad request."""
    kind, value = kind_and_value
    if kind == "not json":
        return value, "not valid JSON"
    if kind == "empty":
        return value, "must be a JSON object"
    if kind == "nested":
        return b'{"inputs": "x", "parameters": ' + b"[" * value + b"]" * value + b"}", "nests too deeply"
    if kind == "not an object":
        return _body(value), "must be a JSON object"
    if kind == "inputs":
        return _body({"inputs": value}), "inputs"
    if kind == "surrogate":
        return b'{"inputs": "ab\\ud' + value.encode() + b'"}', "lone surrogate"
    if kind == "too long":
        return _body({"inputs": "word " * value}), "the model holds"
    if kind == "unknown":
        return _body({"inputs": "x", "parameters": {value: 1}}), "unknown parameter"
    field, bad = value
    if field == "stream":
        return _body({"inputs": "x", "stream": bad}), "stream"
    if field == "parameters":
        return _body({"inputs": "x", "parameters": bad}), "parameters must be a JSON object"
    return _body({"inputs": "x", "parameters": {field: bad}}), f"parameters.{field}"


NUMBERS = {
    "max_new_tokens": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=1_000_001),
        st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
        st.booleans(),
    ),
    "temperature": st.one_of(  # 0 is greedy (DJL newest's rule); the bound is 100
        st.just(math.nan), st.just(math.inf), st.floats(max_value=-1e-6), st.floats(min_value=100.001), st.booleans()
    ),
    "top_p": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0001), st.just(math.nan)),
    "top_k": st.one_of(
        st.integers(max_value=-1), st.floats(min_value=0.1, max_value=9.9).filter(lambda f: not f.is_integer())
    ),
    "repetition_penalty": st.one_of(st.floats(max_value=0.0), st.floats(min_value=100.001)),
    "seed": st.one_of(st.integers(max_value=-1), st.text(min_size=1, max_size=3)),
}
TYPED = {
    "do_sample": WRONG.filter(lambda v: not isinstance(v, bool) and v is not None),
    "details": WRONG.filter(lambda v: not isinstance(v, bool) and v is not None),
    "return_full_text": WRONG.filter(lambda v: not isinstance(v, bool) and v is not None),
    "stop_sequences": st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2), st.just([""])),
    "stream": WRONG.filter(lambda v: not isinstance(v, bool) and v is not None),
    "parameters": st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=4), st.integers(), st.booleans()),
}
BAD_REQUESTS = st.one_of(
    st.tuples(st.just("not json"), st.binary(min_size=1, max_size=40).filter(lambda b: not _parses(b))),
    st.tuples(st.just("empty"), st.just(b"")),
    st.tuples(st.just("nested"), st.integers(min_value=2000, max_value=20000)),
    st.tuples(
        st.just("not an object"), st.one_of(st.integers(), st.text(max_size=5), st.lists(st.none()), st.booleans())
    ),
    st.tuples(
        st.just("inputs"),
        st.one_of(
            st.just(""),
            st.integers(),
            st.lists(st.one_of(st.just(""), st.integers(), st.none()), min_size=2, max_size=3),  # no valid prompt
            st.none(),
            st.booleans(),
        ),
    ),
    st.tuples(st.just("surrogate"), st.sampled_from(["800", "bff", "c00", "fff"])),
    st.tuples(st.just("too long"), st.integers(min_value=2100, max_value=4000)),
    st.tuples(
        st.just("unknown"),
        st.text(min_size=1, max_size=8).filter(lambda k: k not in PARAMETERS and k not in NEUTRAL_TGI_PARAMETERS),
    ),
    st.tuples(st.just("field"), st.one_of(*[st.tuples(st.just(k), v) for k, v in {**NUMBERS, **TYPED}.items()])),
)


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True


@final
class Canary:
    """Streams the same greedy request again and again while other tests hammer the server; every run must be
    exact."""

    def __init__(self, server: Server) -> None:
        self.server, self.expected = server, server.reference(*CANARY).text
        self.runs, self.failures = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        body = _body({"inputs": CANARY[0], "parameters": {"max_new_tokens": CANARY[1]}})
        while not self._stop.is_set():
            try:
                status, answer = _post(
                    self.server.connection(), "/invocations", body, {"Content-Type": "application/json"}
                )
                if status != 200 or _text(answer) != self.expected:
                    self.failures.append((status, answer[:200]))
            except Exception as error:
                self.failures.append(repr(error))
            self.runs += 1


ROUTES = {"container": "/invocations", "runtime": "/endpoints/local/invocations-response-stream"}


def test_bad_input_gets_a_4xx_naming_the_field_while_a_canary_streams_exactly(server: Server) -> None:
    tally = {"cases": 0, "5xx": 0, "dropped": 0}

    def run_cases(route: str) -> None:
        connection = [server.connection()]

        @settings(
            max_examples=CASES_PER_ROUTE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=BAD_REQUESTS, content_type=CONTENT_TYPES)
        def check(case: tuple, content_type: str) -> None:
            body, fragment = _case(case)
            headers = {"Content-Type": content_type} if content_type else {}
            try:
                status, answer = _post(connection[0], ROUTES[route], body, headers)
            except (OSError, http.client.HTTPException):
                tally["dropped"] += 1
                connection[0] = server.connection()
                raise
            tally["cases"] += 1
            tally["5xx"] += status >= 500
            assert 400 <= status < 500, (case, status, answer[:300])
            error = json.loads(answer)
            if route == "runtime":
                assert error["OriginalStatusCode"] == 400, error
                message = error["OriginalMessage"]
            else:
                message = error.get("error", error.get("message"))
            assert fragment in str(message), (case, message)

        check()

    with Canary(server) as canary:
        for route in sorted(ROUTES):
            run_cases(route)
    assert canary.failures == [] and canary.runs > 0
    assert tally["5xx"] == tally["dropped"] == 0
    assert tally["cases"] >= 2 * CASES_PER_ROUTE
    assert _ping(server) == 200
    record(
        "fuzz",
        f"{tally['cases']:,} generated bad requests (hypothesis, {CASES_PER_ROUTE:,} through each of the "
        "container and the SageMaker runtime route) each got a 4xx whose JSON error names the field; 0 "
        f"answers 5xx, 0 dropped connections, 0 worker crashes; a streaming canary ran {canary.runs} "
        "times meanwhile, exact every time",
    )


def _ping(server: Server) -> int:
    conn = server.connection()
    conn.request("GET", "/ping")
    status = conn.getresponse().status
    conn.close()
    return status


# -- 2. load -------------------------------------------------------------------------------------------------------
def _one(server: Server, index: int) -> tuple[str, int, bytes]:
    prompt = PROMPTS[index % len(PROMPTS)]
    body = _body({"inputs": prompt, "parameters": {"max_new_tokens": NEW_TOKENS}})
    conn = server.connection(timeout=300)
    try:
        status, answer = _post(conn, "/invocations", body, {"Content-Type": "application/json"})
    finally:
        conn.close()
    return prompt, status, answer


def test_a_thousand_requests_at_concurrency_128_all_complete_exactly_and_memory_stays_flat(server: Server) -> None:
    expected = {prompt: server.reference(prompt, NEW_TOKENS).text for prompt in PROMPTS}
    rss, refused = [], 0
    for _ in range(LOAD_ROUNDS):
        with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
            results = list(pool.map(lambda i: _one(server, i), range(LOAD_REQUESTS)))
        for prompt, status, answer in results:
            if status in (400, 503):  # a clean refusal (queue full, slot wait timed out) with a JSON body
                json.loads(answer)
                refused += 1
                continue
            assert status == 200, (status, answer[:200])
            assert _text(answer) == expected[prompt], prompt
        rss.append(server.rss_kib())
    growth = (rss[-1] - rss[0]) / rss[0]
    assert growth < 0.05, f"RSS grew {growth:.1%} over the rounds: {rss} KiB"
    assert _all_slots_free(server), "a slot stayed taken after the load"
    served = LOAD_ROUNDS * LOAD_REQUESTS - refused
    record(
        "load",
        f"{LOAD_ROUNDS} rounds of {LOAD_REQUESTS:,} requests at concurrency {LOAD_CONCURRENCY} with "
        f"max_rolling_batch_size=32: {served:,} complete and exact, {refused} refused cleanly, none "
        f"truncated or lost; every slot free afterwards; RSS {rss[0] // 1024}-{rss[-1] // 1024} MiB "
        f"({growth:+.1%} from the first round to the last)",
    )


def _all_slots_free(server: Server) -> bool:
    """32 long streams at once all start before any ends: all 32 slots are free."""
    body = _body({"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 400, "ignore_eos": True}})
    responses = []
    for _ in range(32):
        conn = server.connection()
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        responses.append(conn)
    firsts = [conn.getresponse() for conn in responses]
    started = [response.read1(64) for response in firsts]
    for response in firsts:
        response.read()
    return all(started)


# -- 5. a slow client ----------------------------------------------------------------------------------------------
def test_a_client_reading_one_byte_at_a_time_does_not_hold_up_the_others(server: Server) -> None:
    body = _body({"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 300, "ignore_eos": True}})
    slow = socket.create_connection(("127.0.0.1", server.endpoint.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    slow.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    read = slow.recv(1)
    expected = {prompt: server.reference(prompt, NEW_TOKENS).text for prompt in PROMPTS}
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda i: _one(server, i), range(2 * len(PROMPTS))))
    for _ in range(50):  # still reading, one byte at a time
        read += slow.recv(1)
    slow.close()
    assert read.startswith(b"HTTP/1.1 200")
    for prompt, status, answer in results:
        assert status == 200 and _text(answer) == expected[prompt], prompt
    record(
        "slow client",
        f"a client reading one byte at a time held its stream open while {len(results)} other "
        "streams completed exactly; its pending output is bounded by its own max_new_tokens",
    )


# -- 6. logs -------------------------------------------------------------------------------------------------------
def test_logs_carry_neither_credentials_nor_request_bodies(server: Server) -> None:
    body = _body({"inputs": SECRET_BODY, "parameters": {"max_new_tokens": 3}})
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={SECRET_KEY}/x",
        "X-Amz-Security-Token": SECRET_KEY,
    }
    for path in ROUTES.values():
        status, _ = _post(server.connection(), path, body, headers)
        assert status == 200
        bad = _body({"inputs": SECRET_BODY, "parameters": {"top_k": -1}})
        status, _ = _post(server.connection(), path, bad, headers)
        assert status in (400, 424)
    log = server.log.read_text()
    assert SECRET_KEY not in log and "zebra-canary-7731" not in log
    record(
        "logs",
        f"after requests carrying a credential and a marked prompt through both routes, the server log "
        f"({len(log.splitlines())} lines) holds neither",
    )
