"""Reliability with the frontend, the HTTP server and the real portable engine in this process, so that engine steps
can be counted and faults injected into them: clients that drop mid-stream stop costing the engine within 2 steps and
their slots serve others; a failing step ends the streams it ran with an in-band error in each format (a broken
stream through the SageMaker runtime route), answers a non-streaming request with DJL's 424 (507 when out of memory),
and the server serves the next request."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any

import lmikit.djl.response as response_module
import pytest
import torch
from inprocess_endpoint import port_of, post, served, wait_until
from lmikit.embedded_model import ensure_tiny_model
from lmikit.server.endpoint import LocalEndpoint
from reference import ReferenceModel
from reliability_figures import record

pytestmark = pytest.mark.integration

DROPS, KEPT = 20, 4
PROMPTS = ["Hello, my name is", "The quick brown fox", "Why?", "Roses are"]
LONG = {"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 1500, "ignore_eos": True}}


def _text(body: bytes) -> str:
    return "".join(json.loads(line)["outputs"][0] for line in body.decode().splitlines())


@pytest.fixture(scope="module")
def reference() -> ReferenceModel:
    return ReferenceModel(ensure_tiny_model())


def test_dropped_clients_stop_costing_the_engine_within_two_steps(
    reference: ReferenceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled_at: dict[str, int] = {}
    with served() as (endpoint, tools):
        original_cancel = response_module.Response.cancel

        def cancel(response: Any) -> None:
            cancelled_at.setdefault(response.request_id, tools.steps)
            original_cancel(response)

        monkeypatch.setattr(response_module.Response, "cancel", cancel)
        dropped = []
        for index in range(DROPS):
            sock = socket.create_connection(("127.0.0.1", port_of(endpoint)))
            body = json.dumps(
                {"inputs": f"Story {index}: 1, 2, 3,", "parameters": {"max_new_tokens": 1500, "ignore_eos": True}}
            )
            sock.sendall(
                f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            dropped.append(sock)
        kept = [post(endpoint, {"inputs": p, "parameters": {"max_new_tokens": 14}}) for p in PROMPTS]
        for sock in dropped:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()  # a reset, as a client that vanished
        kept_texts = [_text(response.read()) for response in kept]
        reused = [post(endpoint, {"inputs": p, "parameters": {"max_new_tokens": 8}}) for p in PROMPTS * 5]
        reused_texts = [(response.status, _text(response.read())) for response in reused]
        engine = tools.engine
        assert wait_until(engine.idle), "every slot is free again"
    engine_ids = {prompt: rid for rid, prompt in tools.prompts.items() if prompt.startswith("Story ")}
    cancel_steps = {
        tools.response_prompts[rid]: step
        for rid, step in cancelled_at.items()
        if tools.response_prompts.get(rid, "").startswith("Story ")
    }
    assert len(engine_ids) == len(cancel_steps) == DROPS
    per_request = [tools.last_update[engine_ids[prompt]] - step for prompt, step in cancel_steps.items()]
    assert max(per_request) <= 2, per_request
    assert kept_texts == [reference(p, 14).text for p in PROMPTS]
    assert reused_texts == [(200, reference(p, 8).text) for p in PROMPTS * 5]
    record(
        "disconnects",
        f"{DROPS} clients dropped mid-stream: the engine ran at most {max(per_request)} more step(s) "
        f"for each, {len(reused_texts)} later requests reused their slots, and the {KEPT} streams "
        "beside them came out exact",
    )


def _first_line(response: http.client.HTTPResponse) -> bytes:
    return response.fp.readline() if not response.chunked else response.read1(65536)


FORMATS = {
    "jsonlines": (
        lambda tail: json.loads(tail.splitlines()[-1]),
        lambda error: (error["code"], error.get("error", error.get("error_msg"))),
    ),  # 0.23 / newest
    "sse": (
        lambda tail: json.loads(tail.strip().splitlines()[-1][len("data:") :]),
        lambda error: (error["error_type"], error["error"]),
    ),  # TGI's error events carry a type, not a status
}


@pytest.mark.parametrize(
    "fault,code",
    [
        (RuntimeError("injected engine fault"), 424),
        (getattr(torch, "OutOfMemoryError", MemoryError)("injected out of memory"), 507),
    ],
)
@pytest.mark.parametrize("formatter", sorted(FORMATS))
@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_a_failing_engine_step_ends_its_streams_in_band_and_the_server_goes_on(
    version: str, formatter: str, fault: BaseException, code: int, reference: ReferenceModel
) -> None:
    from runtime_support import client_for

    parse, fields = FORMATS[formatter]
    with served(version, output_formatter=formatter) as (endpoint, tools):
        streams = [post(endpoint, LONG) for _ in range(2)]
        firsts = [response.read1(65536) for response in streams]
        runtime = client_for(endpoint.url)
        events = runtime.invoke_endpoint_with_response_stream(
            EndpointName="local", ContentType="application/json", Body=json.dumps(LONG)
        )["Body"]
        runtime_parts = [next(iter(events))["PayloadPart"]["Bytes"]]
        whole = _post_later(endpoint, {**LONG, "stream": False})
        assert wait_until(lambda: tools.engine.batch_rows == 4), (
            tools.engine.batch_rows,
            tools.prompts,
            tools.last_update,
            tools.steps,
        )
        tools.fault = fault
        tails = [response.read() for response in streams]
        runtime_parts += [event["PayloadPart"]["Bytes"] for event in events]
        whole_status, whole_body = whole()
        after = post(endpoint, {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 14}})
        after_status, after_text = after.status, after.read()
    expected_status = "generation" if formatter == "sse" else code
    for first, tail in zip(firsts, tails):
        status, message = fields(parse(tail))
        assert first and status == expected_status and str(fault) in message, tail[-300:]
    assert fields(parse(b"".join(runtime_parts)))[0] == expected_status
    # DJL 0.23 sends a rolling-batch response's status with its first step, so a request that fails later can only
    # say so in its body; the newest protocol holds a non-streaming response back until it ends
    assert whole_status == (200 if version == "0.23" else code) and json.loads(whole_body)["code"] == code
    assert after_status == 200 and after_text
    record(
        "faults",
        "an exception injected into an engine step, and an out-of-memory error, each ended the streams "
        "of that step with an in-band error in their own format (jsonlines line, SSE event, the last "
        "PayloadPart through the runtime route), answered a non-streaming request with 424 and 507 (newest "
        "protocol; 0.23 sends the status with the first step, so the body says it), and the next request "
        "was served",
    )


def test_a_failing_prefill_fails_the_joining_request_alone(reference: ReferenceModel) -> None:
    with served("newest") as (endpoint, tools):
        running = post(endpoint, {"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 400, "ignore_eos": True}})
        first = running.read1(65536)
        assert wait_until(lambda: tools.engine.batch_rows == 1)
        tools.prefill_fault = RuntimeError("injected prefill fault")
        joining = post(endpoint, {"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 14}, "stream": False})
        joining_status, joining_body = joining.status, joining.read()
        rest = running.read()
    lines = [json.loads(line) for line in (first + rest).decode().splitlines()]
    assert "error_msg" not in lines[-1] and lines[-1]["generated_text"], lines[-1]
    assert tools.last_update and joining_status == 424 and "injected prefill fault" in joining_body.decode()


def _post_later(endpoint: LocalEndpoint, payload: dict) -> Any:
    """Send now, collect later: returns a function that waits for (status, body)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(response=post(endpoint, payload)), daemon=True)
    thread.start()

    def collect() -> tuple[int, bytes]:
        thread.join(timeout=120)
        response = result["response"]
        return response.status, response.read()

    return collect
