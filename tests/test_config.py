"""HandlerConfig: DJL's init properties to typed settings; bad values name the option and the range."""

from dataclasses import replace

import pytest
from lmistream.config import HandlerConfig
from lmistream.dialect import DjlGeneration
from lmistream.errors import ConfigError


def test_typed_values_and_defaults():
    cfg = HandlerConfig.from_properties(
        {
            "model_id": "m",
            "rolling_batch": "auto",
            "max_rolling_batch_size": "8",
            "dtype": "BF16",
            "tensor_parallel_degree": 2,
            "enable_streaming": "true",
            "handler": "handle",
            "gpu.maxWorkers": "1",
            "generation_engine": "Portable",
            "revision": "v2",
        }
    )
    assert (cfg.max_rolling_batch_size, cfg.dtype, cfg.tensor_parallel_degree) == (8, "bf16", 2)
    assert (cfg.generation_engine, cfg.revision) == ("portable", "v2")
    assert cfg.streaming and cfg.rolling_batch_enabled()
    assert HandlerConfig.from_properties({"model_dir": "/opt/ml/model"}).model_id == "/opt/ml/model"


def test_an_unknown_engine_is_refused_naming_the_choices():
    with pytest.raises(
        ConfigError, match="option.generation_engine='tgi' is not one of auto, continuous, portable, vllm"
    ):
        HandlerConfig.from_properties({"model_id": "m", "generation_engine": "tgi"})


def test_vllms_options_pass_through_djls_names():
    cfg = HandlerConfig.from_properties(
        {"model_id": "m", "max_model_len": "2048", "gpu_memory_utilization": "0.5", "enforce_eager": "true"}
    )
    assert (cfg.max_model_len, cfg.gpu_memory_utilization, cfg.enforce_eager) == (2048, 0.5, True)
    defaults = HandlerConfig.from_properties({"model_id": "m"})
    assert (defaults.max_model_len, defaults.gpu_memory_utilization, defaults.enforce_eager) == (None, None, False)


def test_rolling_batch_rules_differ_by_version():
    cfg = HandlerConfig.from_properties({"model_id": "m", "rolling_batch": "disable"})
    assert replace(cfg, djl_generation=DjlGeneration.LMI_0_23).rolling_batch_enabled()
    assert not cfg.rolling_batch_enabled()  # the newest generation, the default
    unset = HandlerConfig.from_properties({"model_id": "m"})
    assert not replace(unset, djl_generation=DjlGeneration.LMI_0_23).rolling_batch_enabled()


@pytest.mark.parametrize(
    "props,message",
    [
        ({"max_rolling_batch_size": "0"}, "option.max_rolling_batch_size=0 is out of range: must be >= 1"),
        ({"max_rolling_batch_size": "many"}, "option.max_rolling_batch_size='many' must be an integer"),
        ({"dtype": "fp8"}, "option.dtype='fp8' is not one of auto, fp32, fp16, bf16"),
        ({"trust_remote_code": "yes"}, "option.trust_remote_code='yes' must be true or false"),
        ({"enable_streaming": "maybe"}, "option.enable_streaming='maybe' is not one of"),
        ({"gpu_memory_utilization": "1.5"}, "option.gpu_memory_utilization='1.5' must be a number in (0, 1]"),
        ({"gpu_memory_utilization": "most"}, "option.gpu_memory_utilization='most' must be a number in (0, 1]"),
    ],
)
def test_bad_values_name_the_option(props, message):
    with pytest.raises(ConfigError) as info:
        HandlerConfig.from_properties({"model_id": "m", **props})
    assert message in info.value.message


def test_model_id_is_required():
    with pytest.raises(ConfigError, match="option.model_id"):
        HandlerConfig.from_properties({})
