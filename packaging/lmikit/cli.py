"""The `lmi` command line: one click group; each command lives in the module that does the work."""
from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="lmikit")
def main() -> None:
    """Serve, invoke, build and deploy a DJL Serving (LMI) streaming model."""
