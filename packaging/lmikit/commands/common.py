"""What the lifecycle commands share: the validated build and one-line AWS errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console

from ..aws import endpoint_logs, instances, lifecycle
from ..project import image_stacks, images
from ..project.layout import Project
from ..project.tarball import BuildReport, build_tarball
from ..project.validate import errors, validate_project

DEFAULT_TARBALL = Path("dist") / "model.tar.gz"


def validated_build(
    project: Project, out: Path, image: str, console: Console, instance_type: str | None = None
) -> BuildReport:
    """Validate the project for the image and instance type (findings printed), then write the tarball;
    ClickException on errors."""
    gpus = None if instance_type is None else instances.instance_gpus(instance_type)
    findings = validate_project(project) + images.check_image(project, image, gpus)
    for finding in findings:
        console.print(str(finding), style="red" if finding.level == "error" else "yellow", markup=False, soft_wrap=True)
    if errors(findings):
        raise click.ClickException(f"{len(errors(findings))} error(s) in {project.root}; nothing built")
    stack, engine = image_stacks.stack_for(image), images.generation_engine(project)
    requirements = images.shipped_requirements(project, stack, images.requirements_text(project), engine)
    report = build_tarball(project, out, requirements)
    for entry in report.entries:
        console.print(f"  {entry}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"Built {report.path} ({report.size:,} bytes, {len(report.entries)} entries) for {image}; "
        f"{images.engine_note(project, stack, engine, requirements, gpus)}",
        markup=False,
        soft_wrap=True,
    )
    return report


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn AWS and deploy errors into a one-line click error (exit 1) instead of a traceback."""
    try:
        yield
    except (lifecycle.DeployError, endpoint_logs.LogsMissing, ClientError, BotoCoreError) as exc:
        raise click.ClickException(str(exc)) from exc
