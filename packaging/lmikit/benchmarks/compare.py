"""`lmi bench --compare`: the full stack against the engine's own limit and against peers, in one process.

Every system serves the same model directory with the same prompts, greedy, with the same torch thread count:

* `generate`: transformers' static-batch `model.generate` of each level's prompts (left-padded, `min_new_tokens =
  max_new_tokens`), in this process: no HTTP, no handler, no scheduler. The engine limit.
* `lmi-<protocol>-<engine>`: `lmi serve` of the project (DJL 0.23 and newest protocols, each engine asked for by
  `option.generation_engine`), driven over the container route `POST /invocations`.
* `transformers-serve`: `transformers serve --continuous-batching` of the same directory, `/v1/completions` (without
  that flag it answers one request after another, no peer for a batching server).
* `vllm`: vLLM's OpenAI server, where a venv with `vllm` is named (`--vllm-python`), `/v1/completions`.
* `naive`: a handler that serves one request at a time, streamed with `generate`, in this process.

In-process torch work runs in one thread of its own (every thread that runs torch ops keeps an OpenMP pool that
slows the others, see `lmistream.engines.loading.in_setup_thread`). Servers run as subprocesses with
OMP_NUM_THREADS/MKL_NUM_THREADS set; each system's threads are reported.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..djl.dialect import DjlVersion
from ..launch import RunningEndpoint, running_endpoint, running_server
from .stats import RequestRecord
from .targets import ClosedLoop, Target, container_target, openai_target

START_TIMEOUT_S = 600.0
KV_CACHE_BYTES = 1 << 30
PROTOCOLS = tuple(DjlVersion)


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a server subprocess: `threads` intra-op threads, offline."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


class TimedStreamer:
    """A transformers streamer that stamps every decoding step (the first `put` is the prompt, not a token)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class LocalModel:
    """The model and tokenizer in this process; all torch work runs in one dedicated thread, one call at a time."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bench-torch")
        self.tokenizer, self.model = self._thread.submit(self._load, model_dir, threads).result()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id

    @staticmethod
    def _load(model_dir: Path, threads: int) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
        return tokenizer, model.eval()

    def generate(self, prompts: Sequence[str], max_new_tokens: int, exact: bool) -> tuple[float, list[float]]:
        """One left-padded static batch; the time it started and each step's time (every row shares them)."""
        return self._thread.submit(self._generate, list(prompts), max_new_tokens, exact).result()

    def _generate(self, prompts: list[str], max_new_tokens: int, exact: bool) -> tuple[float, list[float]]:
        import torch

        rows = [self.tokenizer.encode(prompt) for prompt in prompts]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        streamer = TimedStreamer()
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if exact else 0,
                pad_token_id=self.pad_id,
                streamer=streamer,
            )
        return start, streamer.times

    def close(self) -> None:
        self._thread.shutdown()


class GenerateLimit:
    """Static-batch `generate` of each round's `c` prompts: every row gets a token at every step."""

    def __init__(self, model: LocalModel) -> None:
        self._model = model

    def run_level(
        self,
        prompts: Sequence[str],
        concurrency: int,
        rounds: int,
        max_new_tokens: int,
        on_done: Callable[[RequestRecord], None],
    ) -> list[RequestRecord]:
        records = []
        for turn in range(rounds):
            batch = [prompts[(index * rounds + turn) % len(prompts)] for index in range(concurrency)]
            start, times = self._model.generate(batch, max_new_tokens, exact=True)
            for _ in batch:
                records.append(RequestRecord(start, list(times)))
                on_done(records[-1])
        return records


class NaiveHandler:
    """One request at a time (the others queue), each streamed by its own batch-of-one `generate`."""

    def __init__(self, model: LocalModel) -> None:
        self._model = model
        self._lock = threading.Lock()

    def request(self, prompt: str, max_new_tokens: int) -> RequestRecord:
        sent = time.perf_counter()
        with self._lock:
            _, times = self._model.generate([prompt], max_new_tokens, exact=False)
        return RequestRecord(sent, times)


@dataclass
class Plan:
    """What `--compare` runs: the model, the project whose stack is measured, and which systems."""

    model_dir: Path
    project_dir: Path
    threads: int
    max_batch: int
    engines: Sequence[str] = ("portable", "continuous")
    protocols: Sequence[DjlVersion] = PROTOCOLS
    transformers_serve: bool = True
    vllm_python: Path | None = None
    naive: bool = True


@dataclass
class System:
    """A started system: its name, how to run a level on it, and the threads it was given."""

    name: str
    runner: Any
    threads: str


#: the stack with its prefix cache on and off (lmi serve options), as the chat and no-prefix workloads compare them
CACHE_STACKS = {"lmi-cache-on": (), "lmi-cache-off": ("enable_prefix_caching=false",)}


def lmi_stack(
    plan: Plan, protocol: DjlVersion, engine: str, options: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> AbstractContextManager[RunningEndpoint]:
    """`lmi serve` of the project on this protocol and engine, with these extra `key=value` options and environment
    variables."""
    args = [
        "--project-dir",
        str(plan.project_dir),
        "--model-id",
        str(plan.model_dir),
        "--djl-version",
        protocol.value,
        "--option",
        f"generation_engine={engine}",
        "--option",
        f"max_rolling_batch_size={plan.max_batch}",
        "--option",
        "dtype=fp32",
        *(part for option in options for part in ("--option", option)),
    ]
    return running_endpoint(args, {**thread_env(plan.threads), **(env or {})}, ready_timeout=START_TIMEOUT_S)


def transformers_serve(plan: Plan) -> AbstractContextManager[RunningEndpoint]:
    executable = Path(sys.executable).with_name("transformers")
    command = lambda port: [
        str(executable),
        "serve",
        str(plan.model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--continuous-batching",
    ]
    return running_server(command, thread_env(plan.threads), ready_timeout=START_TIMEOUT_S, ready_path="/health")


def vllm_openai_server(
    python: Path | str, model_dir: Path, max_batch: int, env: Mapping[str, str], *extra: str
) -> AbstractContextManager[RunningEndpoint]:
    """vLLM's OpenAI server of `model_dir` as the served name `model`, fp32, at most `max_batch` sequences, with a KV
    cache of KV_CACHE_BYTES (unbounded, vLLM's CPU build takes most of the machine's memory for it); `extra` flags
    after those."""
    command = lambda port: [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "model",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-num-seqs",
        str(max_batch),
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        *extra,
    ]
    return running_server(command, env, ready_timeout=START_TIMEOUT_S, ready_path="/health")


def vllm_env(threads: int) -> dict[str, str]:
    """A vLLM server's environment: `threads` intra-op threads, its CPU workers bound to the first `threads` CPUs."""
    return {**thread_env(threads), "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}


def vllm_completions(url: str) -> Target:
    """vLLM's server as the benchmarks reach it: streamed `/v1/completions` for the served name `model`."""
    return openai_target(url, "model", api="completions")


def vllm_server(plan: Plan) -> AbstractContextManager[RunningEndpoint]:
    """vLLM's server as its users start it (compiled, its prefix caching on by default), beside the plan's stacks."""
    assert plan.vllm_python is not None
    return vllm_openai_server(plan.vllm_python, plan.model_dir, plan.max_batch, vllm_env(plan.threads))


def vllm_missing(python: Path | None) -> str | None:
    """Why vLLM cannot run (None when `python` imports vllm)."""
    if python is None or not python.exists():
        return "not installed (pass --vllm-python, a venv's python with vllm-cpu)"
    probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"not importable: {probe.stderr.strip().splitlines()[-1:]}"


@contextmanager
def started_systems(plan: Plan, say: Callable[[str], None]) -> Iterator[tuple[list[System], Any]]:
    """Every system of the plan, started (the servers one after another), and the model's tokenizer; all stopped
    on exit."""
    with ExitStack() as stack:
        local = LocalModel(plan.model_dir, plan.threads)
        stack.callback(local.close)
        in_process = f"{plan.threads} (torch.set_num_threads, in this process)"
        systems = [System("generate", GenerateLimit(local), in_process)]
        servers: list[tuple[str, Callable[[], AbstractContextManager[RunningEndpoint]], Callable[[str], Target]]] = [
            (f"lmi-{protocol.value}-{engine}", functools.partial(lmi_stack, plan, protocol, engine), container_target)
            for engine in plan.engines
            for protocol in plan.protocols
        ]
        completions = lambda url: openai_target(url, str(plan.model_dir), api="completions")
        if plan.transformers_serve:
            servers.append(("transformers-serve", lambda: transformers_serve(plan), completions))
        missing = vllm_missing(plan.vllm_python)
        if missing is None:
            servers.append(("vllm", lambda: vllm_server(plan), vllm_completions))
        else:
            say(f"vllm: {missing}")
        for name, start, target in servers:
            say(f"starting {name} ...")
            endpoint = stack.enter_context(start())
            systems.append(System(name, ClosedLoop(target(endpoint.url)), _threads(plan.threads, endpoint)))
        if plan.naive:
            systems.append(System("naive", ClosedLoop(NaiveHandler(local)), in_process))
        yield systems, local.tokenizer


def _threads(threads: int, endpoint: RunningEndpoint) -> str:
    """The intra-op threads a server was given, and how many OS threads its process has now."""
    try:
        status = Path(f"/proc/{endpoint.process.pid}/status").read_text()
        count = next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:"))
    except (OSError, StopIteration):
        count = "?"
    return f"{threads} (OMP_NUM_THREADS; process has {count} OS threads)"
