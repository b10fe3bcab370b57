"""ContinuousBatchingEngine: the `Engine` protocol over transformers' continuous batching (`ContinuousBatchingManager`).

Needs transformers >= 5.24 (Python >= 3.11, torch >= 2.6); `lmistream.engines` picks the portable engine where this
module cannot import. The manager runs its own generation thread; this engine adds a reader thread that turns the
manager's streamed `GenerationOutput`s (each holds all the tokens of a request so far) into `EngineUpdate`s that hold
only the new tokens, and hands them to the handler's callback.

Sampling settings are per request: the manager is created with sampling on and non-neutral temperature / top-k / top-p
(transformers only builds a processor for a setting that differs from its neutral value), and every request passes all
three explicitly. A greedy request samples with top_k=1, which is argmax. On CPU the manager's top-k / top-p
processors are swapped for row-skipping ones (`cb_processors`). transformers' continuous batching samples every request
from one shared generator and has no per-request repetition, frequency or presence penalty nor min-p, so `seed` (with
sampling) and those are refused (`validate`). `ignore_eos` gives the request no eos token; stop token ids and
`truncate` are the handler's. option.enable_prefix_caching maps onto transformers' own block sharing
(`allow_block_sharing`: prompt blocks shared in its paged cache), option.max_rolling_batch_prefill_tokens onto its
`max_batch_tokens`, by which its scheduler splits long prompts.

With tensor parallelism the model is sharded by transformers' `tp_plan` and the manager keeps the ranks in step by
itself: rank 0's manager takes the requests and broadcasts them, the other ranks' managers follow (`ranked`).

Loading the model and starting the manager run in a short-lived thread (`in_setup_thread`), so that the caller's
thread (DJL's long-lived handler thread) never owns an OpenMP thread pool: see that function for why this matters.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from ..config import HandlerConfig
from ..engine import EngineUpdate, UpdateCallback, deliver
from ..errors import EngineError, InvalidRequest
from ..params import GenerationParams
from .cb_processors import use_rowwise_processors
from .distributed import TensorParallel, load_sharded, parameter_bytes
from .loading import (
    HFTokenizer,
    cache_memory_share,
    device_for,
    eos_token_ids,
    in_setup_thread,
    limit_device_memory,
    load,
    oom_as_handler_error,
    text_config,
)

#: settings transformers' continuous batching cannot apply per request, and their neutral values
UNSUPPORTED_PER_REQUEST = {"repetition_penalty": 1.0, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
#: manager-wide defaults; each only needs to be non-neutral so that its per-request processor exists
PROCESSOR_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
#: on CPU transformers would size the KV cache (and its attention masks) to most of the host RAM: bound both
CPU_MAX_BATCH_TOKENS = 512
CPU_KV_CACHE_BYTES = 1 << 30
PAGE_SIZE = ContinuousBatchingConfig.page_size
READER_WAKEUP_S = 0.2
STOP_TIMEOUT_S = 30.0


@dataclass
class _Live:
    """What the reader tracks for a request that is still generating."""

    greedy: bool
    sent: int = 0


class ContinuousBatchingEngine:
    """Continuous-batching generation with a transformers model loaded from `config.model_id`."""

    def __init__(self, config: HandlerConfig, tp: TensorParallel | None = None) -> None:
        self._config = config
        self._device = device_for(tp.ranks.local_rank if tp and config.device_id >= 0 else config.device_id)
        limit_device_memory(config, self._device)
        if tp is None:
            hf_tokenizer, self._model = in_setup_thread(lambda: load(config, self._device))
            self.load_path = "one device"
        else:
            hf_tokenizer, self._model, self.load_path = in_setup_thread(lambda: load_sharded(config, self._device, tp))
        self.parameter_bytes = parameter_bytes(self._model)
        self.tokenizer = HFTokenizer(hf_tokenizer, eos_token_ids(self._model, hf_tokenizer))
        text = text_config(self._model)
        self.max_sequence_length: int = text.max_position_embeddings
        self._vocab_size: int = text.vocab_size
        self._manager: Any = None
        self._on_update: UpdateCallback | None = None
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, on_update: UpdateCallback) -> None:
        """Create and start the manager (its cache is allocated here), then the reader thread."""
        if self._manager is not None:
            raise EngineError("the engine is already started")
        self._on_update = on_update
        self._manager = manager = in_setup_thread(self._start_manager)
        self._stopping.clear()
        self._reader = threading.Thread(target=self._read, args=(manager,), name="hf-engine-reader", daemon=True)
        self._reader.start()

    def _start_manager(self) -> Any:
        manager = self._model.init_continuous_batching(
            generation_config=self._generation_config(), continuous_batching_config=self._batching_config()
        )
        if self._device.type == "cpu":
            use_rowwise_processors(manager.logit_processor.logits_processor)
        with oom_as_handler_error("allocating the KV cache"), torch.inference_mode():
            manager.warmup()  # builds the cache now, so a memory error fails start() instead of the loop thread
            manager.start()  # the generation thread outlives this setup thread
        return manager

    def validate(self, params: GenerationParams) -> None:
        """Refuse what transformers' continuous batching cannot honour instead of silently ignoring it."""
        if params.constraint is not None:
            raise InvalidRequest(
                f"{params.constraint.field}: structured output is not supported by the continuous-batching engine "
                "(transformers' continuous batching gives a per-request logits processor one number per row, not a "
                "token mask kept in step with the row's tokens); option.generation_engine=portable (or vllm, where "
                "the image has vLLM) decodes it",
                param=params.constraint.field,
            )
        for name, neutral in UNSUPPORTED_PER_REQUEST.items():
            if getattr(params, name) != neutral:
                raise InvalidRequest(
                    f"parameters.{name} is not supported by the continuous-batching engine (transformers' continuous "
                    f"batching has no per-request {name}); use {neutral:g} or omit it "
                    "(option.generation_engine=portable supports it)",
                    param=f"parameters.{name}",
                )
        if params.logprobs and not params.do_sample:
            raise InvalidRequest(
                "logprobs with greedy decoding (temperature 0) is not supported by the continuous-batching engine: "
                "it reports no log-probabilities for greedy tokens (option.generation_engine=portable does)",
                param="logprobs",
            )
        if params.top_logprobs:
            raise InvalidRequest(
                "top log-probabilities (parameters.top_n_tokens, top_logprobs, completions logprobs above 0) are not "
                "reported by the continuous-batching engine (option.generation_engine=portable reports them)",
                param="top_logprobs",
            )
        if params.prompt_logprobs:
            raise InvalidRequest(
                "parameters.decoder_input_details is not supported by the continuous-batching engine: transformers' "
                "continuous batching gives no prompt logits (option.generation_engine=portable reports them)",
                param="parameters.decoder_input_details",
            )
        if params.seed is not None and params.do_sample:
            raise InvalidRequest(
                "parameters.seed is not supported with do_sample=true by the continuous-batching engine: it samples "
                "all requests from one shared generator (option.generation_engine=portable supports it)"
            )

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        """Queue a request; raise EngineError if the generation loop is not running."""
        manager = self._manager
        if manager is None:
            raise EngineError("the engine is not started")
        with self._lock:
            self._live[request_id] = _Live(greedy=not params.do_sample)
        accepted = manager.add_request(
            list(prompt_ids),
            request_id=request_id,
            max_new_tokens=params.max_new_tokens,
            streaming=True,
            eos_token_id=[] if params.ignore_eos else sorted(self.tokenizer.eos_token_ids),
            **self._sampling_kwargs(params),
        )
        if accepted is None:
            with self._lock:
                self._live.pop(request_id, None)
            raise EngineError("the generation loop is not running (stopped or crashed); the request was not queued")

    def cancel(self, request_id: str) -> None:
        """Free the request's slot. Its outputs not yet converted are dropped; one that the reader is handing over while
        cancel() runs may still arrive, none after that."""
        with self._lock:
            known = self._live.pop(request_id, None) is not None
        manager = self._manager
        if known and manager is not None:
            manager.cancel_request(request_id)

    def stop(self) -> None:
        """Hard-stop the manager (unfinished requests get an error update), drain its outputs, stop the reader."""
        manager, self._manager = self._manager, None
        if manager is None:
            return
        manager.stop(block=True, timeout=STOP_TIMEOUT_S, hard_stop=True)
        self._stopping.set()
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)
            self._reader = None

    @property
    def logits_processors(self) -> list[Any]:
        """The logits processors the running manager applies at each step (none before start or after stop)."""
        manager = self._manager
        return [] if manager is None else list(manager.logit_processor.logits_processor)

    def _generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            do_sample=True,
            eos_token_id=sorted(self.tokenizer.eos_token_ids),
            max_new_tokens=self._config.max_new_tokens,
            **PROCESSOR_DEFAULTS,
        )

    def _batching_config(self) -> ContinuousBatchingConfig:
        """Map the rolling-batch options onto the continuous batching knobs: the cache bounded on CPU, and on a GPU
        within option.gpu_memory_utilization where it is given (transformers' default: most of the free memory)."""
        settings: dict[str, Any] = {
            "per_request_processors": True,
            "return_logprobs": True,
            "max_requests_per_batch": self._config.max_rolling_batch_size,
            "max_batch_tokens": self._config.max_rolling_batch_prefill_tokens,
            "allow_block_sharing": self._config.enable_prefix_caching,
        }
        if self._device.type == "cpu":
            settings["max_batch_tokens"] = self._config.max_rolling_batch_prefill_tokens or CPU_MAX_BATCH_TOKENS
            settings["num_blocks"] = self._cpu_cache_blocks()
        elif self._config.gpu_memory_utilization is not None:
            settings["max_memory_percent"] = cache_memory_share(self._config.gpu_memory_utilization, self._device)
        return ContinuousBatchingConfig(**settings)

    def _cpu_cache_blocks(self) -> int:
        """Enough KV blocks for a full batch of longest sequences, within CPU_KV_CACHE_BYTES (never below one)."""
        text = text_config(self._model)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        bytes_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * self._model.dtype.itemsize
        wanted = self._config.max_rolling_batch_size * self.max_sequence_length
        tokens = max(self.max_sequence_length, min(wanted, CPU_KV_CACHE_BYTES // bytes_per_token))
        return math.ceil(tokens / PAGE_SIZE)

    def _sampling_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        if not params.do_sample:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        return {
            "temperature": float(params.temperature),
            "top_k": params.top_k or self._vocab_size,
            "top_p": float(params.top_p),
        }

    def _read(self, manager: Any) -> None:
        """Reader thread: block on the manager's output queue until stop() has drained it."""
        while True:
            output = manager.get_result(timeout=READER_WAKEUP_S)
            if output is not None:
                self._deliver(output)
            elif self._stopping.is_set():
                return
            elif not manager.is_running():
                self._stopping.wait(READER_WAKEUP_S)  # the loop died: get_result no longer blocks

    def _deliver(self, output: Any) -> None:
        update = self._to_update(output)
        if update is not None:
            deliver(self._on_update, update)

    def _to_update(self, output: Any) -> EngineUpdate | None:
        """The tokens of `output` not delivered yet; None for a cancelled request or an output with nothing new."""
        finished = output.is_finished()
        with self._lock:
            live = self._live.get(output.request_id)
            if live is None:
                return None
            start, live.sent = live.sent, len(output.generated_tokens)
            if finished:
                del self._live[output.request_id]
        tokens = tuple(output.generated_tokens[start:])
        if not tokens and not finished:
            return None
        return EngineUpdate(
            request_id=output.request_id,
            token_ids=tokens,
            log_probs=_log_probs(output.logprobs, start, len(tokens), live.greedy),
            finished=finished,
            error=output.error,
        )


def _log_probs(logprobs: list[float], start: int, count: int, greedy: bool) -> tuple[float | None, ...]:
    """Log-probabilities of the new tokens under the sampling distribution; None where there is no meaningful one
    (greedy requests: top_k=1 makes every chosen token's probability 1)."""
    chunk = logprobs[start : start + count]
    if greedy or len(chunk) != count:
        return (None,) * count
    return tuple(float(value) for value in chunk)
