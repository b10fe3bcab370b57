"""DJL's LMI option keys, one `Option` each: what DJL does with the key, which engines of this handler honour it and
how, and the way out where one refuses it. Pure data: no torch, no I/O.

The keys are those DJL's newest properties managers read (djl_python/properties_manager: `Properties`,
`HuggingFaceProperties`, `VllmRbProperties`), the vLLM engine arguments DJL users set most (DJL passes every
`option.*` that names a field of vLLM's engine arguments through to vLLM), those DJL's serving reads itself, and this
handler's own. lmi-dist has no properties manager any more: DJL maps `option.rolling_batch=lmi-dist` to vllm. One entry
per key, so a feature that lands flips its own entry; `options` checks properties against the table.

A `neutral` value is accepted everywhere because it asks for what the engines do anyway (e.g. `enable_lora=false`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

ENGINES = ("continuous", "portable", "vllm")
ALL = ENGINES
VLLM = ("vllm",)
NONE: tuple[str, ...] = ()
#: `Option.how` of the keys DJL's serving reads itself (the handler leaves them to it)
READ_BY_DJL = "read by DJL's serving itself"


@dataclass(frozen=True)
class Option:
    """One key: what DJL does with it, which engines honour it and how, and the way out where it is refused."""

    key: str
    djl: str
    honoured: tuple[str, ...]
    how: str = ""
    way_out: str = ""
    neutral: tuple[str, ...] = ()

    def refusal(self, value: str, engine: str) -> ConfigError | None:
        """The error refusing `value` on `engine` (`auto`: on every engine), or None when it is taken."""
        if value.strip().lower() in self.neutral or (engine in self.honoured if engine != "auto" else self.honoured):
            return None
        where = "any engine of this handler" if engine == "auto" else f"the {engine} engine"
        return ConfigError(
            f"option.{self.key}={value} is not supported by {where}: {self.way_out}", param=f"option.{self.key}"
        )


def _djl(key: str, djl: str) -> Option:
    return Option(key, djl, ALL, READ_BY_DJL)


def _lora(key: str, djl: str, neutral: tuple[str, ...] = ()) -> Option:
    return Option(
        key,
        djl,
        ("portable", "vllm"),
        "the adapters under adapters/ served per request (the portable engine's own LoRA layers, vLLM's LoRA)",
        "transformers' continuous batching applies no per-request LoRA adapters; use "
        "option.generation_engine=portable or the vLLM engine",
        neutral,
    )


def _vllm_only(key: str, djl: str, way_out: str, neutral: tuple[str, ...] = ()) -> Option:
    return Option(key, djl, VLLM, "passed to vLLM's engine arguments", way_out, neutral)


_USE_VLLM = "use the vLLM engine (option.rolling_batch=vllm), which passes it to vLLM, or drop it"
_DJL_SETS = "set by DJL itself"
_QUANTIZE = (
    "bitsandbytes8 or bitsandbytes4 through transformers' BitsAndBytesConfig where bitsandbytes imports (another "
    "method, or no bitsandbytes, is refused at load); vLLM's quantization on the vLLM engine"
)

TABLE: tuple[Option, ...] = (
    # djl_python.properties_manager.properties.Properties
    Option("model_id", "hub id, s3:// prefix or local path of the model", ALL, "loaded from it"),
    Option("model_dir", _DJL_SETS + ": the model's directory", ALL, "the model when model_id is not given"),
    Option(
        "rolling_batch",
        "auto|disable|vllm|trtllm: the batching backend",
        ALL,
        "any value but disable turns on DJL's rolling-batch loop over this engine (lmi-dist, trtllm... pick no such "
        "backend); vllm also picks the vLLM engine",
    ),
    Option("tensor_parallel_degree", "devices one model copy spans", ALL, "sharded over DJL's ranks, or vLLM's"),
    Option(
        "cluster_size",
        "nodes one model spans (multi-node)",
        NONE,
        way_out="multi-node serving is not implemented; use one instance with option.tensor_parallel_degree",
        neutral=("1",),
    ),
    Option("trust_remote_code", "run the model repository's code", ALL, "passed to from_pretrained / vLLM"),
    Option("enable_streaming", "true|false|huggingface without rolling batch", ALL, "streams plain requests"),
    Option("max_rolling_batch_size", "most requests in the batch (32; 256 for vllm)", ALL, "the batch bound"),
    Option("dtype", "fp32|fp16|bf16|auto (vLLM: float32|float16|bfloat16 too)", ALL, "the weights' dtype"),
    Option("revision", "model revision on the hub", ALL, "passed to from_pretrained / vLLM"),
    Option("output_formatter", "json|jsonlines|sse|none or a custom formatter", ALL, "the response format"),
    Option(
        "waiting_steps",
        "HF scheduler: steps a new request waits before it joins",
        NONE,
        way_out="the engines admit waiting requests at every step; drop it",
        neutral=("none",),
    ),
    _djl("mpi_mode", _DJL_SETS + " with engine=MPI: the Python engine starts one process per rank"),
    Option("tgi_compat", "TGI's output shapes", ALL, "a JSON array when whole, TGI's SSE when streaming"),
    Option(
        "bedrock_compat",
        "Bedrock's output shapes",
        NONE,
        way_out="Bedrock's shapes are not implemented; drop it",
        neutral=("false",),
    ),
    _lora("enable_lora", "serve LoRA adapters", ("false",)),
    Option(
        "lmcache_auto_config",
        "vLLM: configure LMCache KV offload",
        NONE,
        way_out="LMCache is not set up by this handler; drop it",
        neutral=("false",),
    ),
    Option(
        "draft_model_id",
        "speculative decoding's draft model",
        NONE,
        way_out="on the vLLM engine give vLLM's option.speculative_config instead; the transformers engines do not "
        "decode speculatively",
        neutral=("none",),
    ),
    Option(
        "spec_length",
        "tokens the draft model proposes",
        NONE,
        way_out="on the vLLM engine give vLLM's option.speculative_config instead",
        neutral=("0",),
    ),
    # djl_python.properties_manager.hf_properties.HuggingFaceProperties
    Option("device_id", _DJL_SETS + ": the worker's GPU, -1 for the CPU", ALL, "the device the model loads on"),
    Option(
        "task",
        "the pipeline task (text-generation, ...)",
        NONE,
        way_out="this handler generates text only; drop it",
        neutral=("text-generation", "generate", "auto"),
    ),
    Option(
        "pipeline_parallel_degree",
        "pipeline stages",
        NONE,
        way_out="pipeline parallelism is not implemented; use option.tensor_parallel_degree",
        neutral=("1",),
    ),
    Option(
        "device_map",
        "accelerate's device map",
        NONE,
        way_out="the engines place the model themselves (device_id's device, or sharded with "
        "option.tensor_parallel_degree); drop it",
        neutral=("none",),
    ),
    Option(
        "load_in_4bit",
        "deprecated: quantize=bitsandbytes4",
        NONE,
        way_out="give option.quantize=bitsandbytes4 instead",
        neutral=("false",),
    ),
    Option(
        "load_in_8bit",
        "deprecated: quantize=bitsandbytes8",
        NONE,
        way_out="give option.quantize=bitsandbytes8 instead",
        neutral=("false",),
    ),
    Option("quantize", "bitsandbytes4|bitsandbytes8 (HF); vLLM's quantization", ALL, _QUANTIZE, neutral=("none",)),
    Option(
        "low_cpu_mem_usage",
        "from_pretrained's low_cpu_mem_usage (default false)",
        NONE,
        way_out="the engines always load through a device map, which loads with low memory use; drop it",
        neutral=("true",),
    ),
    Option(
        "input_formatter",
        "a custom function parsing request bodies",
        NONE,
        way_out="the handler parses LMI, TGI and OpenAI bodies itself; drop it",
    ),
    Option(
        "disable_flash_attn",
        "HF: keep flash attention off (default true)",
        NONE,
        way_out="the engines use the model's default attention; drop it",
        neutral=("true",),
    ),
    Option(
        "device",
        _DJL_SETS + " from device_id",
        NONE,
        way_out="DJL's device_id decides the device; drop it",
        neutral=("auto", "none"),
    ),
    Option("data_type", "older alias of dtype", ALL, "as dtype"),
    Option(
        "is_peft_model",
        _DJL_SETS + " when the model directory is a PEFT adapter",
        NONE,
        way_out="load a merged model, or serve the adapter from adapters/ with option.enable_lora=true on the "
        "portable or vLLM engine",
        neutral=("false",),
    ),
    # djl_python.properties_manager.vllm_rb_properties.VllmRbProperties
    Option("quantization", "vLLM's name for quantize", ALL, _QUANTIZE, neutral=("none",)),
    Option(
        "max_rolling_batch_prefill_tokens",
        "most prompt tokens in one step (vLLM: max_num_batched_tokens)",
        ALL,
        "the prefill budget of a step: the portable engine prefills a longer prompt in chunks of it between decode "
        "steps; transformers' max_batch_tokens; vLLM's max_num_batched_tokens",
    ),
    _vllm_only(
        "max_num_batched_tokens",
        "vLLM's name for max_rolling_batch_prefill_tokens",
        "use option.max_rolling_batch_prefill_tokens",
    ),
    _vllm_only(
        "cpu_offload_gb_per_gpu",
        "vLLM's cpu_offload_gb",
        "the transformers engines keep the weights on the device; " + _USE_VLLM,
        ("0",),
    ),
    _vllm_only(
        "cpu_offload_gb",
        "vLLM's name for cpu_offload_gb_per_gpu",
        "the transformers engines keep the weights on the device; " + _USE_VLLM,
        ("0",),
    ),
    _lora("max_loras", "LoRA adapters in one batch"),
    _lora("max_lora_rank", "largest LoRA rank"),
    _lora("max_cpu_loras", "LoRA adapters cached in CPU memory"),
    Option(
        "long_lora_scaling_factors",
        "vLLM: long-context LoRA scaling",
        NONE,
        way_out="this handler serves LoRA adapters without long-context scaling; drop it",
        neutral=("none",),
    ),
    Option(
        "enable_auto_tool_choice",
        "vLLM chat: parse tool calls",
        ALL,
        'false turns tool_choice "auto" off; "auto" reads calls with option.tool_call_parser',
        neutral=("false",),
    ),
    Option(
        "tool_call_parser",
        "vLLM chat: the tool-call parser",
        ALL,
        'hermes or llama3_json: tool_choice "auto" answers read back as tool_calls (the handler\'s own parser, on '
        "every engine)",
        neutral=("none",),
    ),
    Option(
        "enable_reasoning",
        "vLLM chat: split reasoning from the answer",
        NONE,
        way_out="this handler's chat API does not parse reasoning; drop it",
        neutral=("false",),
    ),
    Option(
        "reasoning_parser",
        "vLLM chat: the reasoning parser",
        NONE,
        way_out="this handler's chat API does not parse reasoning; drop it",
        neutral=("none",),
    ),
    Option(
        "normalize",
        "embeddings: normalise the vectors (default true)",
        NONE,
        way_out="this handler does not embed; drop it",
        neutral=("true",),
    ),
    Option(
        "chat_template",
        "a chat template (file or inline) overriding the tokenizer's",
        ALL,
        "the handler renders chats with it",
    ),
    Option(
        "chat_template_content_format",
        "vLLM chat: auto|string|openai",
        NONE,
        way_out="messages' content is read as text; drop it",
        neutral=("auto", "string"),
    ),
    # vLLM engine arguments DJL passes through by name (any other field of EngineArgs passes through too)
    Option(
        "enable_prefix_caching",
        "vLLM: reuse the KV cache of shared prompt prefixes",
        ALL,
        "on by default: the portable engine's prefix cache, transformers' continuous batching's block sharing, "
        "vLLM's own prefix caching",
    ),
    Option(
        "prefix_cache_bytes",
        "(this handler) bytes of prompt-prefix KV the portable engine keeps (default 1 GiB)",
        ("portable",),
        "bounds its prefix cache (least recently used blocks go first)",
        "transformers' continuous batching and vLLM share prefix blocks inside their own paged KV cache, sized by "
        "its own memory options; drop it",
    ),
    _vllm_only(
        "enable_chunked_prefill",
        "vLLM: split long prompts across steps",
        "on the transformers engines give option.max_rolling_batch_prefill_tokens, which splits longer prompts; "
        + _USE_VLLM,
        ("false",),
    ),
    _vllm_only("max_num_seqs", "vLLM's name for max_rolling_batch_size", "use option.max_rolling_batch_size"),
    _vllm_only(
        "speculative_config",
        "vLLM: speculative decoding (JSON)",
        "the transformers engines do not decode speculatively; " + _USE_VLLM,
        ("none",),
    ),
    _vllm_only(
        "kv_cache_dtype",
        "vLLM: the KV cache's dtype",
        "the transformers engines keep the KV cache in the weights' dtype; " + _USE_VLLM,
        ("auto",),
    ),
    _vllm_only(
        "max_num_scheduled_tokens",
        "vLLM: most tokens one step schedules",
        "on the transformers engines give option.max_rolling_batch_prefill_tokens; " + _USE_VLLM,
    ),
    _vllm_only(
        "device_ids",
        "vLLM: the devices the workers use",
        "the transformers engines run on DJL's device_id (or all ranks with option.tensor_parallel_degree); "
        + _USE_VLLM,
    ),
    Option(
        "tensor_parallel_size",
        "vLLM's name for tensor_parallel_degree (DJL refuses a different value)",
        NONE,
        way_out="give DJL's option.tensor_parallel_degree, which the vLLM engine passes as tensor_parallel_size",
    ),
    Option(
        "pipeline_parallel_size",
        "vLLM's name for pipeline_parallel_degree",
        NONE,
        way_out="pipeline parallelism is not implemented; use option.tensor_parallel_degree",
        neutral=("1",),
    ),
    Option("max_model_len", "vLLM: most tokens one sequence holds", ALL, "caps the sequence length"),
    Option(
        "gpu_memory_utilization",
        "vLLM: share of device memory for weights and KV cache",
        ALL,
        "vLLM's own; on a GPU the transformers engines cap their allocator at that share (refused on a CPU)",
    ),
    Option(
        "enforce_eager",
        "vLLM: no compilation or CUDA graphs",
        ALL,
        "vLLM's own; the transformers engines always run eagerly",
    ),
    # this handler's own
    Option("generation_engine", "(this handler) auto|continuous|portable|vllm", ALL, "picks the engine"),
    Option("max_new_tokens", "(this handler) a request's default max_new_tokens", ALL, "the default"),
    Option("async_mode", "newest DJL: the async handler", ALL, "one async generator per request"),
    # read by DJL's serving (Java, and its Python engine) before the handler runs
    _djl("entryPoint", "the handler file"),
    _djl("handler", "the handler function (default handle)"),
    _djl("predict_timeout", "seconds a request waits for a rolling-batch slot"),
    _djl("model_loading_timeout", "seconds the model may take to load"),
    _djl("pythonExecutable", "the Python that runs the handler"),
    _djl("env", "extra environment of the worker (K=V,K2=V2)"),
    _djl("enable_venv", "install requirements.txt into a venv of its own"),
    _djl("parallel_loading", "load the workers' models in parallel"),
)
#: DJL's names of vLLM engine arguments the vLLM engine passes through under vLLM's name
VLLM_NAMES = {"quantize": "quantization", "cpu_offload_gb_per_gpu": "cpu_offload_gb"}
