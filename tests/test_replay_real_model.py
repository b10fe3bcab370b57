"""model/model.py driven through DJL's replayed frontend in every protocol, over each REAL engine.

Same protocol matrix as test_replay_fake_engine.py, but the tokens come from a real engine (transformers' continuous
batching, and the portable engine) on the tiny trained Llama (fp32, CPU): each request's streamed text must equal transformers' own greedy `generate` for its
prompt and max_new_tokens, while the four requests share the batch. The prompts are chosen so that every reference
token wins by a comfortable logit margin (checked by the reference fixture), so float noise from batching cannot flip
a greedy choice. The slow test does the same with the real SmolLM2 and a chat-templated question.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmistream.service
import pytest
from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model
from reference import Reference, ReferenceModel
from replay import TIMEOUT, assert_whole_events, collect, frontend, post, post_all

pytestmark = pytest.mark.integration

#: (prompt, max_new_tokens): different prompts and lengths, so a token routed to the wrong request shows. Their greedy
#: continuations hold only plain text tokens (see the special-token test below) and end on complete characters.
REQUESTS = [
    ("Once upon a time, there was a little", 5),
    ("The quick brown fox", 9),
    ("1, 2, 3,", 13),
    ("Hello, my name is", 17),
]
#: longer requests for the bad-request test, so that they are still generating when the bad one joins the batch
LONG = 48
REAL_MODEL_DTYPE = "fp32"


@pytest.fixture(autouse=True)
def stop_engines(monkeypatch) -> Iterator[list]:
    """Still the real engines, only recorded so that they are stopped after the test: closing the frontend does not
    stop them, and transformers' generation thread is not a daemon, so a forgotten engine keeps the process alive."""
    engines = []
    real_factory = lmistream.service.create_engine

    def factory(config):
        engines.append(real_factory(config))
        return engines[-1]

    monkeypatch.setattr(lmistream.service, "create_engine", factory)
    yield engines
    for engine in engines:
        engine.stop()


def _available_engines() -> list[str]:
    """Both engines where transformers has continuous batching; the portable one alone on older stacks (LMI 0.23)."""
    from lmistream.engines import available

    return available()


@pytest.fixture(params=_available_engines())
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> ReferenceModel:
    """The reference model, loaded once per module; references are computed on demand and cached."""
    ref = ReferenceModel(tiny_dir)
    for prompt, max_new_tokens in REQUESTS:
        ref(prompt, max_new_tokens)
    return ref


def _options(model_dir: Path, engine: str, **options: str) -> dict[str, str]:
    return {"model_id": str(model_dir), "dtype": REAL_MODEL_DTYPE, "generation_engine": engine, **options}


def _payload(prompt: str, max_new_tokens: int, **extra) -> dict:
    return {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False, **extra}}


# -- decoders of the streamed bodies ------------------------------------------------------------------------------
def jsonlines_023(chunks: list[bytes]) -> str:
    return "".join(json.loads(line)["outputs"][0] for line in b"".join(chunks).decode().splitlines())


def jsonlines_newest_lines(chunks: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in b"".join(chunks).decode().splitlines()]


def jsonlines_newest(chunks: list[bytes]) -> str:
    lines = jsonlines_newest_lines(chunks)
    assert lines[-1]["generated_text"] == "".join(line["token"]["text"] for line in lines)
    return lines[-1]["generated_text"]


def _check_newest_lines(chunks: list[bytes], prompt: str, expected: Reference) -> None:
    """Newest jsonlines: one line per token, each the reference's token, and details on the last line."""
    lines = jsonlines_newest_lines(chunks)
    assert tuple(line["token"]["id"] for line in lines) == expected.token_ids
    assert lines[-1]["details"] == {
        "finish_reason": expected.finish_reason,
        "generated_tokens": len(expected.token_ids),
        "inputs": prompt,
    }
    assert all("details" not in line and "generated_text" not in line for line in lines[:-1])


MATRIX = [
    pytest.param(
        "0.23", {"rolling_batch": "custom", "output_formatter": "jsonlines"}, jsonlines_023, id="0.23-rolling-jsonlines"
    ),
    pytest.param(
        "newest",
        {"rolling_batch": "custom", "enable_streaming": "true", "output_formatter": "jsonlines"},
        jsonlines_newest,
        id="newest-rolling-jsonlines",
    ),
    pytest.param(
        "newest", {"async_mode": "true", "enable_streaming": "true"}, jsonlines_newest, id="newest-async-streaming"
    ),
    pytest.param("0.23", {"enable_streaming": "true"}, jsonlines_023, id="0.23-streaming"),
]


@pytest.mark.parametrize("version,options,decode", MATRIX)
def test_concurrent_requests_each_stream_their_own_greedy_tokens(
    version: str, options: dict, decode: Callable, engine: str, tiny_dir: Path, reference: ReferenceModel
) -> None:
    with frontend(version, **_options(tiny_dir, engine, **options)) as front:
        results = post_all(front, [_payload(prompt, n, details=True) for prompt, n in REQUESTS])
    for (prompt, max_new_tokens), (status, chunks) in zip(REQUESTS, results):
        expected = reference(prompt, max_new_tokens)
        assert status == 200, b"".join(chunks)
        assert decode(chunks) == expected.text, (prompt, max_new_tokens)
        assert_whole_events(chunks)
        if version == "newest":
            _check_newest_lines(chunks, prompt, expected)


def _first_chunk_then_rest(response) -> tuple[int, Iterator[bytes], bytes]:
    """Status, the live chunk iterator and the first chunk (bounded waits)."""
    status = response.head(TIMEOUT).status
    chunks = response.chunks(TIMEOUT)
    return status, chunks, next(chunks)


@pytest.mark.parametrize("version,options,decode", [MATRIX[0], MATRIX[1]])
def test_bad_request_in_a_running_batch_fails_alone(
    version: str, options: dict, decode: Callable, engine: str, tiny_dir: Path, reference: ReferenceModel
) -> None:
    goods = [(prompt, LONG - 4 * index) for index, (prompt, _) in enumerate(REQUESTS)]
    with frontend(version, **_options(tiny_dir, engine, **options)) as front:
        first = [post(front, _payload(prompt, n)) for prompt, n in goods[:2]]
        status0, rest0, chunk0 = _first_chunk_then_rest(first[0])  # the batch is generating now
        bad = post(front, _payload("Why?", 8, top_k=-3))
        later = [post(front, _payload(prompt, n)) for prompt, n in goods[2:]]
        bad_status, bad_chunks = collect(bad)
        tail0 = list(rest0)
        results = [(status0, [chunk0, *tail0])] + [collect(r) for r in first[1:] + later]
    assert bad_status == 400
    bad_body = b"".join(bad_chunks).decode()
    assert "parameters.top_k" in bad_body and "-3" in bad_body, bad_body
    assert tail0, "the first request went on streaming after the bad one was answered"
    for (prompt, max_new_tokens), (status, chunks) in zip(goods, results):
        assert status == 200, b"".join(chunks)
        assert decode(chunks) == reference(prompt, max_new_tokens).text, (prompt, max_new_tokens)


def test_plain_023_requests_answer_one_json_body_each(engine: str, tiny_dir: Path, reference: ReferenceModel) -> None:
    """LMI 0.23 without rolling batch or streaming: one call per request, one `{"generated_text"}` body."""
    with frontend("0.23", **_options(tiny_dir, engine)) as front:
        results = post_all(front, [_payload(prompt, n) for prompt, n in REQUESTS])
    for (prompt, max_new_tokens), (status, chunks) in zip(REQUESTS, results):
        assert status == 200, b"".join(chunks)
        assert json.loads(b"".join(chunks)) == {"generated_text": reference(prompt, max_new_tokens).text}


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_a_list_of_inputs_answers_each_prompts_own_greedy_tokens_in_order(
    version: str, engine: str, tiny_dir: Path, reference: ReferenceModel
) -> None:
    prompts = [prompt for prompt, _ in REQUESTS]
    body = {"inputs": prompts, "parameters": {"max_new_tokens": 9, "details": True}, "stream": False}
    options = {"rolling_batch": "custom", "output_formatter": "jsonlines", "enable_streaming": "true"}
    with frontend(version, **_options(tiny_dir, engine, **options)) as front:
        status, chunks = collect(post(front, body))
        streamed_status, streamed = collect(post(front, {**body, "stream": True}))
        bad_status, bad = collect(post(front, {**body, "inputs": [prompts[0], ""]}))
    assert status == 200, b"".join(chunks)
    answers = json.loads(b"".join(chunks))
    assert len(answers) == len(prompts)
    for prompt, answer in zip(prompts, answers):
        expected = reference(prompt, 9)
        assert answer == {
            "generated_text": expected.text,
            "details": {
                "finish_reason": expected.finish_reason,
                "generated_tokens": len(expected.token_ids),
                "inputs": prompt,
            },
        }
    assert streamed_status == 400 and b'send \\"stream\\": false' in b"".join(streamed)
    assert bad_status == 400 and b"inputs[1] must be a non-empty string" in b"".join(bad)


def test_added_special_tokens_stream_no_text(engine: str, tiny_dir: Path, reference: ReferenceModel) -> None:
    prompt, max_new_tokens = "def fibonacci(n):", 9  # its greedy continuation holds <empty_output> (id 16)
    expected = reference(prompt, max_new_tokens)
    assert 16 in expected.token_ids
    options = MATRIX[1].values[1]
    with frontend("newest", **_options(tiny_dir, engine, **options)) as front:
        status, chunks = collect(post(front, _payload(prompt, max_new_tokens, details=True)))
    assert status == 200
    lines = jsonlines_newest_lines(chunks)
    special = [line["token"] for line in lines if line["token"]["id"] == 16]
    assert special == [{"id": 16, "text": "", "log_prob": None, "special_token": True}]
    assert jsonlines_newest(chunks) == expected.text


@pytest.mark.slow
def test_smollm2_chat_answer_streams_exactly_generate_and_knows_paris(engine: str) -> None:
    from transformers import AutoTokenizer

    model_dir = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")  # ChatML
    expected = ReferenceModel(model_dir)(prompt, 32, check_gaps=False)  # a trained model: exact, no gap guard

    started = time.monotonic()
    options = _options(model_dir, engine, rolling_batch="custom", output_formatter="jsonlines")
    with frontend("0.23", **options) as front:
        status, chunks = collect(post(front, _payload(prompt, 32)))
    assert status == 200, b"".join(chunks)
    text = jsonlines_023(chunks)
    assert text == expected.text
    assert "Paris" in text
    assert_whole_events(chunks)
    assert time.monotonic() - started < 120


#: a conversation and the prompt SmolLM2's ChatML template makes of it (written out, so the check does not rely on the
#: renderer under test, which on transformers 4.30 is the handler's own)
CONVERSATION = [{"role": "system", "content": "Count."}, {"role": "user", "content": "1, 2, 3,"}]
CONVERSATION_PROMPT = (
    "<|im_start|>system\nCount.<|im_end|>\n<|im_start|>user\n1, 2, 3,<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.mark.parametrize("version,options,decode", MATRIX)
def test_chat_requests_stream_the_templated_conversations_greedy_tokens(
    version: str, options: dict, decode: Callable, engine: str, tiny_dir: Path, reference: ReferenceModel
) -> None:
    from sse_decode import chat_text

    expected = reference(CONVERSATION_PROMPT, 12)
    chat = {"messages": CONVERSATION, "max_tokens": 12, "temperature": 0, "stream": True}
    prompt, max_new_tokens = REQUESTS[1]
    with frontend(version, **_options(tiny_dir, engine, **options)) as front:
        (chat_status, chat_chunks), (status, chunks) = post_all(front, [chat, _payload(prompt, max_new_tokens)])
    assert chat_status == 200 and status == 200, b"".join(chat_chunks)
    assert chat_text(b"".join(chat_chunks)) == expected.text
    assert_whole_events(chat_chunks, separator=b"\n\n")
    assert b"".join(chat_chunks).endswith(b"data: [DONE]\n\n")
    assert decode(chunks) == reference(prompt, max_new_tokens).text
