"""The newest LMI container's config recommender (DJL's LmiConfigRecommender), replayed for `lmi serve`: the
serving.properties keys DJL sets itself, before the handler loads, where the file leaves them unset.

DJL reads the model's config.json (no config, no recommendation) and the image's features (vLLM or not), then sets
`option.rolling_batch` (an unset or `auto` one becomes `disable`, with `option.async_mode=true` on a vLLM image;
DJL 0.33 removed lmi-dist and maps it to vllm; `batch_size` > 1 disables it), `option.pipeline_parallel_degree`
(1), `option.tensor_parallel_degree` (`max`: every GPU, none on a CPU) and `option.max_rolling_batch_size` (32,
256 for vllm). LMI 0.23 has no recommender. Pure: the caller reads config.json and counts the GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping

#: the architecture suffixes DJL treats as text generation
TEXT_GENERATION = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def recommended(
    props: Mapping[str, str], architectures: list[str] | None, gpus: int, vllm_image: bool, env: Mapping[str, str]
) -> dict[str, str]:
    """The keys DJL's recommender would set on `props` (serving.properties keys, `option.` included) and their
    values; `architectures` None: the model's config.json could not be read, so DJL recommends nothing."""
    if architectures is None:
        return {}
    added: dict[str, str] = {}
    rolling = _rolling_batch(props, architectures, vllm_image, added)
    pipeline = props.get("option.pipeline_parallel_degree") or env.get("PIPELINE_PARALLEL_DEGREE", "1")
    if "option.pipeline_parallel_degree" not in props:
        added["option.pipeline_parallel_degree"] = pipeline
    if "option.tensor_parallel_degree" not in props:
        degree = env.get("TENSOR_PARALLEL_DEGREE", "max")
        if degree == "max":
            degree = str(gpus // int(pipeline)) if gpus > 0 else ""
        if degree:
            added["option.tensor_parallel_degree"] = degree
    if "option.max_rolling_batch_size" not in props:
        added["option.max_rolling_batch_size"] = "256" if rolling in ("vllm", "trtllm") else "32"
    return added


def _rolling_batch(props: Mapping[str, str], architectures: list[str], vllm_image: bool, added: dict[str, str]) -> str:
    """option.rolling_batch as DJL leaves it, noting in `added` what it sets."""
    if int(props.get("batch_size", "1")) > 1:
        added["option.rolling_batch"] = "disable"
        return "disable"
    rolling = props.get("option.rolling_batch", "auto")
    if rolling == "lmi-dist":
        added.update({"option.rolling_batch": "vllm", "option.mpi_mode": "false"})
        return "vllm"
    if rolling != "auto":
        return rolling
    if vllm_image and any(arch.endswith(TEXT_GENERATION) for arch in architectures):
        added["option.async_mode"] = "true"
    added["option.rolling_batch"] = "disable"
    return "disable"
