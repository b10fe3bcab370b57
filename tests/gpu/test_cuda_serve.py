"""`lmi serve --option dtype=fp16` on the GPU, streamed through an unmodified boto3 client: lmi serve gives the
handler GPU 0, the served process holds memory on it (nvidia-smi), and the tokens arrive as a stream, on the engine
`auto` picks there and on the portable one."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lmikit.client.runtime_client import runtime_client
from local_endpoint import make_project, serve

PROPERTIES = """engine=Python
option.rolling_batch=custom
option.output_formatter=jsonlines
option.max_rolling_batch_size=8
option.generation_engine={engine}
"""
PAYLOAD = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 40}}


def gpu_processes() -> dict[int, int]:
    """MiB of GPU memory each process holds, by pid, as nvidia-smi reports them."""
    listing = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = (line.partition(",")[::2] for line in listing.splitlines())
    return {int(pid): int(mib) for pid, mib in rows if pid.strip().isdigit() and mib.strip().isdigit()}


def served_gpu_mib(pid: int) -> int | None:
    """The GPU memory `pid` holds; None where nvidia-smi lists no process of this machine (not even this one, which
    holds the earlier checks' CUDA context), so it cannot tell."""
    listed = gpu_processes()
    if os.getpid() not in listed:
        return None
    return listed.get(pid, 0)


@pytest.mark.parametrize("engine", ["auto", "portable"])
def test_lmi_serve_streams_fp16_from_the_gpu_through_boto3(
    engine: str, tmp_path: Path, tiny_dir: Path, device: torch.device, record, capsys
) -> None:
    project = make_project(tmp_path / "project", PROPERTIES.format(engine=engine))
    with serve(project, "--model-id", str(tiny_dir), "--option", "dtype=fp16", "--endpoint-name", "gpu") as server:
        held = served_gpu_mib(server.process.pid) if device.type == "cuda" else None
        client = runtime_client(server.url)
        start = time.monotonic()
        response = client.invoke_endpoint_with_response_stream(
            EndpointName="gpu", ContentType="application/json", Body=json.dumps(PAYLOAD).encode()
        )
        arrivals, parts = [], []
        for event in response["Body"]:
            arrivals.append(time.monotonic() - start)
            parts.append(event["PayloadPart"]["Bytes"])
    output = capsys.readouterr().out
    lines = [json.loads(line) for line in b"".join(parts).decode().splitlines()]
    assert lines and "".join(line["outputs"][0] for line in lines), output[-2000:]
    assert len(parts) >= 3, "the tokens arrive as a stream, not one buffered body"
    assert ("on GPU 0" if device.type == "cuda" else "on the CPU") in output
    if held is not None:
        assert held > 0, f"the lmi serve process holds no GPU memory: {gpu_processes()}"
    placement = held if held is not None else "not listed by nvidia-smi" if device.type == "cuda" else "cpu"
    record(ttft_s=round(arrivals[0], 3), parts=len(parts), stream_s=round(arrivals[-1], 3), gpu_mib=placement)
