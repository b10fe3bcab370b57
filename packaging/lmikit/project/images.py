"""The requirements.txt a build ships for a deploy image, and the checks of a project against that image's Python
stack (`image_stacks`).

`lmi build --image` uses them to stop, before a 15-minute deploy, what cannot load in that image: a pin that
would replace the image's torch or vLLM, the continuous engine where transformers 5.24 cannot run, the vLLM engine
where the image has no vLLM it runs on, a model or tokenizer newer than the image's transformers. The requirements.txt
it ships never names torch or vLLM: the image's own builds stay. An image not in `STACKS` is built unchecked, with one
warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .image_stacks import (
    CONTINUOUS_TRANSFORMERS,
    STACKS,
    TRANSFORMERS_5_PYTHON,
    VLLM_ENGINE_VLLM,
    ImageStack,
    applying,
    continuous_ready,
    lowest_allowed,
    parse_requirements,
    running_transformers,
    stack_for,
)
from .layout import Project
from .properties import init_properties
from .validate import Finding, local_model_dir, read_json, refusal_findings

#: llguidance, the portable engine's grammar library: its last release for Python 3.9, and the one tested after it
LLGUIDANCE_PYTHON_3_9 = "1.3.0"
LLGUIDANCE = "1.9.1"
#: shipped packages a requirement must never replace (CUDA builds the image's other packages are tied to).
PINNED_BY_IMAGE = ("torch", "torchvision", "deepspeed", "vllm")
#: model types and the first transformers release that has them.
MODEL_TYPES = {
    "falcon": "4.33",
    "mistral": "4.34",
    "mixtral": "4.36",
    "qwen2": "4.37",
    "phi": "4.37",
    "gemma": "4.38",
    "starcoder2": "4.39",
    "phi3": "4.40",
    "gemma2": "4.42",
    "qwen3": "4.51",
}
#: llama with grouped-query attention (num_key_value_heads != num_attention_heads) needs this transformers.
LLAMA_GQA = Version("4.31")
NEWEST_IMAGE = "djl-lmi:0.36.0"
#: the first torch with an fp16 matrix multiply on a CPU
CPU_FP16_TORCH = Version("2.1")
#: the first LMI release that accepts option.tensor_parallel_degree=max
TP_MAX_SINCE = Version("0.24")


def check_image(project: Project, image: str, gpus: int | None = None) -> list[Finding]:
    """All findings for building `project` for `image` on an instance with `gpus` GPUs (None: not known); an unknown
    image gives one warning and no checks."""
    stack = stack_for(image)
    if stack is None:
        return [
            Finding(
                "warning",
                "--image",
                f"{image}: unknown image (known: {', '.join(STACKS)}), so "
                "requirements.txt, the engine and the model are not checked against its Python stack",
            )
        ]
    props = project.properties
    try:
        engine = generation_engine(project)
    except project.handler_module("errors").ConfigError as error:
        return [Finding("error", error.param, error.message)]
    own = requirements_text(project)
    shipped = parse_requirements(shipped_requirements(project, stack, own, engine))[0]
    return [
        *check_requirements(stack, own),
        *check_engine(stack, engine, shipped),
        *check_model(project, stack, props.get("option.model_id", ""), shipped),
        *check_tensor_parallel(stack, project),
        *check_device(stack, props, gpus),
        *(check_options(project, _auto_engine(project, stack, shipped, gpus)) if engine == "auto" else []),
    ]


def _auto_engine(project: Project, stack: ImageStack, shipped: list[Requirement], gpus: int | None) -> str:
    """The engine option.generation_engine=auto picks on the image: the handler's own rule over what it ships."""
    engine: str = project.handler_module("engine_choice").automatic(
        lambda: None if stack.runs_vllm(running_transformers(stack, shipped)) else "no vLLM that runs the vllm engine",
        lambda: None if continuous_ready(stack, shipped) else "transformers 5.24 does not run there",
        lambda: gpus == 0,
    )[0]
    return engine


def check_options(project: Project, engine: str) -> list[Finding]:
    """The options `engine` (the one `auto` picks on the image) refuses, less those every engine refuses (the
    project check reports those, and those of an engine asked for by name)."""
    options = project.handler_module("options")
    init = init_properties(project.properties, project.model_dir)
    everywhere = {error.param for error in options.refusals(init, "auto")}
    return refusal_findings([error for error in options.refusals(init, engine) if error.param not in everywhere])


def generation_engine(project: Project) -> str:
    """The engine the options ask for, as the handler's own `requested` reads them (ConfigError when they
    disagree)."""
    props = project.properties
    choice = project.handler_module("engine_choice")
    engine: str = choice.requested(props.get("option.rolling_batch"), props.get("option.generation_engine", "auto"))[0]
    return engine


def requirements_text(project: Project) -> str:
    return project.requirements.read_text(encoding="utf-8") if project.requirements else ""


def shipped_requirements(project: Project, stack: ImageStack | None, own: str, engine: str) -> str:
    """The tarball's requirements.txt: the project's lines as written, plus transformers 5.24 when the continuous
    engine is forced on an image that can run it but ships another transformers (and the project pins none), plus
    llguidance where the portable engine runs (its structured output; the images ship it only beside vLLM)."""
    if stack is None:
        return own
    names = {canonicalize_name(req.name) for req in parse_requirements(own)[0]}
    added = []
    continuous = engine == "continuous" and stack.runs_continuous() and "transformers" not in names
    if continuous and Version(stack.transformers) != CONTINUOUS_TRANSFORMERS:
        added.append(
            f"# added by `lmi build --image {stack.image}` for option.generation_engine=continuous\n"
            f"transformers=={CONTINUOUS_TRANSFORMERS}\n"
        )
    shipped = parse_requirements(own + "".join(added))[0]
    runs = engine if engine != "auto" else _auto_engine(project, stack, shipped, None)
    if runs == "portable" and "llguidance" not in names:
        pin = LLGUIDANCE_PYTHON_3_9 if stack.python < (3, 10) else LLGUIDANCE
        added.append(
            f"# added by `lmi build --image {stack.image}`: structured output on the portable engine\n"
            f"llguidance=={pin}\n"
        )
    if not added:
        return own
    separator = "\n" if own and not own.endswith("\n") else ""
    return own + separator + "".join(added)


def engine_note(
    project: Project, stack: ImageStack | None, engine: str, requirements: str, gpus: int | None = None
) -> str:
    """Which engine the handler will run there, for the build report."""
    if stack is None:
        return "unknown image: the handler picks its engine when the model loads"
    if engine != "auto":
        return f"option.generation_engine={engine}"
    chosen = _auto_engine(project, stack, parse_requirements(requirements)[0], gpus)
    if chosen == "vllm":
        return f"option.generation_engine=auto will use the vllm engine (the image's vLLM {stack.packages['vllm']})"
    return f"option.generation_engine=auto will use the {chosen} engine"


def check_requirements(stack: ImageStack, text: str) -> list[Finding]:
    """Project requirements that would replace a package the image ships, or need a transformers it cannot run."""
    requirements, invalid = parse_requirements(text)
    findings = [Finding("warning", "requirements.txt", f"cannot parse {line!r}; not checked") for line in invalid]
    versions = stack.versions()
    for req in applying(stack, requirements):
        name = canonicalize_name(req.name)
        version = versions.get(name)
        if name == "transformers" and _needs_newer_runtime(stack, req):
            findings.append(
                Finding(
                    "error",
                    "requirements.txt",
                    f"{req}: transformers 5 needs Python >= 3.10, "
                    f"and 5.24 needs Python >= 3.11 and torch >= 2.6; {stack.python_and_torch}",
                )
            )
        elif version is not None and not req.specifier.contains(version, prereleases=True):
            findings.append(_replacement(stack, req, name, version))
    return findings


def check_engine(stack: ImageStack, engine: str, shipped: list[Requirement]) -> list[Finding]:
    """The continuous engine where the shipped stack cannot run transformers' continuous batching, or the vllm engine
    where it has no vLLM that runs it."""
    if engine == "vllm":
        return _check_vllm(stack, shipped)
    if engine != "continuous" or continuous_ready(stack, shipped):
        return []
    if not stack.runs_continuous():
        reason = f"needs transformers 5.24, Python >= 3.11 and torch >= 2.6; {stack.python_and_torch}"
    else:
        reason = (
            f"needs transformers 5.24, and requirements.txt gives transformers {running_transformers(stack, shipped)}"
        )
    return [
        Finding(
            "error",
            "option.generation_engine",
            f"continuous {reason}: use auto or portable (auto picks the portable engine on {stack.image})",
        )
    ]


def _check_vllm(stack: ImageStack, shipped: list[Requirement]) -> list[Finding]:
    transformers = running_transformers(stack, shipped)
    if stack.runs_vllm(transformers):
        return []
    vllm = stack.packages.get("vllm")
    if vllm is None:
        reason = f"{stack.image} ships no vLLM"
    elif Version(vllm) < VLLM_ENGINE_VLLM:
        reason = f"it needs vLLM >= {VLLM_ENGINE_VLLM}, and {stack.image} ships vLLM {vllm}"
    else:
        reason = (
            f"requirements.txt gives transformers {transformers}, and the image's vLLM {vllm} takes transformers "
            f"{stack.vllm_transformers}: drop that pin"
        )
    return [
        Finding(
            "error",
            "option.generation_engine",
            f"the vllm engine (option.rolling_batch=vllm or "
            f"option.generation_engine=vllm) cannot run: {reason}; auto picks an engine that runs on "
            f"{stack.image}",
        )
    ]


def check_model(project: Project, stack: ImageStack, model_id: str, shipped: list[Requirement]) -> list[Finding]:
    """A local model (config.json, tokenizer_config.json) newer than the transformers the image will run."""
    directory = local_model_dir(project, model_id) if model_id else None
    if directory is None:
        return []
    have = running_transformers(stack, shipped)
    findings = _model_type(read_json(directory / "config.json") or {}, stack, have)
    tokenizer = read_json(directory / "tokenizer_config.json") or {}
    if tokenizer.get("tokenizer_class") == "TokenizersBackend" and have.major < 5:
        findings.append(
            Finding(
                "error",
                "option.model_id",
                f"tokenizer_config.json's TokenizersBackend was written "
                f"by transformers 5; {stack.image} runs transformers {have}: re-save the tokenizer "
                "with a class that version knows, e.g. PreTrainedTokenizerFast",
            )
        )
    return findings


def check_device(stack: ImageStack, props: Mapping[str, str], gpus: int | None) -> list[Finding]:
    """A half dtype on an instance without a GPU: fp16 where the image's torch has no fp16 matrix multiply on a CPU
    (torch 2.0: the handler refuses it at load), else slow."""
    dtype = props.get("option.dtype", props.get("option.data_type", "")).strip().lower()
    half = {"fp16": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16"}.get(dtype)
    if gpus != 0 or half is None:
        return []
    if half == "fp16" and Version(stack.torch) < CPU_FP16_TORCH:
        return [
            Finding(
                "error",
                "option.dtype",
                f"{dtype} on an instance without a GPU: torch {stack.torch} ({stack.image}) has no fp16 matrix "
                "multiply on a CPU, so the handler refuses it at load: use option.dtype=fp32 or auto, or a GPU instance",
            )
        ]
    return [
        Finding("warning", "option.dtype", f"{dtype} on an instance without a GPU runs slowly: fp32 or auto is faster")
    ]


def check_tensor_parallel(stack: ImageStack, project: Project) -> list[Finding]:
    """`option.tensor_parallel_degree=max` exists only from LMI 0.24 (0.23 fails to parse it)."""
    if project.tensor_parallel_degree != "max" or Version(stack.version) >= TP_MAX_SINCE:
        return []
    return [
        Finding(
            "error",
            "option.tensor_parallel_degree",
            f"max exists from LMI {TP_MAX_SINCE}; {stack.image} "
            "fails to parse it (NumberFormatException): give the number of GPUs",
        )
    ]


def _replacement(stack: ImageStack, req: Requirement, name: str, version: str) -> Finding:
    if name in PINNED_BY_IMAGE:
        return Finding(
            "error",
            "requirements.txt",
            f"{req} would replace the image's {name} {version} "
            f"({stack.image}), which its CUDA build and other packages rely on: drop the line",
        )
    return Finding("warning", "requirements.txt", f"{req} replaces the image's {name} {version} ({stack.image})")


def _needs_newer_runtime(stack: ImageStack, req: Requirement) -> bool:
    """Whether a transformers requirement asks for a version the image's Python and torch cannot run."""
    lowest = lowest_allowed(req)
    if lowest is None or lowest.major < 5:
        return False
    return stack.python < TRANSFORMERS_5_PYTHON or (lowest >= CONTINUOUS_TRANSFORMERS and not stack.runs_continuous())


def _model_type(config: dict[str, Any], stack: ImageStack, have: Version) -> list[Finding]:
    model_type = config.get("model_type")
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if model_type in MODEL_TYPES:
        what, need = f"model_type {model_type}", Version(MODEL_TYPES[model_type])
    elif model_type == "llama" and kv_heads not in (None, heads):
        what, need = f"llama with grouped-query attention ({heads} heads, {kv_heads} key/value heads)", LLAMA_GQA
    else:
        return []
    if have >= need:
        return []
    return [
        Finding(
            "error",
            "option.model_id",
            f"{what} needs transformers >= {need}; {stack.image} runs "
            f"transformers {have}: use a newer image, e.g. --image {NEWEST_IMAGE}",
        )
    ]
