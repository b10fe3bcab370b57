"""Loading a transformers model and tokenizer for either engine, on every supported stack.

The handler runs on transformers 4.30.2 (LMI 0.23, torch 2.0.1, Python 3.9) up to transformers 5.24 (torch 2.13). The
differences met here are feature-detected, never assumed from one version: the dtype keyword of `from_pretrained`
(`torch_dtype` before 4.56, `dtype` after), `get_text_config` (newer configs only), the out-of-memory exception class
the tokenizer's table of added tokens and whether it can apply a chat template.
"""

from __future__ import annotations

import json
import logging
import os
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
from ..errors import InvalidRequest, OutOfMemory

logger = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt for a conversation through the model's chat template (transformers' own renderer where the
        tokenizer has one, else `render_chat_template`); InvalidRequest naming `messages` when it cannot."""
        if self.chat_template is None:
            raise InvalidRequest(
                'this model has no chat template, so it cannot take messages; send {"inputs": "<prompt>"} instead',
                param="messages",
            )
        try:
            if getattr(self._tokenizer, "apply_chat_template", None) is not None:
                return self._tokenizer.apply_chat_template(
                    list(messages), chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
                )
            return render_chat_template(self.chat_template, messages, self._tokenizer.special_tokens_map)
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


def _dtype(name: str, device: torch.device) -> torch.dtype | str:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return DTYPES[name]


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
    """The tokenizer of `config.model_id`."""
    return AutoTokenizer.from_pretrained(config.model_id, **_pretrained_kwargs(config))


def load(config: HandlerConfig, device: torch.device, **placement: Any) -> tuple[Any, Any]:
    """Tokenizer and model from `config.model_id`, in eval mode on `device` (or as `placement` says, e.g. a
    `tp_plan`)."""
    tokenizer = load_tokenizer(config)
    with oom_as_handler_error("loading the model"):
        model = AutoModelForCausalLM.from_pretrained(
            config.model_id,
            **(placement or {"device_map": device}),
            **{_dtype_keyword(): _dtype(config.dtype, device)},
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
