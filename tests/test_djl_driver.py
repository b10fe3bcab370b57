"""The DJL frontend replay and entry-point loader, driven with small hand-written handlers (not model/model.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
from lmikit.djl.dialect import DjlVersion, derive_mode
from lmikit.djl.driver import Frontend, InitError, chunked_read_timeout
from lmikit.djl.loader import load_entry_point, model_environment
from lmikit.djl.response import BackendError
from lmikit.project.properties import init_properties

WAIT = 5.0
BOTH = pytest.mark.parametrize("version", ["0.23", "newest"])

# Rolling-batch echo: one character per step; works under both flavours by feature detection.
# "boom" raises, "bad" reports a code/error item, "malformed" returns an undecodable item, "_" emits "".
ECHO_RB = """
import json, queue, threading
from djl_python import Input, Output

GATED = False
ENTERED = queue.Queue()
GATE = threading.Semaphore(0)
INIT, BATCHES, ACTIVE = [], [], []
NEWEST = hasattr(Output, "binary_encode")

def _item(data, last, error=None):
    if NEWEST:
        fields = {"data": data, "last": last}
        if error:
            fields.update(code=424, error=error)
        return Output.binary_encode(fields)
    if error:
        data = json.dumps({"code": 424, "error": error})
    return {"data": data, "last": last}

def _step(text):
    if text == "bad":
        return _item("", True, "bad input"), "", True
    if text == "malformed":
        return b"\\x00", "", True
    token, rest = text[:1], text[1:]
    return _item("" if token == "_" else token, not rest), rest, not rest

def handle(inputs: Input):
    if inputs.is_empty():
        INIT.append(inputs)
        return None
    BATCHES.append(inputs)
    if GATED:
        ENTERED.put(inputs.get_batch_size())
        if not GATE.acquire(timeout=5):
            raise RuntimeError("gate timeout")
    if inputs.get_property("reset_rollingbatch"):
        ACTIVE.clear()
    for item in inputs.get_batches()[len(ACTIVE):]:
        text = item.get_as_json()["inputs"]
        if text == "boom":
            raise ValueError("boom")
        ACTIVE.append(text)
    out, still = Output(), []
    for index, text in enumerate(ACTIVE):
        item, rest, last = _step(text)
        out.add(item, key="data", batch_index=index)
        if not last:
            still.append(rest)
    ACTIVE[:] = still
    return out
"""

PLAIN = """
import queue, threading
from djl_python import Output

GATED = False
ENTERED = queue.Queue()
GATE = threading.Semaphore(0)
INIT, SEEN, FINALIZED = [], [], []

def _broken():
    yield "ok"
    raise RuntimeError("mid-stream failure")

def handle(inputs):
    if inputs.is_empty():
        INIT.append(inputs)
        return None
    SEEN.append(inputs)
    if GATED:
        ENTERED.put(True)
        GATE.acquire(timeout=5)
    kind = inputs.get_as_string()
    out = Output()
    if kind == "none":
        return None
    if kind == "boom":
        raise ValueError("boom")
    if kind == "wrong":
        return "not an Output"
    if kind == "stream":
        return out.add_property("content-type", "application/jsonlines").add_stream_content(iter([[" a"], [" b"]]))
    if kind == "raw-stream":
        return out.add_stream_content(iter(["x", b"y", {"z": 1}]), output_formatter=None)
    if kind == "broken-stream":
        return out.add_stream_content(_broken())
    if kind == "list-stream":
        return out.add_stream_content(["not", "an iterator"])
    out.finalize(FINALIZED.append, kind)
    return out.add_property("X-Kind", kind).add(kind.upper())
"""

ASYNC = """
from djl_python import Output

INIT, SEEN = [], []

async def handle(inputs):
    if inputs.is_empty():
        INIT.append(inputs)
        return None
    SEEN.append(inputs)
    text = inputs.get_as_json()["inputs"]
    if text == "boom":
        raise ValueError("boom")
    if text == "whole":
        out = Output().add_property("Content-Type", "application/json")
        return out.add(Output.binary_encode({"data": '{"generated_text": "whole"}', "last": True}))
    async def stream():
        for index, char in enumerate(text):
            out = Output().add_property("Content-Type", "application/jsonlines")
            yield out.add(Output.binary_encode({"data": char, "last": index == len(text) - 1}))
    return stream()
"""


@pytest.fixture
def frontends(tmp_path):
    """build(source, version, serving, **kw) -> (started Frontend, handler module); all closed afterwards."""
    stack, created = contextlib.ExitStack(), []

    def build(
        source: str, version: str, serving: dict | None = None, predict_timeout: float | None = None, start: bool = True
    ):
        model_dir = tmp_path / f"model{len(created)}"
        model_dir.mkdir()
        (model_dir / "model.py").write_text(textwrap.dedent(source))
        stack.enter_context(model_environment(model_dir))
        entry = load_entry_point(model_dir, version)
        frontend = Frontend(entry, version, init_properties(serving or {}, model_dir), predict_timeout=predict_timeout)
        created.append(frontend)
        if start:
            frontend.start()
        return frontend, entry.module

    yield build
    for frontend in created:
        frontend.close()
    stack.close()
    sys.modules.pop("model", None)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def body(text: str) -> bytes:
    return json.dumps({"inputs": text}).encode()


JSON = {"Content-Type": "application/json"}
RB = {"option.rolling_batch": "custom"}


@BOTH
def test_init_call_is_one_empty_input_with_init_properties(frontends, version):
    frontend, module = frontends(ECHO_RB, version, {**RB, "engine": "Python", "option.max_rolling_batch_size": "4"})
    (init,) = module.INIT
    assert init.is_empty() and not init.is_batch() and init.get_function_name() == "handle"
    props = init.get_properties()
    assert list(props)[-2:] == ["device_id", "model_dir"] and props["device_id"] == "-1"
    assert props["rolling_batch"] == "custom" and props["engine"] == "Python" and props["max_rolling_batch_size"] == "4"
    assert list(props)[:-2] == sorted(list(props)[:-2], key=str.lower)
    assert frontend.mode == "rolling_batch" and "max_rolling_batch_size=4" in frontend.describe()


def test_mode_follows_java_rules():
    assert derive_mode("0.23", {"rolling_batch": "false"}) == "rolling_batch"
    assert derive_mode("newest", {"rolling_batch": "disable"}) == "plain"
    assert derive_mode("newest", {"rolling_batch": "disable", "async_mode": "True"}) == "async"
    assert derive_mode("0.23", {"async_mode": "true"}) == "plain"
    with pytest.raises(ValueError):
        derive_mode("newest", {"rolling_batch": "vllm", "async_mode": "true"})


@BOTH
def test_rolling_batch_requests_join_and_leave_with_their_own_chunks(frontends, version):
    frontend, module = frontends(ECHO_RB, version, RB)
    module.GATED = True
    first = frontend.submit(JSON, body("abc"))
    assert module.ENTERED.get(timeout=WAIT) == 1
    second = frontend.submit({**JSON, "X-Trace": "t2"}, body("de"))
    wait_until(lambda: frontend.active_requests() == 2)
    for _ in range(3):
        module.GATE.release()
    assert list(first.chunks(timeout=WAIT)) == [b"a", b"b", b"c"]
    assert list(second.chunks(timeout=WAIT)) == [b"d", b"e"]
    assert [batch.get_batch_size() for batch in module.BATCHES] == [1, 2, 2]
    head = first.head(timeout=WAIT)
    assert head.status == 200 and head.chunked
    expected_type = {"Content-Type": "application/json"} if version == "0.23" else {}
    assert head.headers == expected_type
    wait_until(lambda: frontend.active_requests() == 0)
    _assert_second_iteration(module.BATCHES[1], version)


def _assert_second_iteration(batch, version):
    """Iteration 2: request 0 continues (placeholder), request 1 is new (body, seed, properties)."""
    content = dict(zip(batch.content.keys, batch.content.values))
    props = batch.get_properties()
    if version == "0.23":
        assert content["batch_0.data"] == b'{"inputs": [""]}' and "batch_0.seed" not in content
        assert content["batch_1.data"] == body("de") and "batch_1.seed" in content
        assert props["batch_0.Content-Type"] == "application/json" and props["batch_1.X-Trace"] == "t2"
    else:
        assert content["batch_000.data"] == b"" and "batch_000.seed" not in content
        assert content["batch_001.data"] == body("de") and "batch_001.seed" in content
        assert not any(key.startswith("batch_000.") for key in props)
        assert props["batch_001.X-Trace"] == "t2" and "batch_001.requestId" in props
    assert props["batch_size"] == "2" and props["handler"] == "handle" and "model_dir" in props


@BOTH
def test_rolling_batch_waits_for_a_free_slot(frontends, version):
    frontend, module = frontends(ECHO_RB, version, {**RB, "option.max_rolling_batch_size": "1"}, predict_timeout=5)
    module.GATED = True
    first = frontend.submit(JSON, body("ab"))
    module.ENTERED.get(timeout=WAIT)
    second = frontend.submit(JSON, body("cd"))
    with pytest.raises(TimeoutError):
        second.head(timeout=0.1)
    assert frontend.active_requests() == 1
    module.GATED = False
    module.GATE.release()
    assert first.read(timeout=WAIT) == b"ab" and second.read(timeout=WAIT) == b"cd"
    assert max(batch.get_batch_size() for batch in module.BATCHES) == 1


@BOTH
def test_rolling_batch_full_times_out_with_400(frontends, version):
    frontend, module = frontends(ECHO_RB, version, {**RB, "option.max_rolling_batch_size": "1"}, predict_timeout=0.2)
    module.GATED = True
    first = frontend.submit(JSON, body("ab"))
    module.ENTERED.get(timeout=WAIT)
    second = frontend.submit(JSON, body("cd"))
    head = second.head(timeout=WAIT)
    assert (head.status, head.chunked, head.headers) == (400, False, {"content-type": "application/json"})
    assert json.loads(second.read(timeout=WAIT)) == {
        "code": 400,
        "type": "TranslateException",
        "message": "Time out in: 0.2",
    }
    module.GATED = False
    module.GATE.release()
    assert first.read(timeout=WAIT) == b"ab"


@BOTH
def test_first_chunk_error_sets_the_status(frontends, version):
    frontend, _ = frontends(ECHO_RB, version, RB)
    response = frontend.submit(JSON, body("bad"))
    head = response.head(timeout=WAIT)
    assert (head.status, head.reason) == (424, "bad input")
    if version == "0.23":
        assert response.read(timeout=WAIT) == b'{"code": 424, "error": "bad input"}' and head.chunked
    else:
        assert response.read(timeout=WAIT) == b'{"error":"bad input","code":424}' and not head.chunked


def test_newest_suppresses_empty_chunks_so_one_chunk_is_a_plain_response(frontends):
    frontend, _ = frontends(ECHO_RB, "newest", RB)
    response = frontend.submit(JSON, body("__x"))
    assert response.head(timeout=WAIT).chunked is False and response.read(timeout=WAIT) == b"x"


def test_023_empty_first_chunk_still_fixes_the_head(frontends):
    frontend, _ = frontends(ECHO_RB, "0.23", RB)
    response = frontend.submit(JSON, body("_x"))
    assert response.head(timeout=WAIT).chunked and list(response.chunks(timeout=WAIT)) == [b"x"]


@BOTH
def test_handler_exception_fails_the_whole_batch_then_resets(frontends, version):
    frontend, module = frontends(ECHO_RB, version, RB)
    module.GATED = True
    running = frontend.submit(JSON, body("abcdef"))
    module.ENTERED.get(timeout=WAIT)
    failing = frontend.submit(JSON, body("boom"))
    wait_until(lambda: frontend.active_requests() == 2)
    module.GATE.release()
    module.GATE.release()
    error = {"code": 424, "message": "Batch inference failed", "properties": {}, "content": {"keys": [], "values": []}}
    if version == "newest":
        error["cancelled"] = False
    assert running.read(timeout=WAIT) == b"a" + json.dumps(error, separators=(",", ":")).encode()
    assert json.loads(failing.read(timeout=WAIT)) == error
    assert failing.head(timeout=WAIT).status == (424 if version == "newest" else 200)
    module.GATED = False
    assert frontend.submit(JSON, body("ok")).read(timeout=WAIT) == b"ok"
    assert module.BATCHES[-2].get_property("reset_rollingbatch") == "true"


@BOTH
def test_malformed_item_is_fatal(frontends, version):
    frontend, _ = frontends(ECHO_RB, version, RB)
    with pytest.raises(BackendError, match="rolling batch loop died"):
        frontend.submit(JSON, body("malformed")).read(timeout=WAIT)
    assert frontend.fatal_error is not None
    with pytest.raises(BackendError):
        frontend.submit(JSON, body("ok")).head(timeout=WAIT)


@BOTH
def test_cancelled_request_stays_in_the_batch_until_last(frontends, version):
    frontend, module = frontends(ECHO_RB, version, RB)
    module.GATED = True
    response = frontend.submit(JSON, body("abc"))
    module.ENTERED.get(timeout=WAIT)
    response.cancel()
    for _ in range(3):
        module.GATE.release()
    wait_until(lambda: frontend.active_requests() == 0 and len(module.BATCHES) == 3)
    assert response.read(timeout=WAIT) == b""


@BOTH
def test_job_queue_overflow_is_503(frontends, version):
    frontend, module = frontends(PLAIN, version, {"job_queue_size": "2"})
    module.GATED = True
    first = frontend.submit({}, b"one")
    module.ENTERED.get(timeout=WAIT)
    queued = frontend.submit({}, b"two")
    rejected = frontend.submit({}, b"three")
    assert rejected.head(timeout=WAIT).status == 503
    assert json.loads(rejected.read(timeout=WAIT))["type"] == "WlmCapacityException"
    module.GATED = False
    module.GATE.release()
    assert first.read(timeout=WAIT) == b"ONE" and queued.read(timeout=WAIT) == b"TWO"


@BOTH
def test_plain_request_properties_and_body(frontends, version):
    frontend, module = frontends(PLAIN, version)
    headers = [
        ("Content-Type", "text/plain"),
        ("X-Amzn-SageMaker-Custom-Attributes", "a=1; b = 2;junk"),
        ("content-type", "text/plain; charset=utf-8"),
    ]
    response = frontend.submit(headers, b"hi", query=[("q", "v")])
    assert response.read(timeout=WAIT) == b"HI"
    head = response.head(timeout=WAIT)
    assert (head.status, head.chunked, head.headers) == (200, False, {"X-Kind": "hi"})
    seen = module.SEEN[-1]
    assert seen.content.keys == ["q", "data"] and seen.get_as_string() == "hi"
    props = seen.get_properties()
    assert props["Content-Type"] == "text/plain; charset=utf-8" and (props["a"], props["b"]) == ("1", "2")
    assert not any(key.lower().startswith("x-amzn") for key in props)
    assert ("requestId" in props) == (version == "newest") and props["handler"] == "handle"
    wait_until(lambda: module.FINALIZED == ["hi"])


@pytest.mark.parametrize(("version", "message"), [("0.23", "prediction failure"), ("newest", "invoke handler failure")])
def test_plain_errors_and_no_content(frontends, version, message):
    frontend, _ = frontends(PLAIN, version)
    failed = frontend.submit({}, b"boom")
    assert (failed.head(timeout=WAIT).status, failed.head(timeout=WAIT).reason) == (424, message)
    assert json.loads(failed.read(timeout=WAIT)) == {"code": 424, "message": message, "error": "boom"}
    wrong = frontend.submit({}, b"wrong")
    assert "Invalid output type" in json.loads(wrong.read(timeout=WAIT))["error"]
    empty = frontend.submit({}, b"none")
    assert (empty.head(timeout=WAIT).status, empty.read(timeout=WAIT)) == (204, b"")


@BOTH
def test_streaming_without_rolling_batch(frontends, version):
    frontend, _ = frontends(PLAIN, version)
    stream = frontend.submit({}, b"stream")
    assert list(stream.chunks(timeout=WAIT)) == [b'{"outputs": [" a"]}\n', b'{"outputs": [" b"]}\n']
    head = stream.head(timeout=WAIT)
    assert head.chunked and head.headers == {"content-type": "application/jsonlines"}
    raw = frontend.submit({}, b"raw-stream")
    assert list(raw.chunks(timeout=WAIT)) == [b"x", b"y", b'{\n  "z":1\n}']
    broken = frontend.submit({}, b"broken-stream")
    assert list(broken.chunks(timeout=WAIT)) == [b'{"outputs": "ok"}\n', b"mid-stream failure"]
    assert broken.head(timeout=WAIT).status == 200
    not_iterator = frontend.submit({}, b"list-stream")
    assert not_iterator.read(timeout=WAIT) == b"'list' object is not an iterator"


def test_newest_rejects_a_handler_header(frontends):
    frontend, module = frontends(PLAIN, "newest")
    response = frontend.submit({"handler": "other"}, b"x")
    assert response.head(timeout=WAIT).status == 400 and not module.SEEN


def test_async_mode_streams_binary_encoded_outputs(frontends):
    frontend, module = frontends(ASYNC, "newest", {"option.async_mode": "true", "option.rolling_batch": "disable"})
    assert frontend.mode == "async" and module.INIT[0].is_empty()
    first, second = frontend.submit(JSON, body("abc")), frontend.submit(JSON, body("de"))
    assert list(first.chunks(timeout=WAIT)) == [b"a", b"b", b"c"] and second.read(timeout=WAIT) == b"de"
    head = first.head(timeout=WAIT)
    assert head.chunked and head.headers["Content-Type"] == "application/jsonlines"
    seen = {inputs.get_as_json()["inputs"]: inputs for inputs in module.SEEN}
    assert head.headers["request_tracking_id"] == seen["abc"].get_property("request_tracking_id")
    assert not seen["abc"].is_batch() and seen["abc"].get_property("requestId") == first.request_id
    whole = frontend.submit(JSON, body("whole"))
    assert whole.read(timeout=WAIT) == b'{"generated_text": "whole"}' and not whole.head(timeout=WAIT).chunked


def test_async_mode_handler_exception_is_424(frontends):
    frontend, _ = frontends(ASYNC, "newest", {"option.async_mode": "true"})
    response = frontend.submit(JSON, body("boom"))
    assert response.head(timeout=WAIT).status == 424
    assert json.loads(response.read(timeout=WAIT))["message"] == (
        "Async Inference Failure service.invoke_handler_async() failure"
    )


def test_async_mode_with_a_sync_handler_fails_init(frontends):
    with pytest.raises(InitError, match="Failed to initialize model: service.invoke_handler_async"):
        frontends(PLAIN, "newest", {"option.async_mode": "true"})


def test_init_failure_is_reported(frontends):
    source = "def handle(inputs):\n    raise RuntimeError('no weights')\n"
    with pytest.raises(InitError, match=r"prediction failure \(no weights\)"):
        frontends(source, "0.23")


LOADER_MODEL = """
from sibling import VALUE
from djl_python import Output
with open("loads.txt", "a") as log:
    log.write("x")

def fmt(output):
    return output
fmt.is_output_formatter = True

def handle(inputs):
    if inputs.is_empty():
        return None
    formatter = inputs.get_property("output_formatter")
    return Output().add(f"{VALUE}:{getattr(formatter, '__name__', None)}")
"""


@pytest.mark.parametrize(("version", "loads", "reply"), [("0.23", "x", b"7:None"), ("newest", "xxx", b"7:fmt")])
def test_loader_imports_like_djl(tmp_path, version, loads, reply):
    (tmp_path / "model.py").write_text(LOADER_MODEL)
    (tmp_path / "sibling.py").write_text("VALUE = 7\n")
    try:
        with model_environment(tmp_path):
            entry = load_entry_point(tmp_path, version)
            assert (tmp_path / "loads.txt").read_text() == loads
            frontend = Frontend(entry, version, init_properties({}, tmp_path))
            frontend.start()
            try:
                assert frontend.submit({}, b"").read(timeout=WAIT) == reply
            finally:
                frontend.close()
    finally:
        for name in ("model", "sibling"):
            sys.modules.pop(name, None)
    if version == "0.23":
        assert entry.module.__name__ == "model" and entry.formatters == {}
    else:
        digest = hashlib.md5(str(tmp_path.resolve() / "model.py").encode()).hexdigest()[:8]
        assert entry.module.__name__ == f"model_{digest}"
        assert entry.formatters["output_formatter"] is not entry.module.fmt
    assert callable(entry.handler)
    with pytest.raises(AttributeError, match="no handler function 'nope'"):
        _ = dataclasses.replace(entry, handler_name="nope").handler


def test_the_disconnect_property_means_the_same_on_both_sides_of_the_wire():
    from lmikit.djl import rolling_batch as replay
    from lmistream.protocols import rolling_batch as handler

    assert replay.DISCONNECTED_PROPERTY == handler.DISCONNECTED_PROPERTY


def test_chunked_read_timeout_is_minutes_on_023_and_seconds_on_newest_property_before_env(monkeypatch) -> None:
    monkeypatch.delenv("SERVING_CHUNKED_READ_TIMEOUT", raising=False)
    assert chunked_read_timeout({}, DjlVersion.LMI_0_23) == chunked_read_timeout({}, DjlVersion.NEWEST) == 120
    assert chunked_read_timeout({"chunked_read_timeout": "5"}, DjlVersion.LMI_0_23) == 300
    assert chunked_read_timeout({"chunked_read_timeout": "5"}, DjlVersion.NEWEST) == 5
    monkeypatch.setenv("SERVING_CHUNKED_READ_TIMEOUT", "7")
    assert chunked_read_timeout({}, DjlVersion.NEWEST) == 7
    assert chunked_read_timeout({"chunked_read_timeout": "5"}, DjlVersion.NEWEST) == 5
