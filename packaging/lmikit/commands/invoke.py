"""`lmi invoke`: send one prompt to a SageMaker endpoint, local or in AWS, and print the tokens as they arrive.

The body is LMI's `{"inputs", "parameters"}`, or with `--chat` an OpenAI chat body that the endpoint renders through
the model's chat template. `--json-schema FILE` has the answer decoded under that JSON schema (`parameters.
structured_outputs.json`, or the chat body's `response_format`).

Both go through one code path, a boto3 `sagemaker-runtime` client (`lmikit.invoke.runtime_client`):
`--endpoint-url` points it at `lmi serve`, otherwise the standard AWS chain picks the endpoint
(AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME included). Tokens go to stdout; the summary (TTFT, tokens, tok/s) and errors go
to stderr, and any failure exits 1 with a one-line message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from ..client import FORMATS, Stream, StreamError, invoke_body_stream
from ..client.runtime_client import DEFAULT_ENDPOINT, runtime_client


@click.command("invoke")
@click.argument("prompt")
@click.option("--endpoint", "endpoint_name", default=DEFAULT_ENDPOINT, show_default=True, help="Endpoint name.")
@click.option("--endpoint-url", help="Runtime API URL, e.g. http://127.0.0.1:8080 for `lmi serve` (default: AWS).")
@click.option("--region", help="AWS region (default: the AWS configuration; us-east-1 with --endpoint-url).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature (default: the model's).")
@click.option(
    "--stream/--no-stream",
    default=True,
    show_default=True,
    help="InvokeEndpointWithResponseStream, or InvokeEndpoint and print the whole answer.",
)
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", *FORMATS]),
    help="The model's output format (auto: from the content type and the first bytes).",
)
@click.option(
    "--chat",
    is_flag=True,
    help="Send PROMPT as a user message in an OpenAI chat body: the endpoint applies the chat template.",
)
@click.option("--system", help="With --chat: a system message before PROMPT.")
@click.option(
    "--json-schema",
    "schema_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON schema file: the answer is decoded to match it (structured output).",
)
@click.option(
    "--adapter",
    help="The LoRA adapter that answers: its inference component's name (lmi deploy --inference-components, or an "
    "adapter under adapters/ for lmi serve).",
)
def invoke_command(
    prompt: str,
    endpoint_name: str,
    endpoint_url: str | None,
    region: str | None,
    max_new_tokens: int,
    temperature: float | None,
    stream: bool,
    fmt: str,
    chat: bool,
    system: str | None,
    schema_file: Path | None,
    adapter: str | None,
) -> None:
    """Send PROMPT to an endpoint; print the generated text, streamed token by token by default."""
    if system is not None and not chat:
        raise click.UsageError("--system needs --chat")
    body = request_body(prompt, max_new_tokens, temperature, chat, system, _schema(schema_file))
    client = runtime_client(endpoint_url, region)
    forced = None if fmt == "auto" else fmt
    try:
        if stream:  # a chat stream is SSE, whatever content type DJL 0.23 labels it with
            stream_format = forced or ("sse" if chat else None)
            print_stream(invoke_body_stream(client, endpoint_name, body, stream_format, inference_component=adapter))
        else:
            _print_whole(client, endpoint_name, body, forced, adapter)
    except (ClientError, BotoCoreError, StreamError) as error:
        raise click.ClickException(_one_line(error)) from error


def request_body(
    prompt: str,
    max_new_tokens: int,
    temperature: float | None,
    chat: bool,
    system: str | None = None,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The LMI body `{"inputs", "parameters"}`, or with `chat` an OpenAI chat body `{"messages", "max_tokens"}`; a
    `schema` constrains the answer."""
    settings: dict[str, Any] = {"max_tokens" if chat else "max_new_tokens": max_new_tokens}
    if temperature is not None:
        settings["temperature"] = temperature
    if not chat:
        if schema is not None:
            settings["structured_outputs"] = {"json": schema}
        return {"inputs": prompt, "parameters": settings}
    if schema is not None:
        settings["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"messages": messages, **settings}


def _schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"{path} is not JSON: {error}", param_hint="--json-schema") from None
    if not isinstance(schema, dict):
        raise click.BadParameter(f"{path} must hold a JSON schema object", param_hint="--json-schema")
    return schema


def print_stream(stream: Stream) -> None:
    """Print each token as it arrives, then the summary line on stderr."""
    try:
        for event in stream:
            if event.text and not event.special:
                click.echo(event.text, nl=False)  # click.echo flushes
    finally:
        if stream.tokens:
            click.echo()
    click.echo(_summary(stream), err=True)


def _print_whole(
    client: Any, endpoint_name: str, body: Mapping[str, Any], fmt: str | None, component: str | None
) -> None:
    started = time.perf_counter()
    routing = {} if component is None else {"InferenceComponentName": component}
    response = client.invoke_endpoint(
        EndpointName=endpoint_name, ContentType="application/json", Body=json.dumps(body).encode(), **routing
    )
    content = response["Body"].read()
    click.echo(Stream([content], fmt=fmt, content_type=response.get("ContentType")).text())
    click.echo(f"latency {time.perf_counter() - started:.3f} s", err=True)


def _summary(stream: Stream) -> str:
    ttft, rate = stream.time_to_first_token, stream.tokens_per_second
    ttft_text = "-" if ttft is None else f"{ttft:.3f} s"
    rate_text = "-" if rate is None else f"{rate:.1f}"
    return f"TTFT {ttft_text}, {stream.tokens} tokens, {rate_text} tok/s"


def _one_line(error: Exception) -> str:
    text = f"{type(error).__name__}: {error.message}" if isinstance(error, StreamError) else str(error)
    return " ".join(text.split())
