"""`lmi build`: validate the project for an image, then write a deterministic model.tar.gz."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from ..aws import lifecycle
from ..project.layout import Project
from .common import DEFAULT_TARBALL, validated_build


@click.command("build")
@click.argument("project_dir", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Archive to write (default: PROJECT_DIR/dist/model.tar.gz).",
)
@click.option(
    "--image",
    default=lifecycle.DEFAULT_IMAGE,
    show_default=True,
    help="The image to build for: its Python stack decides requirements.txt and what is checked.",
)
@click.option(
    "--instance-type",
    help="The instance type to deploy on (e.g. ml.g5.2xlarge): options its device cannot run are refused.",
)
def build_command(project_dir: Path, out: Path | None, image: str, instance_type: str | None) -> None:
    """Validate the project for the image, then write a deterministic model.tar.gz."""
    console = Console(stderr=True)
    project = Project.at(project_dir)
    report = validated_build(project, out or project_dir / DEFAULT_TARBALL, image, console, instance_type)
    click.echo(str(report.path))
