"""HandlerConfig: the init properties DJL hands to the handler, parsed once into a frozen, typed object.

DJL strips the `option.` prefix and adds its own keys (handler, model_dir, device_id, ...). Every value arrives
as a string (MPI mode passes tensor_parallel_degree as an int). No torch here: this module also validates
serving.properties on the host before a deploy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

from .dialect import DjlGeneration
from .errors import ConfigError
from .params import MAX_NEW_TOKENS

DTYPES = ("auto", "fp32", "fp16", "bf16")
#: DJL's other spellings of the dtypes (its vLLM properties take torch's names too)
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
STREAMING_VALUES = ("true", "false", "huggingface")
GENERATION_ENGINES = ("auto", "continuous", "portable", "vllm")
#: option.tool_call_parser's values (vLLM's names; `lmistream.tool_parsers` reads them)
TOOL_CALL_PARSERS = ("hermes", "llama3_json")


@dataclass(frozen=True)
class HandlerConfig:
    """Typed handler settings; build with `HandlerConfig.from_properties`."""

    model_id: str
    dtype: str = "auto"
    trust_remote_code: bool = False
    tensor_parallel_degree: int | None = None
    rolling_batch: str | None = None
    max_rolling_batch_size: int = 32
    max_rolling_batch_prefill_tokens: int | None = None
    enable_prefix_caching: bool = True
    #: bytes of prompt-prefix KV the portable engine keeps; None: its default
    prefix_cache_bytes: int | None = None
    enable_streaming: str = "false"
    output_formatter: str | None = None
    max_new_tokens: int = 256
    async_mode: bool = False
    device_id: int = -1
    generation_engine: str = "auto"
    revision: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    #: where `adapters/` is looked for: DJL's model directory (model_dir), else model_id
    model_dir: str | None = None
    chat_template: str | None = None
    tgi_compat: bool = False
    #: option.quantize (or vLLM's name, option.quantization) as given
    quantize: str | None = None
    #: option.tool_call_parser: the parser reading tool_choice "auto" answers back (None: "auto" is refused)
    tool_call_parser: str | None = None
    #: option.enable_auto_tool_choice as given (None: not given); false turns tool_choice "auto" off
    enable_auto_tool_choice: bool | None = None
    #: every init property as given (strings), for the option table's checks and vLLM's pass-through
    options: tuple[tuple[str, str], ...] = ()
    #: not an option: the DJL generation driving the handler, set by the service
    djl_generation: DjlGeneration = DjlGeneration.NEWEST

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> HandlerConfig:
        """Parse DJL's init properties (`option.` already stripped); raise ConfigError naming the option."""
        p = _Props(props)
        model_id = p.text("model_id") or p.text("model_dir")
        if not model_id:
            raise ConfigError(
                "option.model_id is required (or a model directory holding the weights)", param="option.model_id"
            )
        quantize = p.text("quantize") or p.text("quantization")
        return cls(
            model_id=model_id,
            dtype=p.dtype("dtype", default=p.dtype("data_type", default="auto")),
            trust_remote_code=p.boolean("trust_remote_code", default=False),
            tensor_parallel_degree=p.integer("tensor_parallel_degree", minimum=1, allow_max=True),
            rolling_batch=p.text("rolling_batch"),
            max_rolling_batch_size=p.integer("max_rolling_batch_size", minimum=1, default=32),
            max_rolling_batch_prefill_tokens=p.integer("max_rolling_batch_prefill_tokens", minimum=1),
            enable_prefix_caching=p.boolean("enable_prefix_caching", default=True),
            prefix_cache_bytes=p.integer("prefix_cache_bytes", minimum=0),
            enable_streaming=p.choice("enable_streaming", STREAMING_VALUES, default="false"),
            output_formatter=p.text("output_formatter"),
            max_new_tokens=p.integer("max_new_tokens", minimum=1, maximum=MAX_NEW_TOKENS, default=256),
            async_mode=p.boolean("async_mode", default=False),
            device_id=p.integer("device_id", minimum=-1, default=-1),
            generation_engine=p.choice("generation_engine", GENERATION_ENGINES, default="auto"),
            revision=p.text("revision"),
            max_model_len=p.integer("max_model_len", minimum=1),
            gpu_memory_utilization=p.fraction("gpu_memory_utilization"),
            enforce_eager=p.boolean("enforce_eager", default=False),
            enable_lora=p.boolean("enable_lora", default=False),
            max_loras=p.integer("max_loras", minimum=1, default=4),
            max_lora_rank=p.integer("max_lora_rank", minimum=1, default=16),
            max_cpu_loras=p.integer("max_cpu_loras", minimum=1),
            model_dir=p.text("model_dir"),
            chat_template=p.text("chat_template"),
            tgi_compat=p.boolean("tgi_compat", default=False),
            quantize=None if quantize is None or quantize.lower() == "none" else quantize,
            tool_call_parser=_tool_call_parser(p),
            enable_auto_tool_choice=p.boolean("enable_auto_tool_choice", default=None),
            options=tuple((str(key), str(value)) for key, value in props.items()),
        )

    def rolling_batch_enabled(self) -> bool:
        """Whether DJL drives this model with its rolling-batch loop (0.23: any value; newest: not 'disable')."""
        if self.rolling_batch is None:
            return False
        return self.rolling_batch.lower() != "disable" or not self.djl_generation.dialect.honours_rolling_disable

    @property
    def auto_tool_parser(self) -> str | None:
        """The parser tool_choice "auto" answers are read with, unless option.enable_auto_tool_choice=false."""
        return None if self.enable_auto_tool_choice is False else self.tool_call_parser

    @property
    def streaming(self) -> bool:
        """Whether a non-rolling-batch response streams (0.23 treats any value but 'false' as on)."""
        return self.enable_streaming != "false"


def served_model_name(model_id: str) -> str:
    """The model name answers carry, and `/v1/models` lists, when a request names none: the model directory's or hub
    id's last part."""
    return model_id.rstrip("/").rsplit("/", 1)[-1]


def _tool_call_parser(p: _Props) -> str | None:
    value = p.choice("tool_call_parser", (*TOOL_CALL_PARSERS, "none"), default="none")
    return None if value == "none" else value


class _Props:
    """Typed readers over the raw property mapping; each error names `option.<key>` and the allowed range."""

    def __init__(self, props: Mapping[str, Any]) -> None:
        self._props = {str(k).lower(): v for k, v in props.items()}

    def text(self, key: str) -> str | None:
        value = self._props.get(key.lower())
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.text(key)
        if value is None:
            return default
        if value.lower() not in allowed:
            raise ConfigError(f"option.{key}={value!r} is not one of {', '.join(allowed)}", param=f"option.{key}")
        return value.lower()

    def dtype(self, key: str, default: str) -> str:
        """One of DTYPES, DJL's torch-style spellings mapped onto them."""
        value = self.text(key)
        if value is None:
            return default
        name = DTYPE_ALIASES.get(value.lower(), value.lower())
        if name not in DTYPES:
            shown = ", ".join([*DTYPES, *DTYPE_ALIASES])
            raise ConfigError(f"option.{key}={value!r} is not one of {shown}", param=f"option.{key}")
        return name

    @overload
    def boolean(self, key: str, default: bool) -> bool: ...

    @overload
    def boolean(self, key: str, default: None) -> bool | None: ...

    def boolean(self, key: str, default: bool | None) -> bool | None:
        value = self.text(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"option.{key}={value!r} must be true or false", param=f"option.{key}")
        return value.lower() == "true"

    def fraction(self, key: str) -> float | None:
        """A number in (0, 1], or None when absent."""
        value = self.text(key)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not 0 < number <= 1:
            raise ConfigError(f"option.{key}={value!r} must be a number in (0, 1]", param=f"option.{key}")
        return number

    # With an int default (and no "max"), the reader always yields an int; without one, None means "not set".
    @overload
    def integer(
        self,
        key: str,
        minimum: int,
        maximum: int | None = None,
        *,
        default: int,
        allow_max: Literal[False] = False,
    ) -> int: ...

    @overload
    def integer(
        self,
        key: str,
        minimum: int,
        maximum: int | None = None,
        default: int | None = None,
        allow_max: bool = False,
    ) -> int | None: ...

    def integer(
        self,
        key: str,
        minimum: int,
        maximum: int | None = None,
        default: int | None = None,
        allow_max: bool = False,
    ) -> int | None:
        value = self.text(key)
        if value is None:
            return default
        if allow_max and value.lower() == "max":
            return None
        limits = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"option.{key}={value!r} must be an integer {limits}", param=f"option.{key}") from None
        if number < minimum or (maximum is not None and number > maximum):
            raise ConfigError(f"option.{key}={number} is out of range: must be {limits}", param=f"option.{key}")
        return number
