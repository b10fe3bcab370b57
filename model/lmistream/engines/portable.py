"""PortableEngine: iteration-level batching over the model's own forward pass and KV cache, on every stack.

For images whose transformers lacks continuous batching (LMI 0.23: transformers 4.30.2, torch 2.0.1, Python 3.9). One
loop thread runs steps. At each step boundary it takes a `StepPlan` from the `Scheduler`: cancelled rows leave the
batch, and new requests (within `max_rolling_batch_size` rows and the prefill token budget) are prefilled together and
joined to it (`DecodeBatch`); then one forward pass decodes every row. Rows that end on eos or length leave at once,
so a slot is free at the next boundary. Sampling is per request (`sampling`), seed and repetition penalty included; a
request asking for its prompt's log-probabilities gets them from a pass of its own when it joins.

A prompt starts from the longest prefix of it whose KV the prefix cache holds (`prefix_cache`,
option.enable_prefix_caching, on by default; not for LoRA rows, whose KV depends on the adapter) and prefills only the
rest; its full blocks are stored once it is prefilled whole, so a request cancelled or failed before that stores
nothing. With option.max_rolling_batch_prefill_tokens a longer prompt is prefilled a chunk per step, each step also
decoding the running rows, so that it does not stall their streams. Where the model allows (`packed_attention`; not
with LoRA, whose adapters are routed by batch row), the rows' decode step, the prompts joining whole and the next chunk
are one forward pass over unpadded segments, which a CPU runs in much less time than padded passes apart.

Tensor-parallel ranks stay in lockstep because a step is a pure function of its plan and the model: admitted requests
carry their seeds, nothing in a step reads the clock or the queue, and finishing on eos or length depends only on the
sampled tokens, which every rank computes alike; each rank's prefix cache (of its own shard) sees the same requests in
the same order, so it finds the same hits. So rank 0 plans and sends each plan over a broadcast channel
(`distributed`) before executing it, and the other ranks execute the plans they receive.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import torch

from ..adapters import AdapterSpec
from ..config import HandlerConfig
from ..engine import EngineUpdate, UpdateCallback, deliver
from ..errors import ConfigError, EngineError, HandlerError
from ..params import GenerationParams
from .batch import DecodeBatch, LayerKV, ModelCaller
from .constraints import GrammarCompiler
from .distributed import TensorParallel, load_sharded, parameter_bytes
from .loading import (
    HFTokenizer,
    device_for,
    eos_token_ids,
    in_setup_thread,
    limit_device_memory,
    load,
    oom_as_handler_error,
    text_config,
)
from .lora import LoraLayers
from .packed_attention import PackedPass, Segment, supports_packing
from .prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixCache, uniform_layers
from .sampling import RequestSampler, select_tokens
from .scheduler import QueuedRequest, Scheduler, StepPlan

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0
#: which forward pass over the batch is about to run: joining prompts (a chunk of one included), or the running rows
ForwardPass = Literal["prefill", "decode"]
Result = TypeVar("Result")


@dataclass
class _Row:
    """A running request: its sampler and how many tokens it may still make."""

    request_id: str
    sampler: RequestSampler
    remaining: int
    adapter: str | None = None
    prefill: tuple[tuple[int, float | None], ...] = ()  # the prompt's log-probabilities, for the first update
    #: prompt tokens whose KV came from the prefix cache
    cached_tokens: int = 0


@dataclass
class _Prefill:
    """An admitted request on its way through prefill: the KV of its first `done` prompt tokens (from the prefix
    cache, or from the chunks prefilled so far) and the chain keys its prompt is stored under once prefilled whole
    (none when it is not cached)."""

    row: _Row
    prompt: tuple[int, ...]
    keys: list[bytes]
    past: list[LayerKV] | None = None
    done: int = 0
    #: whether the request asks for its prompt's log-probabilities (`decoder_input_details`)
    prompt_logprobs: bool = False
    #: the prompt's own cache, growing a chunk per packed pass (`packed_attention`); None until its first
    cache: Any = None


class PortableEngine:
    """The `Engine` protocol over a transformers causal LM loaded from `config.model_id`."""

    def __init__(self, config: HandlerConfig, tp: TensorParallel | None = None) -> None:
        self._device = device_for(tp.ranks.local_rank if tp and config.device_id >= 0 else config.device_id)
        limit_device_memory(config, self._device)
        hf_tokenizer, model, self.load_path = in_setup_thread(lambda: _load(config, self._device, tp))
        self.parameter_bytes = parameter_bytes(model)
        self._plans = tp.channel() if tp is not None else None
        self.tokenizer = HFTokenizer(hf_tokenizer, eos_token_ids(model, hf_tokenizer))
        self.max_sequence_length: int = text_config(model).max_position_embeddings
        self._grammars = GrammarCompiler(hf_tokenizer, text_config(model).vocab_size)
        self._call = ModelCaller(model)
        # with tensor parallelism only transformers' tp_plan shards adapters (`engines.check_lora`, before the load)
        cpu_loras = config.max_cpu_loras or config.max_loras
        shard = (tp.ranks.rank, tp.degree) if tp is not None else None
        self._lora = LoraLayers(model, self._device, config.max_loras, cpu_loras, shard) if config.enable_lora else None
        self._scheduler = Scheduler(
            config.max_rolling_batch_size, config.max_rolling_batch_prefill_tokens, config.max_loras
        )
        self._chunk_tokens = config.max_rolling_batch_prefill_tokens
        self._batch: DecodeBatch | None = None
        self._rows: list[_Row] = []
        self._chunking: list[_Prefill] = []  # admitted prompts longer than a chunk, first in line first
        self._on_update: UpdateCallback | None = None
        self._forward_observers: list[Callable[[ForwardPass], None]] = []
        self._thread: threading.Thread | None = None
        token_bytes = in_setup_thread(lambda: self._call.probe(self._device))
        self.prefix_cache = self._prefix_cache(config, token_bytes)
        # joining prompts and the rows' decode step share a pass where the model allows it; LoRA routes adapters by row
        packs = not config.enable_lora and supports_packing(model, self._call.template)
        self._packed = PackedPass(model) if packs else None

    def _prefix_cache(self, config: HandlerConfig, token_bytes: int) -> PrefixCache | None:
        if not config.enable_prefix_caching:
            return None
        if not uniform_layers(self._call.template):
            logger.warning("prefix caching is off: this model's layers differ in the shape of their KV")
            return None
        return PrefixCache(config.prefix_cache_bytes or DEFAULT_PREFIX_CACHE_BYTES, token_bytes)

    # -- the Engine protocol -------------------------------------------------------------------------------------
    def start(self, on_update: UpdateCallback) -> None:
        if self._thread is not None:
            raise EngineError("the engine is already started")
        self._on_update = on_update
        self._thread = threading.Thread(target=self._loop, name="portable-engine", daemon=True)
        self._thread.start()

    def validate(self, params: GenerationParams) -> None:
        """Every parameter is honoured per request; a constraint must compile."""
        if params.constraint is not None:
            self._grammars.check(params.constraint)

    def add_adapter(self, spec: AdapterSpec) -> None:
        """Serve a LoRA adapter (validated against the model first); ConfigError when LoRA is off."""
        if self._lora is None:
            raise ConfigError(f"adapter {spec.name!r}: LoRA adapters need option.enable_lora=true")
        self._lora.add(spec)

    def remove_adapter(self, name: str) -> None:
        if self._lora is not None:
            self._lora.remove(name)

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise EngineError("the generation loop is not running (stopped or crashed); the request was not queued")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self._scheduler.submit(QueuedRequest(request_id, tuple(prompt_ids), params, seed))

    def cancel(self, request_id: str) -> None:
        self._scheduler.cancel(request_id)

    def stop(self) -> None:
        """End the loop (on every rank: the stop is a plan); requests still running get an error update."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._scheduler.stop()
        thread.join(timeout=STOP_TIMEOUT_S)

    # -- what observers (tests, benchmarks) read of the batch ---------------------------------------------------------
    @property
    def running(self) -> int:
        """Requests holding a slot of the running batch."""
        return self._scheduler.running

    @property
    def batch_rows(self) -> int:
        """Rows the decode batch holds."""
        return len(self._rows)

    def idle(self) -> bool:
        """Whether every slot is free and no decode batch is kept."""
        return self.running == 0 and self._batch is None

    @property
    def prefilling(self) -> dict[str, int]:
        """The prompts on their way through chunked prefill, first in line first: request id -> prompt tokens whose
        KV is known so far (cached or prefilled)."""
        return {p.row.request_id: p.done for p in list(self._chunking)}

    def observe_forward_passes(self, observer: Callable[[ForwardPass], None]) -> None:
        """Call `observer` in the loop's thread before each forward pass over the batch; an exception it raises fails
        that pass as the model's own would (instrumentation: a test's count of steps, and its injected faults)."""
        self._forward_observers.append(observer)

    # -- the loop ------------------------------------------------------------------------------------------------
    def _next_plan(self) -> StepPlan:
        """Rank 0 (or a lone engine) plans and tells the other ranks; they execute what they are told."""
        if self._plans is None:
            return self._scheduler.plan()
        if not self._plans.leader:
            return self._plans.receive()
        plan = self._scheduler.plan()
        self._plans.send(plan)
        return plan

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    plan = self._next_plan()
                except Exception as error:  # another rank is gone: nothing more can run here
                    logger.error("portable engine: the tensor-parallel group broke (%s)", error)
                    self._fail([p.row for p in self._chunking], f"a tensor-parallel rank failed: {error}")
                    self._fail(self._rows, f"a tensor-parallel rank failed: {error}")
                    return
                if plan.stop:
                    self._fail([p.row for p in self._chunking], "the engine stopped")
                    self._fail(self._rows, "the engine stopped")
                    return
                try:
                    with oom_as_handler_error("generating"):
                        self.step(plan)
                except HandlerError as error:
                    self._fail(self._rows, error.message, error.status)
                except Exception as error:  # a failed step fails the rows it ran, never the loop
                    logger.exception("portable engine step failed")
                    self._fail(self._rows, f"generation failed: {error}")

    def step(self, plan: StepPlan) -> None:
        """Apply one plan: drop cancelled rows, prefill and join admitted ones (a prompt longer than a chunk: its
        next chunk), decode every row once; in one packed pass where the model allows."""
        if plan.cancel:
            cancelled = set(plan.cancel)
            self._keep([i for i, row in enumerate(self._rows) if row.request_id not in cancelled])
            self._chunking = [p for p in self._chunking if p.row.request_id not in cancelled]
        whole = self._join(plan.admit) if plan.admit else []
        if self._packed is not None and (whole or self._chunking):
            self._packed_step(self._packed, whole)
            return
        if whole:
            self._prefill(whole)
        if self._chunking:
            self._prefill_chunk()
        self._decode()

    def _decode(self) -> None:
        if self._batch is not None:
            self._route([row.adapter for row in self._rows])
            self._before_forward("decode")
            logits = self._batch.decode(self._call)
            self._advance(self._batch, self._rows, logits)

    def _join(self, admitted: tuple[QueuedRequest, ...]) -> list[_Prefill]:
        """Start the admitted requests from their cached prefixes; queue those longer than a chunk to be prefilled a
        chunk per step, and return the others, to be prefilled whole in this step."""
        pending = [self._from_cache(request) for request in admitted]
        chunk = self._chunk_tokens
        self._chunking.extend(p for p in pending if chunk is not None and len(p.prompt) - p.done > chunk)
        return [p for p in pending if chunk is None or len(p.prompt) - p.done <= chunk]

    def _from_cache(self, request: QueuedRequest) -> _Prefill:
        """The request's row and what the prefix cache holds of its prompt (LoRA rows are not cached: their KV
        depends on the adapter)."""
        params = request.params
        grammar = self._grammars.matcher(params.constraint) if params.constraint else None
        sampler = RequestSampler(params, request.seed, list(request.prompt_ids), self._device, grammar)
        row = _Row(request.request_id, sampler, params.max_new_tokens, params.adapter)
        prompt = request.prompt_ids
        if self.prefix_cache is None or params.adapter is not None:
            return _Prefill(row, prompt, [], prompt_logprobs=params.prompt_logprobs)
        keys = self.prefix_cache.keys(prompt)
        past = self.prefix_cache.match(keys, len(prompt))
        row.cached_tokens = 0 if past is None else past[0][0].size(1)
        return _Prefill(row, prompt, keys, past, row.cached_tokens, params.prompt_logprobs)

    def _prefill_chunk(self) -> None:
        """The next chunk of the first prompt in line; its last chunk joins it to the batch."""
        pending = self._chunking.pop(0)
        assert self._chunk_tokens is not None  # prompts queue for chunks only when chunks have a size
        end = pending.done + self._chunk_tokens
        if end >= len(pending.prompt):
            self._prefill([pending])
        elif self._prefill([pending], end):
            self._chunking.insert(0, pending)

    def _packed_step(self, packed: PackedPass, whole: list[_Prefill]) -> None:
        """The running rows' decode step, the prompts joining whole and the next chunk of the first prompt in line, in
        one pass; the prompts it ends join the batch. A failed pass fails those prompts alone: the rows' step is
        undone and runs on its own."""
        batch, parts = self._batch, [(p, len(p.prompt)) for p in whole]
        if self._chunking:
            head = self._chunking[0]
            assert self._chunk_tokens is not None  # prompts queue for chunks only when chunks have a size
            parts.append((head, min(head.done + self._chunk_tokens, len(head.prompt))))
        columns = batch.mask.size(1) if batch is not None else 0

        def packed_pass() -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
            for pending, end in parts:
                if end == len(pending.prompt) and pending.prompt_logprobs:
                    pending.row.prefill = self._call.prompt_log_probs(list(pending.prompt), self._device)
            self._before_forward("prefill")
            return packed(batch, [_segment(pending, end, self._cache_of(pending)) for pending, end in parts])

        if batch is not None:
            self._before_forward("decode")
        result = self._guarded([pending.row for pending, _ in parts], packed_pass)
        if result is None:
            self._chunking = [p for p in self._chunking if all(p is not pending for pending, _ in parts)]
            if batch is not None:  # the rows' step again, on its own (its observers have seen it)
                batch.trim(columns)
                self._advance(batch, self._rows, batch.decode(self._call))
            return
        row_logits, prompt_logits = result
        if batch is not None and row_logits is not None:
            self._advance(batch, self._rows, row_logits)
        for pending, end in parts:
            pending.done = end
        ended = [(pending, logits) for (pending, _), logits in zip(parts, prompt_logits) if logits is not None]
        if ended:
            prompts = [pending for pending, _ in ended]
            self._chunking = [p for p in self._chunking if all(p is not pending for pending in prompts)]
            joined = DecodeBatch.of_prompts([p.cache for p in prompts], [p.done for p in prompts], self._call)
            self._join_prefilled(joined, prompts, torch.stack([logits for _, logits in ended]))

    def _cache_of(self, pending: _Prefill) -> Any:
        """The prompt's own cache for packed passes: made at its first from what the prefix cache held of it."""
        if pending.cache is None:
            past = [(keys[None], values[None]) for keys, values in pending.past or ()]
            pending.cache = self._call.cache_of(past) if past else self._call.empty_cache()
            pending.past = None  # the cache copies it into its buffers at the first append
        return pending.cache

    def _prefill(self, pending: list[_Prefill], end: int | None = None) -> bool:
        """Prefill these prompts from where each stands: up to `end` (a chunk of one prompt, its KV kept for the next)
        or whole, then join them to the batch (`_join_prefilled`). A failure fails them alone, and the running rows go
        on; False then."""

        def prefill() -> tuple[DecodeBatch, torch.Tensor]:
            for p in pending:
                if end is None and p.prompt_logprobs:  # once, over the whole prompt, when it joins the batch
                    self._route([p.row.adapter])
                    p.row.prefill = self._call.prompt_log_probs(list(p.prompt), self._device)
            self._route([p.row.adapter for p in pending])
            self._before_forward("prefill")
            batch, logits = DecodeBatch.prefill(
                self._call,
                [list(p.prompt[p.done : end]) for p in pending],
                self.tokenizer.pad_token_id,
                self._device,
                [p.past for p in pending],
            )
            if end is not None:
                pending[0].past, pending[0].done = batch.row_kv(0), end
            return batch, logits

        result = self._guarded([p.row for p in pending], prefill)
        if result is None:
            return False
        batch, logits = result
        return end is not None or self._join_prefilled(batch, pending, logits)

    def _join_prefilled(self, batch: DecodeBatch, pending: list[_Prefill], logits: torch.Tensor) -> bool:
        """Store prompts prefilled whole in the prefix cache, pick their first tokens and join the rows that go on to
        the running batch; a failure before the join fails them alone (False then)."""
        rows = [p.row for p in pending]

        def first_tokens() -> DecodeBatch:
            self._store(batch, pending)
            self._advance(batch, rows, logits)
            return batch

        if self._guarded(rows, first_tokens) is None:
            return False
        if rows:
            self._extend(batch, rows)
        return True

    def _guarded(self, rows: list[_Row], prefill: Callable[[], Result]) -> Result | None:
        """Run a prefill; a failure fails these joining rows alone (None then), and the running rows go on."""
        try:
            with oom_as_handler_error("prefilling"):
                return prefill()
        except HandlerError as error:
            self._fail(rows, error.message, error.status)
        except Exception as error:
            logger.exception("portable engine prefill failed")
            self._fail(rows, f"prefill failed: {error}")
        return None

    def _store(self, batch: DecodeBatch, pending: list[_Prefill]) -> None:
        """Keep the full blocks of prompts prefilled whole, before any of them can leave the batch."""
        if self.prefix_cache is None:
            return
        for index, item in enumerate(pending):
            if item.keys:
                self.prefix_cache.store(item.keys, batch.row_kv(index))

    def _extend(self, batch: DecodeBatch, rows: list[_Row]) -> None:
        if self._batch is None:
            self._batch, self._rows = batch, rows
        else:
            self._batch.extend(batch)
            self._rows.extend(rows)

    def _route(self, adapters: list[str | None]) -> None:
        if self._lora is not None:
            self._lora.route(adapters)

    def _before_forward(self, kind: ForwardPass) -> None:
        for observer in self._forward_observers:
            observer(kind)

    def _advance(self, batch: DecodeBatch, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token, hand it over, and remove the rows that ended (in place)."""
        tokens, log_probs, tops = select_tokens(logits, [row.sampler for row in rows])
        finished = []
        for row, token, log_prob, top in zip(rows, tokens, log_probs, tops):
            row.remaining -= 1
            on_eos = token in self.tokenizer.eos_token_ids and not row.sampler.params.ignore_eos
            done = row.remaining <= 0 or on_eos
            if done:
                finished.append(row.request_id)
            update = EngineUpdate(
                row.request_id,
                (token,),
                (log_prob,),
                (top,) if top else (),
                prefill=row.prefill,
                finished=done,
                cached_tokens=row.cached_tokens,
            )
            row.prefill = ()
            deliver(self._on_update, update)
        batch.set_next_tokens(tokens)
        if finished:
            self._scheduler.finished(finished)
            ended = set(finished)
            keep = [i for i, row in enumerate(rows) if row.request_id not in ended]
            _keep_rows(batch, rows, keep)
            if batch is self._batch and not rows:
                self._batch = None

    def _keep(self, keep: list[int]) -> None:
        if self._batch is not None:
            _keep_rows(self._batch, self._rows, keep)
            if not self._rows:
                self._batch = None

    def _fail(self, rows: list[_Row], message: str, code: int = 424) -> None:
        """End these rows with an error update; failing the running rows empties the batch."""
        ids = [row.request_id for row in rows]
        if rows is self._rows:
            self._batch, self._rows = None, []
        self._scheduler.finished(ids)
        for request_id in ids:
            deliver(self._on_update, EngineUpdate(request_id, finished=True, error=message, code=code))


def _load(config: HandlerConfig, device: torch.device, tp: TensorParallel | None) -> tuple[Any, Any, str]:
    if tp is not None:
        return load_sharded(config, device, tp)
    return (*load(config, device), "one device")


def _segment(pending: _Prefill, end: int, cache: Any) -> Segment:
    """A prompt's tokens from where it stands up to `end`, as a packed pass's segment over its own cache."""
    return Segment(list(pending.prompt[pending.done : end]), cache, pending.done, end == len(pending.prompt))


def _keep_rows(batch: DecodeBatch, rows: list[_Row], keep: list[int]) -> None:
    """Keep these rows of a batch and of its parallel row list, in place."""
    batch.keep(keep)
    rows[:] = [rows[i] for i in keep]
