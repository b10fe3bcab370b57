"""model/model.py driven through DJL's replayed frontend in every protocol, over a scripted engine.

The scripted engine answers each prompt with the prompt reversed, one byte-token per step, so every
request's exact bytes are known while several requests join and leave the batch together.
"""

import json
import sys
import time

import lmistream.service
import pytest
from fakes import HeldEngine, ScriptedEngine, serve_engines
from replay import MODEL_DIR, TIMEOUT, assert_whole_events, collect, frontend, post, post_all

REAL_FACTORY = lmistream.service.create_engine  # the real factory, before the fixture swaps it
PROMPTS = ["abc", "hello there", "é日x", "zz"]


@pytest.fixture(autouse=True)
def scripted_engine(monkeypatch):
    yield from serve_engines(monkeypatch, ScriptedEngine)


def jsonlines_023(chunks):
    return "".join(json.loads(line)["outputs"][0] for line in b"".join(chunks).decode().splitlines())


def jsonlines_newest(chunks):
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    assert lines[-1]["generated_text"] == "".join(line["token"]["text"] for line in lines)
    return lines[-1]["generated_text"]


STREAMING = [
    ("0.23", {"rolling_batch": "custom", "output_formatter": "jsonlines"}, jsonlines_023),
    ("newest", {"rolling_batch": "custom", "output_formatter": "jsonlines"}, jsonlines_newest),
    ("newest", {"async_mode": "true", "enable_streaming": "true"}, jsonlines_newest),
    ("0.23", {"enable_streaming": "true"}, jsonlines_023),
]


@pytest.mark.parametrize("version,options,decode", STREAMING)
def test_concurrent_requests_each_get_exactly_their_own_tokens(version, options, decode):
    with frontend(version, **options) as front:
        results = post_all(front, [{"inputs": p, "parameters": {"max_new_tokens": 50}} for p in PROMPTS])
    for prompt, (status, chunks) in zip(PROMPTS, results):
        assert status == 200
        assert decode(chunks) == prompt[::-1]
        assert_whole_events(chunks)


@pytest.mark.parametrize("version,options,decode", STREAMING)
def test_the_first_token_reaches_the_client_before_the_second_exists(version, options, decode, monkeypatch):
    engines = []
    monkeypatch.setattr(lmistream.service, "create_engine", lambda config: engines.append(HeldEngine()) or engines[-1])
    with frontend(version, **options) as front:
        response = post(front, {"inputs": "abc"})
        assert response.head(TIMEOUT).status == 200
        chunks = response.chunks(TIMEOUT)
        first = next(chunks)  # the engine holds the second token until released
        engines[0].release()
        rest = list(chunks)
    engines[0].stop()
    assert token_texts(version, [first]) == ["c"]
    assert decode([first, *rest]) == "cba"


def token_texts(version, chunks):
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    return [line["outputs"][0] if version == "0.23" else line["token"]["text"] for line in lines]


def test_023_json_default_builds_one_object():
    with frontend("0.23", rolling_batch="custom") as front:
        status, chunks = collect(post(front, {"inputs": "abc"}))
    assert status == 200 and json.loads(b"".join(chunks)) == {"generated_text": "cba"}


def test_newest_non_streaming_request_gets_one_json_body():
    with frontend("newest", rolling_batch="custom", enable_streaming="true") as front:
        status, chunks = collect(post(front, {"inputs": "abc", "stream": False, "parameters": {"details": True}}))
    body = json.loads(b"".join(chunks))
    assert status == 200 and body["generated_text"] == "cba"
    assert body["details"] == {"finish_reason": "eos_token", "generated_tokens": 4, "inputs": "abc"}


@pytest.mark.parametrize(
    "version,options",
    [
        ("0.23", {"rolling_batch": "custom", "output_formatter": "jsonlines"}),
        ("newest", {"rolling_batch": "custom"}),
        ("newest", {"async_mode": "true"}),
        ("0.23", {"enable_streaming": "true"}),
    ],
)
def test_bad_request_fails_alone_with_a_clear_400(version, options):
    with frontend(version, **options) as front:
        good = [post(front, {"inputs": p}) for p in PROMPTS[:2]]
        bad = post(front, {"inputs": "x", "parameters": {"top_p": 7}})
        more = post(front, {"inputs": "later"})
        bad_status, bad_chunks = collect(bad)
        results = [collect(r) for r in good + [more]]
    assert bad_status == 400
    assert "parameters.top_p must be in (0, 1], got 7" in b"".join(bad_chunks).decode()
    assert all(status == 200 for status, _ in results)


def test_max_new_tokens_and_stop_sequences_per_request(scripted_engine):
    with frontend("newest", rolling_batch="custom", output_formatter="jsonlines") as front:
        results = post_all(
            front,
            [
                {"inputs": "abcdef", "parameters": {"max_new_tokens": 2}},
                {"inputs": "abcdef", "parameters": {"stop_sequences": ["c"]}},
                {"inputs": "abcdef"},
            ],
        )
    assert [jsonlines_newest(chunks) for _, chunks in results] == ["fe", "fed", "fedcba"]
    assert set(scripted_engine[0].cancelled) == {"req-1"}, "a stop sequence cancels the request in the engine"


def test_truncate_keeps_the_prompts_end_and_a_stop_token_ends_the_request(scripted_engine):
    with frontend("newest", rolling_batch="custom", output_formatter="jsonlines") as front:
        results = post_all(
            front,
            [
                {"inputs": "abcdef", "parameters": {"truncate": 3}},
                # the echo answers "fedc" and then 2,000 more tokens: the stop token, not the script's end, ends it
                {
                    "inputs": "x" * 2000 + "cdef",
                    "parameters": {"stop_token_ids": [ord("c")], "max_new_tokens": 2000, "details": True},
                },
            ],
        )
    assert [jsonlines_newest(chunks) for _, chunks in results] == ["fed", "fed"]
    last = json.loads(b"".join(results[1][1]).decode().splitlines()[-1])
    assert last["token"]["id"] == ord("c") and last["details"]["finish_reason"] == "stop_sequence"
    assert set(scripted_engine[0].cancelled) == {"req-1"}, "a stop token cancels the request in the engine"


@pytest.mark.parametrize(
    "version,options",
    [
        ("0.23", {"rolling_batch": "custom", "output_formatter": "jsonlines"}),
        ("newest", {"rolling_batch": "custom", "enable_streaming": "true"}),
        ("newest", {"async_mode": "true", "enable_streaming": "true"}),
        ("0.23", {"enable_streaming": "true"}),
    ],
)
def test_client_disconnect_cancels_the_request_in_the_engine(version, options, scripted_engine):
    with frontend(version, **options) as front:
        response = post(front, {"inputs": "x" * 2000, "parameters": {"max_new_tokens": 2000}})
        chunks = response.chunks(30)
        next(chunks)
        response.cancel()
        engine = scripted_engine[0]
        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == [] and engine.cancelled == ["req-0"]
        assert front.active_requests() == 0
        status, chunks = collect(post(front, {"inputs": "abc"}))
        assert status == 200 and chunks, "the freed slot serves the next request"


def test_plain_non_streaming_model_answers_one_body():
    with frontend("0.23") as front:
        status, chunks = collect(post(front, {"inputs": "abc", "parameters": {"details": True}}))
    assert status == 200 and len(chunks) == 1
    assert json.loads(chunks[0]) == {"generated_text": "cba"}


def model_dir_with(tmp_path, source):
    """A user's model dir: the project's model.py plus their own code in it."""
    (tmp_path / "model.py").write_text((MODEL_DIR / "model.py").read_text() + source)
    (tmp_path / "lmistream").symlink_to(MODEL_DIR / "lmistream", target_is_directory=True)
    return tmp_path


@pytest.fixture
def model_dir_with_formatter(tmp_path):
    return model_dir_with(
        tmp_path,
        '''

def shouting(event):
    """A user's formatter: upper-case text, and a marker on the last event."""
    return event.text.upper() + (f"|{event.finish_reason.value}\\n" if event.last else "")
''',
    )


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_after_a_failed_step_the_reset_ends_the_dropped_requests_in_the_engine(version, tmp_path, scripted_engine):
    """A step that raises fails every request in it (DJL answers them all and flags the next step with
    reset_rollingbatch); that reset must end the dropped requests in the engine, not leave them generating."""
    model_dir = model_dir_with(
        tmp_path,
        '''

def failing_on_bang(event):
    """A user's formatter with a bug: it raises on the token "!"."""
    if event.text == "!":
        raise ValueError("the formatter failed")
    return event.text
''',
    )
    options = {"rolling_batch": "custom", "output_formatter": "failing_on_bang", "max_rolling_batch_size": "2"}
    with frontend(version, model_dir, **options) as front:
        long = post(front, {"inputs": "y" * 1000, "parameters": {"max_new_tokens": 3000}})
        assert next(long.chunks(TIMEOUT)), "the long request is generating"
        failing = post(front, {"inputs": "ab!"})
        for response in (long, failing):
            assert b"Batch inference failed" in b"".join(collect(response)[1])
        engine = scripted_engine[0]
        assert "req-0" in engine.active, "DJL dropped the requests; the engine still generates the long one"
        status, chunks = collect(post(front, {"inputs": "abc"}))  # its step carries the reset
        assert status == 200 and b"".join(chunks) == b"cba"
        assert "req-0" in engine.cancelled and engine.active == []
        assert front.active_requests() == 0


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_custom_formatter_defined_in_model_py(version, model_dir_with_formatter):
    options = {"rolling_batch": "custom", "output_formatter": "shouting", "enable_streaming": "true"}
    with frontend(version, model_dir_with_formatter, **options) as front:
        status, chunks = collect(post(front, {"inputs": "abc"}))
    assert status == 200 and b"".join(chunks) == b"CBA|eos_token\n"


def test_unknown_formatter_fails_the_model_load():
    refused = "option.output_formatter='nope' is neither a built-in"
    with pytest.raises(Exception, match=refused), frontend("0.23", rolling_batch="custom", output_formatter="nope"):
        pass


def test_a_forced_engine_that_cannot_import_fails_the_load_with_the_reason(monkeypatch):
    monkeypatch.setattr(lmistream.service, "create_engine", REAL_FACTORY)
    monkeypatch.setitem(sys.modules, "lmistream.engines.continuous", None)  # as in an image with an older transformers
    with (
        pytest.raises(
            Exception, match="option.generation_engine=continuous cannot load here .* needs transformers 5.24"
        ),
        frontend("0.23", rolling_batch="custom", generation_engine="continuous"),
    ):
        pass


def test_auto_picks_the_portable_engine_where_continuous_batching_cannot_import(monkeypatch):
    from lmistream.config import HandlerConfig
    from lmistream.engines import choose

    config = HandlerConfig(model_id="unused", device_id=0)  # a GPU, were one here
    monkeypatch.setitem(sys.modules, "lmistream.engines.continuous", None)
    name, reason = choose(config)
    assert name == "portable" and "continuous batching is unavailable" in reason
    assert choose(HandlerConfig(model_id="unused", generation_engine="continuous"))[0] == "continuous"


def test_auto_picks_the_portable_engine_on_cpu_where_it_is_faster():
    from lmistream.config import HandlerConfig
    from lmistream.engines import available, choose

    name, reason = choose(HandlerConfig(model_id="unused"))  # no GPU on this machine
    assert name == "portable"
    assert ("outruns" in reason) == ("continuous" in available())


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_a_request_that_asks_for_no_stream_gets_one_body(version):
    with frontend(version, rolling_batch="custom", enable_streaming="true", output_formatter="jsonlines") as front:
        response = post(front, {"inputs": "abcdef", "stream": False})
        head = response.head(30)
        chunks = list(response.chunks(30))
    assert head.status == 200 and len(chunks) == 1
    assert head.chunked == (version == "0.23"), "newest answers a one-chunk stream with a Content-Length"
    assert b"".join(chunks).count(b"\n") == 6 + (version == "newest")


def test_each_finished_request_logs_one_line_of_numbers_and_never_its_prompt(caplog):
    prompt = "private words"
    options = {"rolling_batch": "custom", "output_formatter": "jsonlines"}
    with caplog.at_level("INFO", logger="lmistream.admission"), frontend("0.23", **options) as front:
        status, _ = collect(post(front, {"inputs": prompt, "parameters": {"max_new_tokens": 5}}))
    assert status == 200
    [line] = [r.getMessage() for r in caplog.records if "prompt_tokens=" in r.getMessage()]
    assert " length: prompt_tokens=13 cached_tokens=0 generated_tokens=5 ttft_ms=" in line and "total_ms=" in line
    assert prompt not in caplog.text


def test_djls_rolling_batch_vllm_picks_the_vllm_engine_and_says_where_it_is_missing(monkeypatch):
    from lmistream.config import HandlerConfig
    from lmistream.engines import available, choose, create_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # as in an image without vLLM
    assert "vllm" not in available() and choose(HandlerConfig(model_id="unused"))[0] != "vllm"
    config = HandlerConfig(model_id="unused", rolling_batch="vllm")
    assert choose(config) == ("vllm", "option.rolling_batch=vllm")
    with pytest.raises(Exception, match="option.rolling_batch=vllm .* cannot load here"):
        create_engine(config)
    with pytest.raises(Exception, match="option.generation_engine=portable picks another"):
        choose(HandlerConfig(model_id="unused", rolling_batch="vllm", generation_engine="portable"))
