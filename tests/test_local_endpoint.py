"""`lmi serve` as a subprocess with a tiny real model: health, chunked streaming, batch limits, disconnects."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import EventStreamError
from lmikit.client.runtime_client import runtime_client
from lmikit.embedded_model import ensure_tiny_model
from local_endpoint import REPO, connection, make_project, serve, stream

pytestmark = pytest.mark.integration

PROPERTIES = """engine=Python
option.rolling_batch=custom
option.output_formatter=jsonlines
option.max_rolling_batch_size={size}
job_queue_size={queue}
"""


@pytest.fixture(scope="module")
def tiny_model():
    return str(ensure_tiny_model())


def project(tmp_path, size=8, queue=1000):
    return make_project(tmp_path / "project", PROPERTIES.format(size=size, queue=queue))


def payload(max_new_tokens: int, prompt: str = "The quick brown fox") -> dict:
    return {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}


def test_ping_is_503_while_loading_then_healthy(tmp_path, tiny_model):
    with serve(project(tmp_path), "--model-id", tiny_model) as server:
        conn = connection(server)
        conn.request("GET", "/ping")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"model": {"status": "Healthy"}}
    assert server.ping_statuses[0] == 503 and server.ping_statuses[-1] == 200


def test_eight_streams_interleave_and_the_ninth_waits_for_a_slot(tmp_path, tiny_model):
    with serve(project(tmp_path, size=8), "--model-id", tiny_model) as server:
        start = time.monotonic()
        with ThreadPoolExecutor(9) as pool:
            results = list(pool.map(lambda _: stream(server, payload(200), start), range(9)))
    assert all(r.status == 200 for r in results)
    for result in results:
        assert "".join(line["outputs"][0] for line in result.lines), "each request streams text"
    firsts = sorted(r.chunks[0][0] for r in results)
    first_finish = min(r.chunks[-1][0] for r in results)
    # eight requests stream side by side: all start before any finishes, each over many chunks
    assert sum(first < first_finish for first in firsts) == 8
    assert sum(len(r.chunks) > 5 for r in results) >= 8
    # the ninth starts only once a slot is free
    assert firsts[-1] >= first_finish


def test_queue_overflow_answers_503(tmp_path, tiny_model):
    with serve(project(tmp_path, size=1, queue=1), "--model-id", tiny_model) as server:
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            holding = threading.Event()
            long = pool.submit(stream, server, payload(1000), start, holding)
            assert holding.wait(60)  # the long request streams: it holds the only slot for seconds
            extra = [pool.submit(stream, server, payload(3), start) for _ in range(3)]
            results = [future.result() for future in extra]
            assert long.result().status == 200
    statuses = sorted(r.status for r in results)
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    assert all(b"WlmCapacityException" in r.body for r in results if r.status == 503)


def test_disconnected_client_frees_its_slot(tmp_path, tiny_model):
    with serve(project(tmp_path, size=1), "--model-id", tiny_model) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        body = json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 1900, "ignore_eos": True}}).encode()
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()
        start = time.monotonic()
        result = stream(server, payload(5), start)
        waited = time.monotonic() - start
    assert result.status == 200 and result.lines
    # generating 1900 tokens would hold the only slot for many seconds; the freed slot serves at once
    assert waited < 3, f"the abandoned request kept its slot for {waited:.1f} s"


def test_unmodified_boto3_streams_from_the_local_endpoint(tmp_path, tiny_model):
    with serve(project(tmp_path), "--model-id", tiny_model, "--endpoint-name", "my-endpoint") as server:
        client = runtime_client(server.url)
        response = client.invoke_endpoint_with_response_stream(
            EndpointName="my-endpoint", ContentType="application/json", Body=json.dumps(payload(30)).encode()
        )
        assert response["ContentType"] == "application/jsonlines"
        parts = [event["PayloadPart"]["Bytes"] for event in response["Body"]]
        with pytest.raises(client.exceptions.ModelError) as bad:
            client.invoke_endpoint_with_response_stream(
                EndpointName="my-endpoint", Body=json.dumps({"inputs": "x", "parameters": {"top_k": -1}})
            )
        with pytest.raises(client.exceptions.ValidationError):
            client.invoke_endpoint_with_response_stream(EndpointName="other", Body=b"{}")
    lines = b"".join(parts).decode().splitlines()
    assert 10 <= len(lines) <= 30 and all(json.loads(line)["outputs"] for line in lines)
    assert len(parts) >= 3, "parts arrive as tokens are made, not as one buffered body"
    assert bad.value.response["OriginalStatusCode"] == 400
    assert "parameters.top_k" in bad.value.response["OriginalMessage"]


def test_stream_time_limit_ends_the_stream_with_model_stream_error(tmp_path, tiny_model):
    with serve(project(tmp_path), "--model-id", tiny_model, "--stream-time-limit", "1.5") as server:
        client = runtime_client(server.url)
        response = client.invoke_endpoint_with_response_stream(
            EndpointName="local",
            Body=json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 1900, "ignore_eos": True}}).encode(),
        )
        parts = []
        with pytest.raises(EventStreamError) as error:
            for event in response["Body"]:
                parts.append(event["PayloadPart"]["Bytes"])
    assert parts, "tokens streamed before the limit"
    assert error.value.response["Error"]["Code"] == "ModelStreamError"
    assert "allotted time" in error.value.response["Error"]["Message"]


SLOW_HANDLER = """import time

from djl_python import Output


def handle(inputs):
    if inputs.is_empty():
        return None
    time.sleep(2.5)
    return Output().add("late")
"""


@pytest.mark.parametrize(("version", "status"), [("newest", 500), ("0.23", 200)])
def test_chunked_read_timeout_bounds_the_wait_for_a_response_in_each_versions_unit(
    tmp_path, tiny_model, version, status
):
    """chunked_read_timeout=1 is one second on newest (the late answer is a 500 naming the wait) and one minute on
    0.23 (it is answered)."""
    root = tmp_path / "project"
    (root / "model").mkdir(parents=True)
    (root / "serving.properties").write_text("engine=Python\nchunked_read_timeout=1\n")
    (root / "model" / "model.py").write_text(SLOW_HANDLER)
    (root / "model" / "lmistream").symlink_to(REPO / "model" / "lmistream", target_is_directory=True)
    with serve(root, "--model-id", tiny_model, "--djl-version", version) as server:
        conn = connection(server)
        conn.request("POST", "/invocations", json.dumps({"inputs": "x"}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    assert response.status == status, body
    assert (b"response head not decided within 1.0 s" in body) == (status == 500)
