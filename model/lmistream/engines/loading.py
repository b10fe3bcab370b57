"""Loading a transformers model and tokenizer for either engine, on every supported stack.

The handler runs on transformers 4.30.2 (LMI 0.23, torch 2.0.1, Python 3.9) up to transformers 5.24 (torch 2.13). The
differences met here are feature-detected, never assumed from one version: the dtype keyword of `from_pretrained`
(`torch_dtype` before 4.56, `dtype` after), `get_text_config` (newer configs only), the out-of-memory exception class
the tokenizer's table of added tokens and whether it can apply a chat template.

`option.gpu_memory_utilization` is honoured on a GPU as vLLM means it, the share of the device's memory that weights,
KV cache and activations may take: the process's CUDA allocator is capped there (`limit_device_memory`), so a request
that needs more fails alone with 507, and the continuous engine sizes its KV cache to what the cap leaves
(`cache_memory_share`). On a CPU neither engine can bound its memory that way, so the option is refused there.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

import torch
import transformers
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..chat_template import render_chat_template
from ..config import HandlerConfig
from ..errors import ConfigError, InvalidRequest, OutOfMemory

logger = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: DJL's option.quantize values for bitsandbytes and their bits
BITSANDBYTES = {"bitsandbytes8": 8, "bitsandbytes4": 4}
#: torch >= 2.5 has torch.OutOfMemoryError; older ones only the CUDA one
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


class HFTokenizer:
    """Adapter from a transformers tokenizer to the `Tokenizer` protocol."""

    def __init__(self, tokenizer: Any, eos_token_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.special_token_ids = frozenset(tokenizer.all_special_ids) | _added_special_ids(tokenizer)
        self.max_token_chars: int = max(map(len, tokenizer.get_vocab()), default=1)
        self.pad_token_id: int = next(
            (i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None),
            min(eos_token_ids, default=0),
        )
        self.chat_template = _chat_template(tokenizer)
        #: whether the chat template renders `tools` (a template without tool support never reads them)
        self.renders_tools = self.chat_template is not None and re.search(r"\btools\b", self.chat_template) is not None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()) -> str:
        """The prompt for a conversation (and the tools it may call, where given) through the model's chat template
        (transformers' own renderer where the tokenizer has one, else `render_chat_template`); InvalidRequest naming
        `messages` when it cannot."""
        if self.chat_template is None:
            raise InvalidRequest(
                'this model has no chat template, so it cannot take messages; send {"inputs": "<prompt>"} instead',
                param="messages",
            )
        try:
            extra = {"tools": list(tools)} if tools else {}
            if getattr(self._tokenizer, "apply_chat_template", None) is not None:
                return self._tokenizer.apply_chat_template(
                    list(messages),
                    chat_template=self.chat_template,
                    tokenize=False,
                    add_generation_prompt=True,
                    **extra,
                )
            return render_chat_template(self.chat_template, messages, {**self._tokenizer.special_tokens_map, **extra})
        except TemplateError as error:
            raise InvalidRequest(
                f"the model's chat template refused these messages: {error}", param="messages"
            ) from None

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)


def _chat_template(tokenizer: Any) -> str | None:
    """The template the tokenizer loaded; older transformers keep it only in `init_kwargs`, and do not read the
    `chat_template.jinja` file newer ones save beside the tokenizer."""
    template = getattr(tokenizer, "chat_template", None) or tokenizer.init_kwargs.get("chat_template")
    if isinstance(template, str):
        return template
    path = os.path.join(str(getattr(tokenizer, "name_or_path", "")), "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as file:
            return file.read()
    return None


def _added_special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of added tokens marked special: `added_tokens_decoder` (transformers >= 4.34), else the fast tokenizer's
    own serialized table, which every version of `tokenizers` writes."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder is not None:
        return frozenset(i for i, token in decoder.items() if token.special)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return frozenset()
    added = json.loads(backend.to_str()).get("added_tokens", [])
    return frozenset(token["id"] for token in added if token.get("special"))


def text_config(model: Any) -> Any:
    """The language model's config (multimodal configs nest it; older transformers have no accessor)."""
    getter = getattr(model.config, "get_text_config", None)
    return getter() if getter is not None else model.config


def device_for(device_id: int) -> torch.device:
    if device_id >= 0 and torch.cuda.is_available():
        return torch.device("cuda", device_id)
    return torch.device("cpu")


def limit_device_memory(config: HandlerConfig, device: torch.device) -> None:
    """Cap this process's allocator on `device` at option.gpu_memory_utilization of its memory (before the weights
    load, so that they count); ConfigError on a CPU, where the transformers engines cannot honour it."""
    share = config.gpu_memory_utilization
    if share is None:
        return
    if device.type != "cuda":
        raise ConfigError(
            f"option.gpu_memory_utilization={share} bounds GPU memory, but this engine runs on {device.type}, where "
            "it cannot bound its memory: remove the option (on CPU only the vLLM engine honours it, as a share of "
            "host RAM)"
        )
    torch.cuda.set_per_process_memory_fraction(share, device)


def cache_memory_share(utilization: float, device: torch.device) -> float:
    """The share of the device's free memory (what transformers' continuous batching sizes its cache from) that
    keeps everything the device holds within `utilization` of its total; ConfigError when nothing is left."""
    torch.cuda.empty_cache()  # as transformers does before it reads the free memory
    free, total = torch.cuda.mem_get_info(device)
    budget = utilization * total - (total - free)
    if budget <= 0:
        raise ConfigError(
            f"option.gpu_memory_utilization={utilization} leaves no memory for the KV cache: the model and the CUDA "
            f"context already take {(total - free) / 2**30:.2f} GiB of the device's {total / 2**30:.2f} GiB; raise it"
        )
    return min(1.0, budget / free)


def torch_dtype(name: str, device: torch.device) -> torch.dtype | str:
    """option.dtype as `from_pretrained` takes it: `auto` is fp32 on a CPU, the checkpoint's own elsewhere."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    _check_matmul(name, device)
    return DTYPES[name]


def _check_matmul(name: str, device: torch.device) -> None:
    """ConfigError naming option.dtype and the device where this torch cannot multiply matrices of that dtype there
    (torch 2.0's CPU kernels have no fp16 addmm: the model would load, then fail its first forward pass)."""
    if device.type != "cpu":
        return
    dtype = DTYPES[name]
    try:
        torch.addmm(torch.zeros(1, 1, dtype=dtype), torch.ones(1, 1, dtype=dtype), torch.ones(1, 1, dtype=dtype))
    except RuntimeError as error:
        raise ConfigError(
            f"option.dtype={name} cannot run on this device (cpu): torch {torch.__version__} has no {name} matrix "
            f"multiply on a CPU ({error}); use option.dtype=fp32 or auto here, or a GPU instance for {name}",
            param="option.dtype",
        ) from None


def _dtype_keyword() -> str:
    """`dtype` since transformers 4.56; `torch_dtype` before (where `dtype` raises a TypeError)."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _pretrained_kwargs(config: HandlerConfig) -> dict[str, Any]:
    """What every `from_pretrained` gets: a local directory never touches the hub."""
    local = os.path.isdir(config.model_id)
    common: dict[str, Any] = {"trust_remote_code": config.trust_remote_code, "local_files_only": local}
    if config.revision is not None and not local:
        common["revision"] = config.revision
    return common


def load_tokenizer(config: HandlerConfig) -> Any:
    """The tokenizer of `config.model_id`, with option.chat_template in place of its own where given."""
    tokenizer = AutoTokenizer.from_pretrained(config.model_id, **_pretrained_kwargs(config))
    if config.chat_template is not None:
        tokenizer.chat_template = chat_template_text(config.chat_template)
    return tokenizer


def chat_template_text(option: str) -> str:
    """option.chat_template as DJL reads it: the path of a template file, else the template itself."""
    if os.path.isfile(option):
        with open(option, encoding="utf-8") as file:
            return file.read()
    return option


def quantization(option: str | None) -> dict[str, Any]:
    """transformers' quantization_config for option.quantize (DJL's bitsandbytes8 / bitsandbytes4), where
    bitsandbytes imports; ConfigError naming the option otherwise."""
    if option is None:
        return {}
    bits = BITSANDBYTES.get(option.lower())
    if bits is None:
        raise ConfigError(
            f"option.quantize={option} is not supported by the transformers engines, which load "
            f"{' or '.join(BITSANDBYTES)} (DJL's names): use one of those, or the vLLM engine "
            "(option.rolling_batch=vllm), which passes it to vLLM",
            param="option.quantize",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"option.quantize={option} needs bitsandbytes, which this Python lacks: add bitsandbytes to "
            "requirements.txt, or drop the option",
            param="option.quantize",
        )
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(**{f"load_in_{bits}bit": True})}


def load(config: HandlerConfig, device: torch.device, **placement: Any) -> tuple[Any, Any]:
    """Tokenizer and model from `config.model_id`, in eval mode on `device` (or as `placement` says, e.g. a
    `tp_plan`), quantized as option.quantize asks."""
    tokenizer = load_tokenizer(config)
    with oom_as_handler_error("loading the model"):
        model = AutoModelForCausalLM.from_pretrained(
            config.model_id,
            **(placement or {"device_map": device}),
            **{_dtype_keyword(): torch_dtype(config.dtype, device)},
            **quantization(config.quantize),
            **_pretrained_kwargs(config),
        )
    return tokenizer, model.eval()


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a sequence: the generation config's eos (an int or a list) and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return frozenset(i for i in [*ids, tokenizer.eos_token_id] if i is not None)


@contextmanager
def oom_as_handler_error(doing: str) -> Iterator[None]:
    """Turn torch / host out-of-memory errors into `OutOfMemory` (DJL answers 507)."""
    try:
        yield
    except OUT_OF_MEMORY as error:
        raise OutOfMemory(f"out of memory while {doing}: {error}") from error


def in_setup_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread that ends with it; return its result or raise its exception.

    PyTorch's OpenMP runtime on Linux (libgomp) gives each thread that runs a parallel region its own pool of worker
    threads, kept until that thread exits. When the pools together hold more threads than there are CPUs, libgomp's
    workers barely spin between regions (GOMP_SPINCOUNT: 100 spins instead of 300,000) and sleep instead, so each of the
    hundreds of small parallel regions in a decode step pays a wake-up. Loading the weights in the caller's thread
    leaves such a pool behind next to the engine's generation thread: with 2 CPUs a SmolLM2 decode step then took about
    65 ms instead of 37 ms, and small ops were 3-6x slower. A pool owned by a finished thread is gone.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the caller, which raises it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="lmistream-engine-setup")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
