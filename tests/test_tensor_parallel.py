"""Tensor parallelism through `lmi serve`: engine=MPI with tensor_parallel_degree=2 starts two rank processes that
hold the tiny model between them (transformers' tp_plan over gloo on this CPU), on both engines and under both DJL
generations. Each rank holds about half the parameters, 8 concurrent greedy requests get exactly the single-device
texts (and a repeated prompt too, taken from every rank's prefix cache on the portable engine), two PEFT adapters
sharded with the model answer in one mixed batch as PEFT's merged models do, and a rank killed mid-stream ends the
open request with an error and turns /ping unhealthy."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lmikit.embedded_model import ensure_smollm2, ensure_tiny_model
from lmikit.launch import ping, running_endpoint
from lmistream.engines import available
from local_endpoint import REPO, START_TIMEOUT, make_project, stream
from lora_support import RECIPES, merged_model_dir, model_with_adapters
from reference import DTYPE_KEYWORD, ReferenceModel

pytestmark = pytest.mark.integration

PROPERTIES = """engine=MPI
option.entryPoint=model.py
option.tensor_parallel_degree=2
option.rolling_batch=custom
option.max_rolling_batch_size=8
option.output_formatter=jsonlines
option.enable_streaming=true
option.dtype=fp32
option.generation_engine={engine}
"""
PROMPTS = [
    "Hello, my name is",
    "The quick brown fox",
    "1, 2, 3,",
    "Once upon a time, there was a little",
    "Why?",
    "def fibonacci(n):",
    "Roses are",
    "The capital of France is",
]
MAX_NEW_TOKENS = 12
#: a prompt of a few full blocks (16 tokens each)
REPEATED = "Hello, my name is Ada and I like to write programs for the analytical engine. " * 3
RANK_LINE = re.compile(r"rank (\d) of 2, sharded by ([^,]+), (\d+) parameter bytes")


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


def _text(body: bytes) -> str:
    lines = [json.loads(line) for line in body.decode().splitlines()]
    return "".join(line["outputs"][0] if "outputs" in line else line["token"]["text"] for line in lines)


def _serve(tmp_path: Path, engine: str, version: str, model: Path, log, launcher: str = "auto", project=None):
    project = project or make_project(tmp_path / "project", PROPERTIES.format(engine=engine))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--project-dir", str(project), "--model-id", str(model), "--djl-version", version, "--launcher", launcher]
    return running_endpoint(args, env, log, START_TIMEOUT)


def _single_device_parameter_bytes(model_dir: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, **{DTYPE_KEYWORD: torch.float32})
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("version", ["0.23", "newest"])
@pytest.mark.parametrize("engine", available())
def test_two_ranks_shard_the_model_and_answer_exactly_as_one_device(
    engine: str, version: str, tiny_dir: Path, tmp_path: Path
) -> None:
    reference = ReferenceModel(tiny_dir)
    with tempfile.TemporaryFile("w+") as log:
        with _serve(tmp_path, engine, version, tiny_dir, log) as endpoint:
            payloads = [{"inputs": p, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}} for p in PROMPTS]
            with ThreadPoolExecutor(len(payloads)) as pool:
                results = list(pool.map(lambda payload: stream(endpoint, payload, time.monotonic()), payloads))
            # one after the other: the second finds the first's blocks in every rank's prefix cache
            repeated = {"inputs": REPEATED, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
            results += [stream(endpoint, repeated, time.monotonic()) for _ in range(2)]
        log.seek(0)
        output = log.read()
    for prompt, result in zip([*PROMPTS, REPEATED, REPEATED], results):
        assert result.status == 200, result.body
        assert _text(result.body) == reference(prompt, MAX_NEW_TOKENS).text, (prompt, output[-3000:])
    if engine == "portable":
        assert re.search(r"cached_tokens=[1-9]", output), output[-3000:]
    ranks = {int(rank): (path, int(size)) for rank, path, size in RANK_LINE.findall(output)}
    assert set(ranks) == {0, 1}, output[-3000:]
    single = _single_device_parameter_bytes(tiny_dir)
    for rank, (path, size) in sorted(ranks.items()):
        print(f"rank {rank}: {size:,} parameter bytes ({size / single:.1%} of one device's {single:,}), {path}")
        assert path == "transformers tp_plan"
        assert 0.45 * single <= size <= 0.6 * single


def test_two_ranks_shard_lora_adapters_and_each_row_answers_as_its_merged_model(tiny_dir: Path, tmp_path: Path) -> None:
    """On the newest stack (transformers' tp_plan): base rows and both adapters' rows in one batch, over two ranks.
    The adapters target colwise (q/k/v/up) and rowwise (o/down) modules."""
    project = tmp_path / "lora-project"
    model = model_with_adapters(tiny_dir, project / "model")  # DJL's model dir: adapters/ beside model.py
    for name in ("model.py", "lmistream"):
        (model / name).symlink_to(REPO / "model" / name)
    (project / "serving.properties").write_text(PROPERTIES.format(engine="portable") + "option.enable_lora=true\n")
    references = {
        None: ReferenceModel(tiny_dir),
        **{
            r.name: ReferenceModel(merged_model_dir(tiny_dir, model / "adapters" / r.name, tmp_path / r.name))
            for r in RECIPES
        },
    }
    rows = [(prompt, adapter) for prompt in PROMPTS[:2] for adapter in references]
    payloads = [
        {"inputs": prompt, "parameters": {"max_new_tokens": 6}, **({"adapters": adapter} if adapter else {})}
        for prompt, adapter in rows
    ]
    with tempfile.TemporaryFile("w+") as log:
        with (
            _serve(tmp_path, "portable", "newest", tiny_dir, log, project=project) as endpoint,
            ThreadPoolExecutor(len(payloads)) as pool,
        ):
            results = list(pool.map(lambda payload: stream(endpoint, payload, time.monotonic()), payloads))
        log.seek(0)
        output = log.read()
    assert {(rank, path) for rank, path, _ in RANK_LINE.findall(output)} == {
        ("0", "transformers tp_plan"),
        ("1", "transformers tp_plan"),
    }, output[-3000:]
    for (prompt, adapter), result in zip(rows, results):
        assert result.status == 200, result.body
        assert _text(result.body) == references[adapter](prompt, 6).text, (prompt, adapter, output[-3000:])


@pytest.mark.parametrize("launcher", ["mpirun", "processes"])
def test_a_killed_rank_ends_the_open_stream_with_an_error_and_ping_turns_unhealthy(
    launcher: str, tiny_dir: Path, tmp_path: Path
) -> None:
    with (
        tempfile.TemporaryFile("w+") as log,
        _serve(tmp_path, "portable", "0.23", tiny_dir, log, launcher) as endpoint,
    ):
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
        body = json.dumps({"inputs": "1, 2, 3,", "parameters": {"max_new_tokens": 1900, "ignore_eos": True}})
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = response.read1(65536)
        log.seek(0)
        ready = log.read()
        assert f"2 ranks by {launcher}" in ready
        pids = [int(p) for p in re.search(r"pids \[([\d, ]+)\]", ready).group(1).split(",")]
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        rest = b""
        while True:
            data = response.read1(65536)
            if not data:
                break
            rest += data
        ended = time.monotonic() - killed
        health = ping(endpoint.port)  # the group is marked failed before the stream's error is written
    assert first and json.loads(first.splitlines()[0])["outputs"]
    last = json.loads(rest.splitlines()[-1])
    assert last.get("code") == 424 and "failed" in last.get("message", "").lower(), rest[-500:]
    assert ended < 30, f"the open stream took {ended:.1f} s to end after the rank died"
    assert health == 503


@pytest.mark.slow
def test_smollm2_with_two_ranks_is_refused_naming_its_nine_heads(tmp_path: Path) -> None:
    model = ensure_smollm2()
    project = make_project(tmp_path / "project", PROPERTIES.format(engine="auto"))
    command = [
        sys.executable,
        "-m",
        "lmikit",
        "serve",
        "--project-dir",
        str(project),
        "--model-id",
        str(model),
        "--port",
        "0",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=START_TIMEOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert done.returncode == 1
    assert (
        "option.tensor_parallel_degree=2 does not divide the model's num_attention_heads=9" in done.stdout + done.stderr
    )
