"""`lmi status`, `lmi logs` and `lmi delete`: look at and remove deployed endpoints."""

from __future__ import annotations

import time

import boto3
import click
from rich.console import Console
from rich.table import Table

from ..aws import autoscaling, components, endpoint_logs, endpoint_status, lifecycle
from .common import aws_errors


@click.command("status")
@click.option("--endpoint", "endpoint_name", help="One endpoint (default: every endpoint, newest first).")
def status_command(endpoint_name: str | None) -> None:
    """List endpoints: status, instances, image, creation time and model data."""
    with aws_errors():
        session = boto3.session.Session()
        statuses = endpoint_status.endpoint_statuses(session.client("sagemaker"), endpoint_name)
    table = Table("endpoint", "status", "instances", "image", "created", "model data")
    for item in statuses:
        status = item.status if item.failure_reason is None else f"{item.status}: {item.failure_reason}"
        table.add_row(
            item.name,
            status,
            f"{item.instance_count} x {item.instance_type}",
            item.image,
            item.created,
            item.model_data_url,
        )
    Console(width=200).print(table)


@click.command("logs")
@click.option("--endpoint", "endpoint_name", required=True, help="The endpoint whose container logs to print.")
@click.option("--since", default="10m", show_default=True, help="How far back: 30s, 10m, 2h, 1d.")
@click.option("--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option(
    "--poll",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between reads with --follow.",
)
def logs_command(endpoint_name: str, since: str, follow: bool, poll: float) -> None:
    """Print the endpoint's CloudWatch log stream (/aws/sagemaker/Endpoints/<name>)."""
    try:
        start_ms = int((time.time() - endpoint_logs.parse_since(since)) * 1000)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    with aws_errors():
        client = boto3.session.Session().client("logs")
        if follow:
            for event in endpoint_logs.follow(client, endpoint_name, start_ms, lambda: _sleep(poll)):
                click.echo(endpoint_logs.format_event(event))
            return
        for event in endpoint_logs.read_events(client, endpoint_name, start_ms):
            click.echo(endpoint_logs.format_event(event))


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@click.command("delete")
@click.option("--endpoint", "endpoint_name", required=True, help="Endpoint to delete.")
@click.option("--artifacts", is_flag=True, help="Also delete the model.tar.gz the model points at in S3.")
@click.option(
    "--poll-delay",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between checks that inference components are gone.",
)
def delete_command(endpoint_name: str, artifacts: bool, poll_delay: float) -> None:
    """Delete an endpoint, its inference components first (adapters before their base), its endpoint config and
    model (and the S3 artifact); missing ones are skipped."""
    console = Console(stderr=True)
    with aws_errors():
        session = boto3.session.Session()
        sm_client = session.client("sagemaker")
        deleted = autoscaling.disable(session.client("application-autoscaling"), endpoint_name)
        models: list[str] = []
        if components.hosts_components(sm_client, endpoint_name):
            with console.status(f"{endpoint_name}: deleting its inference components"):
                removed, models = components.delete_components(sm_client, endpoint_name, delay=poll_delay)
            deleted += removed
        deleted += lifecycle.delete(sm_client, session.client("s3"), endpoint_name, artifacts, models)
    for item in deleted:
        console.print(f"deleted {item}")
    if not deleted:
        console.print(f"nothing to delete for {endpoint_name}")
