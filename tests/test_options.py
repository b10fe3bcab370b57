"""DJL's option keys, table-driven: every key DJL's newest properties managers read is in the handler's table, and
on each engine this stack loads each key is honoured (the setting the engine reads, or vLLM's engine argument, takes
its value) or refused before the model loads and by `lmi build`, with a message naming the key, the engine and the
way out. Also the few effects seen end to end: option.chat_template renders chats, option.tgi_compat's shapes,
option.max_model_len's bound, and huggingface_hub's client on the shipped serving.properties."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import Collector
from fakes import ScriptedEngine, serve_engines
from lmikit.project.validate import validate_project
from lmistream import option_table, options
from lmistream.config import HandlerConfig
from lmistream.engines import available, create_engine
from lmistream.errors import ConfigError
from lmistream.formatter_choice import ClientHeaders
from lmistream.params import GenerationParams
from project_factory import good_properties, make_project, write_properties
from replay import collect, frontend, post

#: the fields of DJL's properties managers (djl_python/properties_manager: Properties, HuggingFaceProperties,
#: VllmRbProperties, aliases included), as DJL's source spells them
DJL_KEYS = [
    "model_id",
    "model_dir",
    "rolling_batch",
    "tensor_parallel_degree",
    "cluster_size",
    "trust_remote_code",
    "enable_streaming",
    "batch_size",
    "max_rolling_batch_size",
    "dtype",
    "revision",
    "output_formatter",
    "input_formatter",
    "waiting_steps",
    "mpi_mode",
    "tgi_compat",
    "bedrock_compat",
    "enable_lora",
    "lmcache_auto_config",
    "draft_model_id",
    "spec_length",
    "device_id",
    "task",
    "pipeline_parallel_degree",
    "device_map",
    "load_in_4bit",
    "load_in_8bit",
    "quantize",
    "low_cpu_mem_usage",
    "disable_flash_attn",
    "device",
    "data_type",
    "is_peft_model",
    "engine",
    "quantization",
    "max_rolling_batch_prefill_tokens",
    "max_num_batched_tokens",
    "cpu_offload_gb_per_gpu",
    "cpu_offload_gb",
    "max_loras",
    "long_lora_scaling_factors",
    "enable_auto_tool_choice",
    "tool_call_parser",
    "enable_reasoning",
    "reasoning_parser",
    "normalize",
    "chat_template",
    "chat_template_content_format",
]
ENGINES = [engine for engine in options.ENGINES if engine in available()]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<reply>"

#: key -> (a value, what the engines then read): the handler's setting, shared by the transformers engines
SETTINGS: dict[str, tuple[str, Callable[[HandlerConfig], Any], Any]] = {
    "model_id": ("/models/m", lambda c: c.model_id, "/models/m"),
    "model_dir": ("/opt/ml/model", lambda c: c.model_dir, "/opt/ml/model"),
    "rolling_batch": ("auto", lambda c: c.rolling_batch_enabled(), True),
    "tensor_parallel_degree": ("2", lambda c: c.tensor_parallel_degree, 2),
    "trust_remote_code": ("true", lambda c: c.trust_remote_code, True),
    "enable_streaming": ("true", lambda c: c.streaming, True),
    "max_rolling_batch_size": ("4096", lambda c: c.max_rolling_batch_size, 4096),
    "dtype": ("bfloat16", lambda c: c.dtype, "bf16"),
    "data_type": ("float16", lambda c: c.dtype, "fp16"),
    "revision": ("v2", lambda c: c.revision, "v2"),
    "output_formatter": ("sse", lambda c: c.output_formatter, "sse"),
    "tgi_compat": ("true", lambda c: c.tgi_compat, True),
    "quantize": ("bitsandbytes4", lambda c: c.quantize, "bitsandbytes4"),
    "quantization": ("bitsandbytes8", lambda c: c.quantize, "bitsandbytes8"),
    "device_id": ("0", lambda c: c.device_id, 0),
    "max_rolling_batch_prefill_tokens": ("512", lambda c: c.max_rolling_batch_prefill_tokens, 512),
    "enable_prefix_caching": ("false", lambda c: c.enable_prefix_caching, False),
    "prefix_cache_bytes": ("4096", lambda c: c.prefix_cache_bytes, 4096),
    "chat_template": (TEMPLATE, lambda c: c.chat_template, TEMPLATE),
    "max_model_len": ("64", lambda c: c.max_model_len, 64),
    "gpu_memory_utilization": ("0.5", lambda c: c.gpu_memory_utilization, 0.5),
    "enforce_eager": ("true", lambda c: c.enforce_eager, True),
    "generation_engine": ("portable", lambda c: c.generation_engine, "portable"),
    "max_new_tokens": ("17", lambda c: c.max_new_tokens, 17),
    "async_mode": ("true", lambda c: c.async_mode, True),
    "enable_lora": ("true", lambda c: c.enable_lora, True),
    "max_loras": ("2", lambda c: c.max_loras, 2),
    "max_lora_rank": ("8", lambda c: c.max_lora_rank, 8),
    "max_cpu_loras": ("3", lambda c: c.max_cpu_loras, 3),
    "tool_call_parser": ("hermes", lambda c: c.auto_tool_parser, "hermes"),
    "enable_auto_tool_choice": ("true", lambda c: c.enable_auto_tool_choice, True),
}
#: key -> (a value, vLLM's engine argument and the value it then takes) on the vLLM engine
VLLM_ARGUMENTS: dict[str, tuple[str, str, Any]] = {
    "model_id": ("/models/m", "model", "/models/m"),
    "tensor_parallel_degree": ("2", "tensor_parallel_size", 2),
    "trust_remote_code": ("true", "trust_remote_code", True),
    "max_rolling_batch_size": ("4096", "max_num_seqs", 4096),
    "max_num_seqs": ("7", "max_num_seqs", 7),
    "max_num_scheduled_tokens": ("256", "max_num_scheduled_tokens", 256),
    "device_ids": ("0", "device_ids", [0]),
    "dtype": ("bfloat16", "dtype", "bfloat16"),
    "data_type": ("float16", "dtype", "float16"),
    "revision": ("v2", "revision", "v2"),
    "quantize": ("fp8", "quantization", "fp8"),
    "quantization": ("fp8", "quantization", "fp8"),
    "max_rolling_batch_prefill_tokens": ("512", "max_num_batched_tokens", 512),
    "max_num_batched_tokens": ("512", "max_num_batched_tokens", 512),
    "cpu_offload_gb_per_gpu": ("2", "cpu_offload_gb", 2.0),
    "cpu_offload_gb": ("2", "cpu_offload_gb", 2.0),
    "enable_prefix_caching": ("true", "enable_prefix_caching", True),
    "enable_chunked_prefill": ("true", "enable_chunked_prefill", True),
    "speculative_config": ('{"method": "ngram", "num_speculative_tokens": 2}', "speculative_config", None),
    "kv_cache_dtype": ("fp8", "kv_cache_dtype", "fp8"),
    "max_model_len": ("64", "max_model_len", 64),
    "gpu_memory_utilization": ("0.5", "gpu_memory_utilization", 0.5),
    "enforce_eager": ("true", "enforce_eager", True),
}
#: a value each refused key is given (the typed ones must parse); any other key gets "7"
REFUSED_VALUES = {"enable_lora": "true", "max_loras": "2", "max_lora_rank": "8", "max_cpu_loras": "3"}


def _pairs(honoured: bool) -> list[tuple[str, str]]:
    return [
        (option.key, engine)
        for engine in ENGINES
        for option in options.TABLE
        if (engine in option.honoured) == honoured and option.how != option_table.READ_BY_DJL
    ]


def test_every_key_djl_reads_is_in_the_table() -> None:
    known = {option.key for option in options.TABLE} | set(options.DJL_PROPERTIES)
    assert [key for key in DJL_KEYS if key not in known] == []


@pytest.mark.parametrize(("key", "engine"), _pairs(honoured=True))
def test_an_honoured_key_takes_effect(key: str, engine: str) -> None:
    if engine == "vllm" and key in VLLM_ARGUMENTS:
        from lmistream.engines.vllm_arguments import engine_arguments

        value, argument, expected = VLLM_ARGUMENTS[key]
        taken = engine_arguments(HandlerConfig.from_properties({"model_id": "m", key: value}))[argument]
        assert taken == expected or (expected is None and taken == json.loads(value))
        return
    value, setting, expected = SETTINGS[key]
    assert setting(HandlerConfig.from_properties({"model_id": "m", key: value})) == expected


@pytest.mark.parametrize(("key", "engine"), _pairs(honoured=False))
def test_a_refused_key_is_refused_at_load_and_by_lmi_build(key: str, engine: str, tmp_path: Path) -> None:
    option = options.BY_KEY[key.lower()]
    value = REFUSED_VALUES.get(key, "7")
    assert value.lower() not in option.neutral
    config = HandlerConfig.from_properties({"model_id": "/nowhere", "generation_engine": engine, key: value})
    with pytest.raises(ConfigError) as refused:
        create_engine(config)
    assert refused.value.param == f"option.{key}"
    assert f"option.{key}={value} is not supported by the {engine} engine: {option.way_out}" in refused.value.message
    project = make_project(tmp_path)
    write_properties(
        project,
        {**good_properties(tmp_path / "weights"), "option.generation_engine": engine, f"option.{key}": value},
    )
    assert [(f.level, f.key, f.message) for f in validate_project(project)] == [
        ("error", f"option.{key}", refused.value.message)
    ]


def test_a_neutral_value_is_taken_everywhere() -> None:
    for option in options.TABLE:
        for value in option.neutral:
            assert options.refusals({option.key: value}, "auto") == []
            config = HandlerConfig.from_properties({"model_id": "m", option.key: value})
            if "vllm" in ENGINES:
                from lmistream.engines.vllm_arguments import engine_arguments

                engine_arguments(config)


def test_lmi_build_with_the_engine_left_to_auto_refuses_what_every_engine_refuses(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    props = good_properties(tmp_path / "weights")
    write_properties(project, {**props, "option.bedrock_compat": "true", "option.enable_prefix_caching": "true"})
    [finding] = validate_project(project)
    assert (finding.level, finding.key) == ("error", "option.bedrock_compat")
    assert "not supported by any engine of this handler: Bedrock's shapes are not implemented" in finding.message


@pytest.mark.parametrize(
    ("key", "finding"),
    [
        ("option.max_modle_len", "did you mean option.max_model_len?"),
        ("option.enable_prefix_cache", "did you mean option.enable_prefix_caching?"),
        ("option.disable_sliding_window", "the vLLM engine passes it to vLLM"),
        ("option.max_num_partial_prefills", "the vLLM engine passes it to vLLM"),
    ],
)
def test_did_you_mean_only_for_a_real_typo(key: str, finding: str, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    write_properties(project, {**good_properties(tmp_path / "weights"), key: "true"})
    [found] = validate_project(project)
    assert found.key == key and finding in found.message


def test_docs_table_is_generated_from_the_table() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "djl-options.md"
    assert docs.read_text(encoding="utf-8") == options.markdown()


# -- effects seen end to end ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_chat_template_renders_the_chat(tmp_path: Path) -> None:
    from lmikit.embedded_model import ensure_tiny_model
    from lmistream.engines.loading import load_tokenizer

    template_file = tmp_path / "chat.jinja"
    template_file.write_text(TEMPLATE, encoding="utf-8")
    messages = [{"role": "user", "content": "hi"}]
    for given in (TEMPLATE, str(template_file)):
        config = HandlerConfig.from_properties({"model_id": str(ensure_tiny_model()), "chat_template": given})
        rendered = load_tokenizer(config).apply_chat_template(messages, tokenize=False)
        assert rendered == "<user>hi<reply>"


@pytest.mark.integration
@pytest.mark.parametrize("engine", [engine for engine in ENGINES if engine != "vllm"])
def test_quantize_loads_bitsandbytes_weights_where_it_imports(engine: str) -> None:
    from lmikit.embedded_model import ensure_tiny_model

    model_dir = str(ensure_tiny_model())
    props = {"model_id": model_dir, "dtype": "fp32", "generation_engine": engine, "max_rolling_batch_size": "2"}
    quantized_config = HandlerConfig.from_properties({**props, "quantize": "bitsandbytes8"})
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="option.quantize=bitsandbytes8 needs bitsandbytes"):
            create_engine(quantized_config)
        return
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    reference = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu", dtype=torch.float32
    )
    plain, quantized = create_engine(HandlerConfig.from_properties(props)), create_engine(quantized_config)
    collector = Collector()
    quantized.start(collector)
    try:
        prompt_ids = quantized.tokenizer.encode("The quick brown fox")
        quantized.submit("q", prompt_ids, GenerationParams(max_new_tokens=8))
        collector.wait_finished("q")
    finally:
        quantized.stop()
        plain.stop()
    expected = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False)[0, len(prompt_ids) :]
    assert collector.tokens("q") == expected.tolist()
    assert quantized.parameter_bytes < plain.parameter_bytes


def test_a_quantization_the_transformers_engines_lack_is_refused_naming_the_way_out() -> None:
    from lmistream.engines.loading import quantization

    with pytest.raises(
        ConfigError, match="option.quantize=awq is not supported by the transformers engines"
    ) as refused:
        quantization("awq")
    assert (
        "bitsandbytes8 or bitsandbytes4" in refused.value.message
        and "option.rolling_batch=vllm" in refused.value.message
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve_engines(monkeypatch, ScriptedEngine)


@pytest.mark.usefixtures("scripted")
def test_tgi_compat_answers_a_json_array_whole_and_sse_streaming() -> None:
    with frontend("newest", rolling_batch="auto", tgi_compat="true") as front:
        whole = collect(post(front, {"inputs": "abc"}))
        streamed = collect(post(front, {"inputs": "abc", "stream": True}))
    assert whole[0] == 200
    [answer] = json.loads(b"".join(whole[1]))
    assert answer["generated_text"] == "cba" and answer["details"]["finish_reason"] == "eos_token"
    events = [json.loads(line[5:]) for line in b"".join(streamed[1]).decode().splitlines() if line.startswith("data:")]
    assert events[-1]["generated_text"] == "cba"


@pytest.mark.usefixtures("scripted")
def test_max_model_len_bounds_a_sequence_and_the_models_own_length_bounds_it() -> None:
    with frontend("newest", rolling_batch="auto", max_model_len="8") as front:
        status, chunks = collect(post(front, {"inputs": "abcdef", "parameters": {"max_new_tokens": 5}}))
        fits = collect(post(front, {"inputs": "abc", "parameters": {"max_new_tokens": 4}}))
    assert status == 400 and "parameters.max_new_tokens" in b"".join(chunks).decode()
    assert fits[0] == 200
    with (
        pytest.raises(Exception, match="option.max_model_len=5000 exceeds the model's 4096 tokens"),
        frontend("newest", rolling_batch="auto", max_model_len="5000"),
    ):
        pass


@pytest.mark.parametrize(
    ("accept", "user_agent", "stream", "asked"),
    [
        ("text/event-stream", "", None, "sse"),
        ("text/event-stream", "", False, None),
        ("*/*", "unknown/None; hf_hub/2.4.0; python/3.11", True, "sse"),
        ("*/*", "unknown/None; hf_hub/2.4.0; python/3.11", None, "json"),
        ("*/*", "python-requests/2.32", True, None),
        ("application/jsonlines", "Boto3/1.35", True, None),
    ],
)
def test_the_headers_that_pick_tgis_shapes(accept: str, user_agent: str, stream: bool | None, asked: str) -> None:
    assert ClientHeaders(accept, user_agent).format_asked(stream) == asked
