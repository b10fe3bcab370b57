"""`lmi chat`: start the Streamlit chatbot (app.py) for a SageMaker endpoint, a runtime URL or the local endpoint.

The process becomes `streamlit run chat/app.py` (headless, no usage statistics, no developer toolbar, bound to --host),
with the resolved endpoint in its environment; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..chat.target import LOCAL_URL, ChatTarget

APP = Path(__file__).parents[1] / "chat" / "app.py"
DEFAULT_PORT = 6006  # the blog's port (SageMaker Studio proxies it)


@click.command("chat")
@click.option(
    "--endpoint",
    "endpoint_name",
    help="SageMaker endpoint name (default: $endpoint_name; with --endpoint-url: 'local').",
)
@click.option("--endpoint-url", help=f"Runtime API URL, e.g. `lmi serve`'s (default with no flags: {LOCAL_URL}).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the page is served on.")
def chat_command(endpoint_name: str | None, endpoint_url: str | None, port: int, host: str) -> None:
    """Chat with an endpoint in the browser, the answer streamed token by token."""
    target = ChatTarget.resolve(endpoint_name, endpoint_url, os.environ)
    click.echo(f"Chatting with {target.describe()} at http://{host}:{port}", err=True)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    os.execve(sys.executable, command, {**os.environ, **target.environment()})
