"""Replay helpers: load the project's real model/model.py through the DJL stand-in and drive it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from lmikit.djl.driver import Frontend
from lmikit.djl.loader import load_entry_point, model_environment
from lmikit.djl.response import Response
from lmikit.project.properties import init_properties

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
TIMEOUT = 30.0


@contextmanager
def frontend(version: str, model_dir: Path = MODEL_DIR, **options: str) -> Iterator[Frontend]:
    """model.py behind DJL's replayed frontend, with these serving.properties options."""
    props = {"engine": "Python", **{f"option.{k}": v for k, v in options.items()}}
    with model_environment(model_dir):
        entry = load_entry_point(model_dir, version)
        front = Frontend(entry, version, init_properties(props, model_dir), predict_timeout=TIMEOUT)
        front.start()
        try:
            yield front
        finally:
            front.close()


def post(front: Frontend, payload: dict | bytes, **headers: str) -> Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return front.submit({"Content-Type": "application/json", **headers}, body)


def collect(response: Response) -> tuple[int, list[bytes]]:
    """Status and every chunk of a response (bounded waits)."""
    head = response.head(TIMEOUT)
    return head.status, list(response.chunks(TIMEOUT))


def post_all(front: Frontend, payloads: list[dict]) -> list[tuple[int, list[bytes]]]:
    """Send the payloads at once and collect each response concurrently."""
    responses = [post(front, payload) for payload in payloads]
    with ThreadPoolExecutor(len(responses)) as pool:
        return list(pool.map(collect, responses))


def assert_whole_events(chunks: list[bytes], separator: bytes = b"\n") -> None:
    """What the protocols guarantee of a stream's chunks, however the steps fall: none is empty and each ends on an
    event boundary (a step answers whole events; how many tokens a step holds depends on scheduling)."""
    assert chunks and all(chunk.endswith(separator) for chunk in chunks), chunks
