"""Prometheus metrics of `lmi serve`, through prometheus_client: requests by route and status, requests in flight,
rolling-batch occupancy, time to first token and between tokens, tokens out, and the engine's prefix-cache hit rate
and cached bytes (NaN where the engine keeps no such cache or runs in other processes).

Tokens are counted on the container's response stream with the client library's own parser, so every output format
(LMI 0.23 and newest jsonlines, json, TGI sse) counts alike; the SageMaker runtime route counts the container stream
beneath its event-stream frames.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lmikit.client.errors import ParseError
from lmikit.client.events import EventParser, TokenEvent

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """One registry per endpoint; `occupancy` reads the rolling batch's active requests, `engine_stats` the engine's
    figures (`prefix_cache_hit_rate`, `prefix_cache_bytes`)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, occupancy: Callable[[], int], engine_stats: Callable[[], Mapping[str, float]] = dict) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmi_requests", "Answered requests by route and HTTP status", ["route", "status"], registry=self.registry
        )
        self.in_flight = Gauge("lmi_requests_in_flight", "Requests being answered now", registry=self.registry)
        self.batch = Gauge("lmi_batch_occupancy", "Requests in the rolling batch now", registry=self.registry)
        self.batch.set_function(occupancy)
        self.ttft = Histogram(
            "lmi_time_to_first_token_seconds",
            "From request arrival to its first token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "lmi_inter_token_latency_seconds",
            "Between consecutive tokens of a response",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter("lmi_tokens_out", "Tokens sent to clients", registry=self.registry)
        for name, help_text in (
            ("prefix_cache_hit_rate", "Share of prompt tokens the prefix cache held"),
            ("prefix_cache_bytes", "Bytes of KV the prefix cache holds"),
        ):
            gauge = Gauge(f"lmi_{name}", help_text, registry=self.registry)
            gauge.set_function(_reading(engine_stats, name))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def start(self, route: str) -> RequestTrack:
        return RequestTrack(self, route)


def _reading(engine_stats: Callable[[], Mapping[str, float]], name: str) -> Callable[[], float]:
    return lambda: engine_stats().get(name, math.nan)


class RequestTrack:
    """One request: in flight from creation until `end`; its container chunks pass through `watch`."""

    def __init__(self, metrics: ServeMetrics, route: str) -> None:
        self._metrics, self._route = metrics, route
        self._started = self._last = time.monotonic()
        self._seen_token = False
        self._parser: EventParser | None = None
        self._ended = False
        metrics.in_flight.inc()

    def watch(self, chunks: Iterator[bytes], content_type: str | None) -> Iterator[bytes]:
        """The same chunks, their tokens counted as they pass (`begin`, `see`, `finish`)."""
        self.begin(content_type)
        for chunk in chunks:
            self.see(chunk)
            yield chunk
        self.finish()

    def begin(self, content_type: str | None) -> None:
        """Count the tokens of the chunks `see` is given from now on. Counting never breaks a response: a body the
        parser cannot read (an error page, a custom format) is passed on uncounted."""
        self._parser = EventParser(content_type=content_type)

    def see(self, chunk: bytes) -> None:
        """One chunk of the body, as it is sent."""
        if self._parser is not None:
            self._feed(self._parser.feed, chunk)

    def finish(self) -> None:
        """The body ended."""
        parser = self._parser
        if parser is not None:
            self._feed(lambda _: parser.close(), b"")

    def _feed(self, parse: Callable[[bytes], list[Any]], chunk: bytes) -> None:
        try:
            self._count(parse(chunk))
        except ParseError:
            self._parser = None

    def end(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        self._metrics.in_flight.dec()
        self._metrics.requests.labels(self._route, str(status)).inc()

    def _count(self, events: list[Any]) -> None:
        tokens = sum(1 for event in events if isinstance(event, TokenEvent))
        if not tokens:
            return
        now = time.monotonic()
        if not self._seen_token:
            self._metrics.ttft.observe(now - self._started)
            self._seen_token = True
            tokens_after_first = tokens - 1
        else:
            tokens_after_first = tokens
        for _ in range(tokens_after_first):
            self._metrics.itl.observe((now - self._last) / tokens)
        self._last = now
        self._metrics.tokens.inc(tokens)
