"""The `lmi` command line: one click group over the commands in `commands/` (and `lmi bench`, in `benchmarks/`)."""

from __future__ import annotations

import click

from .commands.bench import bench_command
from .commands.build import build_command
from .commands.chat import chat_command
from .commands.demo import demo_command
from .commands.deploy import deploy_command, update_command
from .commands.endpoints import delete_command, logs_command, status_command
from .commands.invoke import invoke_command
from .commands.serve import serve_command


@click.group()
@click.version_option(package_name="lmikit")
def main() -> None:
    """Serve, invoke, build and deploy a DJL Serving (LMI) streaming model."""


for _command in (
    demo_command,
    serve_command,
    invoke_command,
    build_command,
    deploy_command,
    delete_command,
    update_command,
    status_command,
    logs_command,
    chat_command,
    bench_command,
):
    main.add_command(_command)
