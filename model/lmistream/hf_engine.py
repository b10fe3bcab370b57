"""HFEngine: the `Engine` protocol over transformers' continuous batching (`ContinuousBatchingManager`).

This is the only module of lmistream that imports torch and transformers. The manager runs its own generation thread;
this engine adds a reader thread that turns the manager's streamed `GenerationOutput`s (each holds all the tokens of a
request so far) into `EngineUpdate`s that hold only the new tokens, and hands them to the handler's callback.

Sampling settings are per request: the manager is created with sampling on and non-neutral temperature / top-k / top-p
(transformers only builds a processor for a setting that differs from its neutral value), and every request passes all
three explicitly. A greedy request samples with top_k=1, which is argmax.

On CPU, transformers' per-request top-k and top-p processors sort every row of the logits (the whole vocabulary, for
every request, greedy ones included) at each step: with SmolLM2's 49k vocabulary that is about 3 ms per processor per
row on one core, more than the tiny model's whole decode step. `_RowwiseTopK` / `_RowwiseTopP` replace them with
exact equivalents that skip the rows where the setting is neutral and find the top-k threshold with `torch.topk`.

Loading the model and starting the manager run in a short-lived thread (`_in_setup_thread`), so that the caller's
thread (DJL's long-lived handler thread) never owns an OpenMP thread pool: see that function for why this matters.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)

from .config import HandlerConfig
from .engine import EngineUpdate, UpdateCallback
from .errors import ConfigError, EngineError, OutOfMemory
from .params import GenerationParams

logger = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: manager-wide defaults; each only needs to be non-neutral so that its per-request processor exists
PROCESSOR_DEFAULTS = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
#: on CPU transformers would size the KV cache (and its attention masks) to most of the host RAM: bound both
CPU_MAX_BATCH_TOKENS = 512
CPU_KV_CACHE_BYTES = 1 << 30
PAGE_SIZE = ContinuousBatchingConfig.page_size
READER_WAKEUP_S = 0.2
STOP_TIMEOUT_S = 30.0


class HFTokenizer:
    """Adapter from a transformers tokenizer to the `Tokenizer` protocol."""

    def __init__(self, tokenizer: Any, eos_token_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        added_special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        self.special_token_ids = frozenset(tokenizer.all_special_ids) | frozenset(added_special)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)


@dataclass
class _Live:
    """What the reader tracks for a request that is still generating."""

    greedy: bool
    sent: int = 0


class HFEngine:
    """Continuous-batching generation with a transformers model loaded from `config.model_id`."""

    def __init__(self, config: HandlerConfig) -> None:
        if config.tensor_parallel_degree is not None and config.tensor_parallel_degree > 1:
            raise ConfigError(
                f"option.tensor_parallel_degree={config.tensor_parallel_degree} is not supported by the transformers "
                "engine yet; use 1 (one model copy per device)"
            )
        self._config = config
        self._device = _device(config.device_id)
        hf_tokenizer, self._model = _in_setup_thread(lambda: _load(config, self._device))
        self.tokenizer = HFTokenizer(hf_tokenizer, _eos_token_ids(self._model, hf_tokenizer))
        text_config = self._model.config.get_text_config()
        self.max_sequence_length: int = text_config.max_position_embeddings
        self._vocab_size: int = text_config.vocab_size
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
        self._manager = manager = _in_setup_thread(self._start_manager)
        self._stopping.clear()
        self._reader = threading.Thread(target=self._read, args=(manager,), name="hf-engine-reader", daemon=True)
        self._reader.start()

    def _start_manager(self) -> Any:
        manager = self._model.init_continuous_batching(
            generation_config=self._generation_config(), continuous_batching_config=self._batching_config()
        )
        if self._device.type == "cpu":
            _use_rowwise_processors(manager.logit_processor.logits_processor)
        with _oom_as_handler_error("allocating the KV cache"), torch.inference_mode():
            manager.warmup()  # builds the cache now, so a memory error fails start() instead of the loop thread
            manager.start()  # the generation thread outlives this setup thread
        return manager

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
            eos_token_id=sorted(self.tokenizer.eos_token_ids),
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

    def _generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            do_sample=True,
            eos_token_id=sorted(self.tokenizer.eos_token_ids),
            max_new_tokens=self._config.max_new_tokens,
            **PROCESSOR_DEFAULTS,
        )

    def _batching_config(self) -> ContinuousBatchingConfig:
        """Map the rolling-batch options onto the continuous batching knobs (and bound the cache on CPU)."""
        settings: dict[str, Any] = {
            "per_request_processors": True,
            "return_logprobs": True,
            "max_requests_per_batch": self._config.max_rolling_batch_size,
            "max_batch_tokens": self._config.max_rolling_batch_prefill_tokens,
        }
        if self._device.type == "cpu":
            settings["max_batch_tokens"] = self._config.max_rolling_batch_prefill_tokens or CPU_MAX_BATCH_TOKENS
            settings["num_blocks"] = self._cpu_cache_blocks()
        return ContinuousBatchingConfig(**settings)

    def _cpu_cache_blocks(self) -> int:
        """Enough KV blocks for a full batch of longest sequences, within CPU_KV_CACHE_BYTES (never below one)."""
        text = self._model.config.get_text_config()
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
        if update is None or self._on_update is None:
            return
        try:
            self._on_update(update)
        except Exception:  # a faulty callback must not kill the reader (and with it every other request)
            logger.exception("on_update failed for request %s", update.request_id)

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


class _RowwiseTopK(ContinuousBatchingTopKLogitsWarper):
    """Per-request top-k without sorting the vocabulary: rows with top_k >= vocab are left alone, the others get their
    k-th largest score from one `torch.topk` (k = the largest top_k among them; greedy rows need only k = 1). The
    threshold and the mask (`score < threshold`, ties kept) are the ones transformers computes with a full sort."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_k = tensor_arg[: scores.size(0)].clamp(max=scores.size(-1))
        rows = (top_k < scores.size(-1)).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return scores
        k = top_k[rows].long().unsqueeze(-1)
        selected = scores[rows]
        largest = torch.topk(selected, int(k.max()), dim=-1).values  # sorted descending
        thresholds = largest.gather(-1, k - 1)
        return scores.index_put((rows,), selected.masked_fill(selected < thresholds, self.filter_value))


class _RowwiseTopP(ContinuousBatchingTopPLogitsWarper):
    """Per-request top-p on the rows with top_p < 1 only (transformers' sort-based code, on those rows). With top_p = 1
    it would only mask tokens whose probability is already 0, which sampling never picks."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        rows = (top_p < 1.0).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return scores
        return scores.index_put((rows,), super().__call__(scores[rows], tensor_arg[rows]))


def _use_rowwise_processors(processors: list) -> None:
    """Swap the manager's per-request top-k / top-p processors (in place) for the row-skipping versions, keeping their
    settings and their positions (each owns one row of the manager's per-request argument tensor)."""
    replacements = {ContinuousBatchingTopKLogitsWarper: _RowwiseTopK, ContinuousBatchingTopPLogitsWarper: _RowwiseTopP}
    for index, processor in enumerate(processors):
        cheaper = replacements.get(type(processor))
        if cheaper is not None:
            replacement = cheaper.__new__(cheaper)
            replacement.__dict__.update(vars(processor))
            processors[index] = replacement


def _log_probs(logprobs: list[float], start: int, count: int, greedy: bool) -> tuple[float | None, ...]:
    """Log-probabilities of the new tokens under the sampling distribution; None where there is no meaningful one
    (greedy requests: top_k=1 makes every chosen token's probability 1)."""
    chunk = logprobs[start : start + count]
    if greedy or len(chunk) != count:
        return (None,) * count
    return tuple(float(value) for value in chunk)


def _in_setup_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread that ends with it; return its result or raise its exception.

    PyTorch's OpenMP runtime on Linux (libgomp) gives each thread that runs a parallel region its own pool of worker
    threads, kept until that thread exits. When the pools together hold more threads than there are CPUs, libgomp's
    workers barely spin between regions (GOMP_SPINCOUNT: 100 spins instead of 300,000) and sleep instead, so each of the
    hundreds of small parallel regions in a decode step pays a wake-up. Loading the weights in the caller's thread
    leaves such a pool behind next to the manager's generation thread: with 2 CPUs a SmolLM2 decode step then took about
    65 ms instead of 37 ms, and small ops were 3-6x slower. A pool owned by a finished thread is gone.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the caller, which raises it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="hf-engine-setup")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _device(device_id: int) -> torch.device:
    if device_id >= 0 and torch.cuda.is_available():
        return torch.device("cuda", device_id)
    return torch.device("cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype | str:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return DTYPES[name]


def _load(config: HandlerConfig, device: torch.device) -> tuple[Any, Any]:
    """Tokenizer and model from `config.model_id`; a local directory never touches the hub."""
    local = os.path.isdir(config.model_id)
    common = {"trust_remote_code": config.trust_remote_code, "local_files_only": local}
    tokenizer = AutoTokenizer.from_pretrained(config.model_id, **common)
    with _oom_as_handler_error("loading the model"):
        model = AutoModelForCausalLM.from_pretrained(
            config.model_id, dtype=_dtype(config.dtype, device), device_map=device, **common
        )
    return tokenizer, model.eval()


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a sequence: the generation config's eos (an int or a list) and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return frozenset(i for i in [*ids, tokenizer.eos_token_id] if i is not None)


@contextmanager
def _oom_as_handler_error(doing: str) -> Iterator[None]:
    """Turn torch / host out-of-memory errors into `OutOfMemory` (DJL answers 507)."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise OutOfMemory(f"out of memory while {doing}: {error}") from error
