"""`lmi serve`: its options, read into `ServeSettings` for `server.run`."""

from __future__ import annotations

from pathlib import Path

import click

from ..djl.dialect import DjlVersion
from ..embedded_model import EmbeddedModelError
from ..server.run import ServeSettings, run
from ..server.runtime import RuntimeConfig


@click.command("serve")
@click.option(
    "--project-dir",
    default=".",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Project with serving.properties and model/model.py.",
)
@click.option(
    "--model-id",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A local model directory (default: the embedded SmolLM2).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--djl-version",
    type=click.Choice([version.value for version in DjlVersion]),
    default=DjlVersion.LMI_0_23.value,
    show_default=True,
    help="Which DJL Serving protocol to replay (0.23 matches the default deploy image).",
)
@click.option("--endpoint-name", default="local", show_default=True, help="Name for the SageMaker runtime routes.")
@click.option("--option", "overrides", multiple=True, metavar="KEY=VALUE", help="Override option.KEY.")
@click.option(
    "--stream-time-limit",
    default=RuntimeConfig.stream_time_limit,
    show_default=True,
    type=float,
    help="Seconds a runtime-API stream may last before ModelInvocationTimeExceeded.",
)
@click.option(
    "--launcher",
    type=click.Choice(["auto", "mpirun", "processes"]),
    default="auto",
    show_default=True,
    help="How tensor-parallel ranks start (engine=MPI): mpirun as DJL does, or plain processes with the same "
    "environment; auto takes mpirun when it is on PATH.",
)
def serve_command(
    project_dir: Path,
    model_id: Path | None,
    host: str,
    port: int,
    djl_version: str,
    endpoint_name: str,
    overrides: tuple[str, ...],
    stream_time_limit: float,
    launcher: str,
) -> None:
    """Run the project's model.py as a local streaming endpoint."""
    split = [item.split("=", 1) for item in overrides]
    if any(len(pair) != 2 for pair in split):
        raise click.BadParameter("expected KEY=VALUE", param_hint="--option")
    pairs = tuple((pair[0], pair[1]) for pair in split)
    settings = ServeSettings(
        project_dir, model_id, host, port, DjlVersion(djl_version), endpoint_name, pairs, stream_time_limit, launcher
    )
    try:
        run(settings)
    except EmbeddedModelError as error:
        raise click.ClickException(str(error)) from error
