"""Regression tests for requests that once hurt the batch: each fails alone with a 4xx naming the problem, and the
requests beside it stream exactly their own tokens. Also: a failed non-streaming generation answers with its error
status (424, or 507 when the engine ran out of memory), never HTTP 200. Over the scripted engine, in every protocol."""

from __future__ import annotations

import json

import lmistream.service
import pytest
from fakes import ScriptedEngine, serve_engines
from lmistream.engine import EngineUpdate
from replay import collect, frontend, post

ROLLING = [
    ("0.23", {"rolling_batch": "custom", "output_formatter": "jsonlines"}),
    ("newest", {"rolling_batch": "custom", "output_formatter": "jsonlines"}),
    ("newest", {"async_mode": "true", "enable_streaming": "true"}),
    ("0.23", {"enable_streaming": "true"}),
]
CANARY = "the canary sings"
NESTED = b'{"inputs": "x", "parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


class CountingEngine(ScriptedEngine):
    """The scripted engine, counting what its tokenizer is asked to encode."""

    def __init__(self) -> None:
        super().__init__(tick=0.005)
        self.encoded: list[int] = []
        encode = self.tokenizer.encode
        self.tokenizer.encode = lambda text, **options: self.encoded.append(len(text)) or encode(text, **options)
        self.max_sequence_length = 2048


@pytest.fixture(autouse=True)
def engines(monkeypatch):
    yield from serve_engines(monkeypatch, CountingEngine)


def _text(version: str, chunks: list[bytes]) -> str:
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    return "".join(line["outputs"][0] if version == "0.23" else line["token"]["text"] for line in lines)


BAD = [
    pytest.param(NESTED, "nests too deeply", id="deeply-nested-json"),
    pytest.param(b'{"inputs": "a\\ud800"}', "inputs holds a lone surrogate", id="lone-surrogate-escape"),
    pytest.param(b'{"inputs": "a\xed\xa0\x80"}', "inputs holds a lone surrogate", id="lone-surrogate-bytes"),
    pytest.param(
        b'{"inputs": "x", "parameters": {"stop_sequences": ["\\udfff"]}}',
        "parameters.stop_sequences",
        id="surrogate-stop-sequence",
    ),
    *[
        pytest.param(
            json.dumps({"inputs": "x", "parameters": value}).encode(),
            "parameters must be a JSON object",
            id=f"parameters-{value!r}",
        )
        for value in ([], "", 0, False)
    ],
    pytest.param(
        json.dumps({"inputs": "y" * (7 << 20)}).encode(), "characters; the model holds 2048 tokens", id="7-MiB-prompt"
    ),
]


@pytest.mark.parametrize("version,options", ROLLING)
@pytest.mark.parametrize("body,fragment", BAD)
def test_a_bad_request_fails_alone_with_a_400_naming_it(version, options, body, fragment, engines) -> None:
    with frontend(version, **options) as front:
        canary = post(front, {"inputs": CANARY, "parameters": {"max_new_tokens": 40}})
        canary_head = canary.head(30)
        status, chunks = collect(post(front, body))
        canary_status, canary_chunks = collect(canary)
    answer = b"".join(chunks).decode()
    assert status == 400 or json.loads(answer.splitlines()[-1]).get("code") == 400, answer[:300]
    assert fragment in answer, answer[:300]
    assert canary_head.status == canary_status == 200
    assert _text(version, canary_chunks) == CANARY[::-1]
    assert all(length < 1_000_000 for length in engines[0].encoded), "the huge prompt reached the tokenizer"


class FailingEngine(ScriptedEngine):
    """Fails every request with an error update of the given status after its first token."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self._code = code

    def _step(self) -> list[EngineUpdate]:
        updates = super()._step()
        return [
            EngineUpdate(
                u.request_id,
                finished=True,
                error="CUDA out of memory" if self._code == 507 else "generation failed",
                code=self._code,
            )
            if not u.finished
            else u
            for u in updates
        ]


@pytest.mark.parametrize("code", [424, 507])
@pytest.mark.parametrize(
    "version,options", [("0.23", {}), ("newest", {"async_mode": "true"}), ("newest", {"rolling_batch": "disable"})]
)
def test_a_failed_non_streaming_generation_answers_its_error_status(version, options, code, monkeypatch) -> None:
    monkeypatch.setattr(lmistream.service, "create_engine", lambda config: FailingEngine(code))
    with frontend(version, **options) as front:
        status, chunks = collect(post(front, {"inputs": "abcdef", "parameters": {"max_new_tokens": 5}}))
        after_status, _ = collect(post(front, {"inputs": "ab", "parameters": {"max_new_tokens": 1}}))
    assert status == code, b"".join(chunks)
    assert after_status == 200, "the next request is served"
