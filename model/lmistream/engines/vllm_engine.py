"""VllmEngine and AsyncVllmEngine: the `Engine` protocol over vLLM's own engine, where the image ships vLLM.

Chosen by `option.rolling_batch=vllm` (DJL's name) or `option.generation_engine=vllm`; `auto` takes it wherever this
module imports, that is wherever vLLM has the API used here (`lmistream.engines`). The handler stays the same: every
DJL protocol, output format, custom formatter, validation and cancellation works as with the other engines. The
options become vLLM's engine arguments in `vllm_arguments`.

Both DJL paths run `AsyncLLM`, vLLM's asyncio API, as vLLM's own OpenAI server does: each request is a task iterating
`AsyncLLM.generate`, and cancelling the task aborts the request in vLLM. A request is sent to vLLM's engine core at
once, so it joins the next step as on vLLM's server (vLLM's synchronous `LLMEngine` takes requests only between its
blocking steps, and is not thread-safe).

* The async path (`option.async_mode=true`) runs the tasks on DJL's event loop, so outputs arrive on the loop that
  awaits them with no thread in between (`AsyncVllmEngine`).
* The synchronous paths (rolling batch, and one request per `handle` call) run them on an event loop of the engine's
  own thread (`VllmEngine`), which hands each engine step's updates to the handler in one go.

vLLM samples every request with its own settings (temperature, top-k, top-p, min-p, `seed`, the repetition, frequency
and presence penalties) and ends it on eos (unless `ignore_eos`), a stop token id or `max_new_tokens`; the eos token
is in its output, as with the other engines. Structured output is vLLM's own (`structured_outputs`, its backends),
checked by vLLM when the request is admitted. It does not detokenize (`detokenize=False`): the handler's TextStream
decodes each token once and applies the stop sequences, so text, special tokens and finish reasons are the same as
with the other engines. Outputs are deltas (`RequestOutputKind.DELTA`); log-probabilities (vLLM's raw ones: of the
sampled token, the most likely ones as vLLM's `logprobs=k`, the prompt's as its `prompt_logprobs`) only when a
request asks.

LoRA adapters are vLLM's own: each registered adapter is a `LoRARequest`, and a request naming it passes it to
`generate`, so one batch mixes adapters as on vLLM's server. With tensor parallelism DJL runs this handler as one
process (engine=Python) and vLLM starts its workers; the weights live in vLLM's processes, so `parameter_bytes`
(what this process holds) is 0.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any

import vllm
from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

try:  # what vLLM raises for a request it refuses: VLLMClientError (not a ValueError) in newer releases
    from vllm.exceptions import VLLMClientError

    REFUSED: tuple[type[Exception], ...] = (ValueError, VLLMClientError)
except ImportError:
    REFUSED = (ValueError,)

from ..adapters import AdapterSpec
from ..config import HandlerConfig
from ..engine import EngineUpdate, UpdateCallback, deliver
from ..errors import ConfigError, EngineError, InvalidRequest
from ..params import GenerationParams
from ..structured import Constraint
from .loading import HFTokenizer, in_setup_thread, load_tokenizer
from .vllm_arguments import engine_arguments

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0  # seconds stop() waits for the engine's loop to wind down
#: vLLM's finish reasons that are failures, not ends
FAILED = {"abort": "vLLM aborted the request", "error": "vLLM failed the request"}


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
        min_p=params.min_p if sampled else 0.0,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        logprobs=params.top_logprobs or (0 if params.logprobs else None),
        prompt_logprobs=0 if params.prompt_logprobs else None,
        detokenize=False,
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=structured_outputs(params.constraint),
    )


def structured_outputs(constraint: Constraint | None) -> StructuredOutputsParams | None:
    """A constraint as vLLM's structured outputs, decoded by vLLM's own backend; JSON without free whitespace between
    its tokens, as on the other engines (a small model can loop there)."""
    if constraint is None:
        return None
    if constraint.kind == "json":
        return StructuredOutputsParams(json=constraint.spec, disable_any_whitespace=True)
    if constraint.kind == "choice":
        return StructuredOutputsParams(choice=constraint.choices)
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=constraint.spec)
    return StructuredOutputsParams(grammar=constraint.spec)


def check(params: GenerationParams) -> None:
    """InvalidRequest for what vLLM's own validation refuses (our ranges are narrower, so this is a guard)."""
    try:
        sampling_params(params)
    except REFUSED as error:
        raise InvalidRequest(f"parameters refused by vLLM: {error}") from None


def check_constraint(constraint: Constraint, engine: Any) -> None:
    """InvalidRequest naming the constraint's field when vLLM's structured-output backend refuses it (vLLM's own
    check, run on the constraint alone so that its error is that field's)."""
    config = engine.vllm_config
    try:
        SamplingParams(structured_outputs=structured_outputs(constraint)).verify(
            engine.model_config, config.speculative_config, config.structured_outputs_config, engine.tokenizer
        )
    except REFUSED as error:
        raise InvalidRequest(f"{constraint.field} refused by vLLM: {error}", param=constraint.field) from None


def to_update(output: Any, top: int = 0) -> EngineUpdate:
    """A RequestOutput (a delta) as an EngineUpdate; `top`: the most likely tokens asked for at each position (vLLM's
    `logprobs`, whose entries hold them, ranks 1 to `top`, beside the chosen token)."""
    completion = output.outputs[0]
    failure = FAILED.get(str(completion.finish_reason))
    if failure is not None:
        return EngineUpdate(output.request_id, finished=True, error=failure)
    tokens = tuple(completion.token_ids)
    log_probs: tuple[float | None, ...] = (None,) * len(tokens)
    tops: tuple[tuple[tuple[int, float], ...], ...] = ()
    if completion.logprobs:
        log_probs = tuple(entry[token].logprob for entry, token in zip(completion.logprobs, tokens))
        if top:
            tops = tuple(_top(entry, top) for entry in completion.logprobs)
    prefill: tuple[tuple[int, float | None], ...] = ()
    if output.prompt_logprobs:  # the first output of a request asking for them: the first token has none
        prefill = tuple(
            (token, None if entry is None else entry[token].logprob)
            for token, entry in zip(output.prompt_token_ids, output.prompt_logprobs)
        )
    cached = getattr(output, "num_cached_tokens", None) or 0  # vLLM's prefix-cache hit (newer vLLM only)
    return EngineUpdate(
        output.request_id, tokens, log_probs, tops, prefill=prefill, finished=output.finished, cached_tokens=cached
    )


def _top(entry: dict[int, Any], count: int) -> tuple[tuple[int, float], ...]:
    ranked = sorted((logprob.rank, token, logprob.logprob) for token, logprob in entry.items() if logprob.rank <= count)
    return tuple((token, value) for _, token, value in ranked)


class _VllmBase:
    """What both APIs share: the engine's description and the delivery of updates."""

    def __init__(self, config: HandlerConfig, engine: Any) -> None:
        tokenizer = load_tokenizer(config)  # plain: vLLM's own copy routes every call through a pool
        configured = engine.model_config.try_get_generation_config().get("eos_token_id")
        eos = [*(configured if isinstance(configured, list) else [configured]), tokenizer.eos_token_id]
        self.tokenizer = HFTokenizer(tokenizer, frozenset(i for i in eos if i is not None))
        self.max_sequence_length: int = engine.model_config.max_model_len
        #: vLLM's resolved configuration: what the options became
        self.vllm_config = engine.vllm_config
        parallel = engine.vllm_config.parallel_config.tensor_parallel_size
        self.load_path = f"vLLM {vllm.__version__} ({type(engine).__name__}), tensor_parallel_size={parallel}"
        self.parameter_bytes = 0
        self._engine = engine
        self._on_update: UpdateCallback | None = None
        self._stopped = False
        self._lora_enabled = config.enable_lora
        self._adapters: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(1)

    def validate(self, params: GenerationParams) -> None:
        check(params)
        if params.constraint is not None:
            check_constraint(params.constraint, self._engine)

    def add_adapter(self, spec: AdapterSpec) -> None:
        """Serve an adapter through vLLM's LoRARequest (vLLM loads it when a request first names it)."""
        if not self._lora_enabled:
            raise ConfigError(f"adapter {spec.name!r}: LoRA adapters need option.enable_lora=true")
        self._adapters[spec.name] = LoRARequest(spec.name, next(self._lora_ids), spec.path)

    def remove_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    @property
    def unfinished_requests(self) -> int:
        """Requests vLLM's engine still holds (a cancelled one leaves it once vLLM has aborted it)."""
        return int(self._engine.get_num_unfinished_requests())

    def _lora_request(self, params: GenerationParams) -> LoRARequest | None:
        if params.adapter is None:
            return None
        request = self._adapters.get(params.adapter)
        if request is None:
            raise InvalidRequest(f"adapter {params.adapter!r} is not registered", param="adapters")
        return request

    def _emit(self, update: EngineUpdate) -> None:
        deliver(self._on_update, update)


class AsyncVllmEngine(_VllmBase):
    """vLLM's `AsyncLLM` on the caller's event loop (DJL's async path): one task per request."""

    def __init__(self, config: HandlerConfig) -> None:
        engine = in_setup_thread(lambda: AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_arguments(config))))
        super().__init__(config, engine)
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
        self._spawn(loop, request_id, prompt_ids, sampling_params(params), self._lora_request(params))

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

    @property
    def running(self) -> int:
        """Requests whose task is still generating."""
        return len(self._tasks)

    def _check_running(self) -> None:
        if not self._running or self._engine.errored:
            raise EngineError("the vLLM engine is not running (stopped or crashed); the request was not queued")

    def _spawn(
        self,
        loop: asyncio.AbstractEventLoop,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        lora: LoRARequest | None = None,
    ) -> None:
        self._tasks[request_id] = loop.create_task(self._generate(request_id, prompt_ids, params, lora))

    def _fail_running(self) -> None:
        """An error update for each running request, and its task cancelled."""
        for request_id in list(self._tasks):
            self._emit(EngineUpdate(request_id, finished=True, error="the engine stopped"))
            self.cancel(request_id)

    async def _generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, lora: LoRARequest | None
    ) -> None:
        try:
            prompt = {"prompt_token_ids": prompt_ids}
            async for output in self._engine.generate(prompt, params, request_id, lora_request=lora):
                self._emit(to_update(output, params.logprobs or 0))
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
        self._loop.call_soon_threadsafe(
            self._spawn, self._loop, request_id, list(prompt_ids), sampling_params(params), self._lora_request(params)
        )

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

    @property
    def loop_closed(self) -> bool:
        """Whether stop() has closed the engine's own event loop."""
        return self._loop.is_closed()

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
