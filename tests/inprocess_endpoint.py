"""model.py behind the real HTTP server in this process (DJL rolling batch, the tiny model, the portable engine), with
its engine instrumented: forward passes counted, each request's last update step noted, faults injected on demand."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lmikit.embedded_model import ensure_tiny_model
from lmikit.server.endpoint import LocalEndpoint
from lmikit.server.runtime import RuntimeConfig
from replay import frontend


class Instruments:
    """Counts the engine's forward passes, remembers the step of each request's last update, and fails a step on
    demand."""

    def __init__(self, engine: Any, hub: Any) -> None:
        self.engine, self.hub, self.steps, self.fault, self.prefill_fault = engine, hub, 0, None, None
        self.last_update: dict[str, int] = {}
        self.prompts: dict[str, str] = {}  # engine request id -> prompt
        self.response_prompts: dict[str, str] = {}  # HTTP response id -> prompt
        self._lock = threading.Lock()
        submit = engine.submit

        def counted(kind: str) -> None:
            with self._lock:
                self.steps += 1
                if kind == "decode":  # a step of the running batch
                    fault, self.fault = self.fault, None
                else:  # the prefill of joining requests
                    fault, self.prefill_fault = self.prefill_fault, None
            if fault is not None:
                raise fault

        def noted(update: Any) -> None:
            self.last_update[update.request_id] = self.steps

        def named(request_id: str, prompt_ids: list[int], params: Any) -> None:
            self.prompts[request_id] = engine.tokenizer.decode(prompt_ids)
            submit(request_id, prompt_ids, params)

        engine.observe_forward_passes(counted)
        engine.submit = named
        hub.observe(noted)


@contextmanager
def served(version: str = "0.23", **options: str) -> Iterator[tuple[LocalEndpoint, Instruments]]:
    """model.py (DJL rolling batch, the tiny model) behind the real HTTP server, in this process; an option given as
    None is left unset."""
    settings = {
        "model_id": str(ensure_tiny_model()),
        "dtype": "fp32",
        "rolling_batch": "custom",
        "max_rolling_batch_size": "32",
        "generation_engine": "portable",
        "output_formatter": "jsonlines",
        **options,
    }
    settings = {key: value for key, value in settings.items() if value is not None}  # None: leave the option unset
    with frontend(version, **settings) as front:
        service = front.entry.module.service
        instruments = Instruments(service.engine, service.hub)
        submit = front.submit

        def noted_submit(headers: Any, body: bytes, *args: Any, **kwargs: Any) -> Any:
            response = submit(headers, body, *args, **kwargs)
            try:
                instruments.response_prompts[response.request_id] = json.loads(body)["inputs"]
            except (ValueError, KeyError, TypeError):
                pass
            return response

        front.submit = noted_submit
        try:
            with http_endpoint(front, "tiny") as endpoint:
                yield endpoint, instruments
        finally:
            service.engine.stop()


@contextmanager
def http_endpoint(front: Any, served_model: str) -> Iterator[LocalEndpoint]:
    """The real HTTP server (`lmi serve`'s) over a frontend, in this process."""
    endpoint = LocalEndpoint(("127.0.0.1", 0), RuntimeConfig(endpoint_name="local"), served_model=served_model)
    endpoint.set_frontend(front)
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.shutdown()
        thread.join(timeout=30)


def port_of(endpoint: LocalEndpoint) -> int:
    return int(endpoint.url.rsplit(":", 1)[1])


def post(endpoint: LocalEndpoint, payload: dict, path: str = "/invocations") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(endpoint), timeout=120)
    conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
    return conn.getresponse()


def wait_until(condition: Any, timeout: float = 30.0) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return False
