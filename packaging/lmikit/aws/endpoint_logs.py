"""An endpoint's container logs in CloudWatch (`/aws/sagemaker/Endpoints/<name>`): `lmi logs`, and the last lines a
failed deploy prints beside SageMaker's FailureReason."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import ClientError

LOG_GROUP = "/aws/sagemaker/Endpoints/{}"
_SINCE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LogsMissing(Exception):
    """The endpoint has no log group (yet): it never started a container, or the name is wrong."""


def parse_since(text: str) -> float:
    """'30s', '10m', '2h' or '1d' → seconds; ValueError naming the format otherwise."""
    match = _SINCE.match(text.strip())
    if match is None:
        raise ValueError(f"--since {text!r}: use a number and one of s, m, h, d (e.g. 10m)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def read_events(logs_client: Any, endpoint_name: str, start_ms: int) -> list[dict[str, Any]]:
    """Every event of every container since `start_ms`, oldest first."""
    group = LOG_GROUP.format(endpoint_name)
    events: list[dict[str, Any]] = []
    try:
        for page in logs_client.get_paginator("filter_log_events").paginate(logGroupName=group, startTime=start_ms):
            events.extend(page.get("events", []))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise LogsMissing(f"no log group {group}: the endpoint has not started a container") from None
        raise
    return sorted(events, key=lambda event: (event["timestamp"], event.get("eventId", "")))


def last_lines(logs_client: Any, endpoint_name: str, count: int = 20, window_s: float = 3600.0) -> list[str]:
    """The last `count` log lines of the past `window_s` seconds (none when there is no log group)."""
    try:
        events = read_events(logs_client, endpoint_name, int((time.time() - window_s) * 1000))
    except LogsMissing:
        return []
    return [format_event(event) for event in events[-count:]]


def follow(logs_client: Any, endpoint_name: str, start_ms: int, wait: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    """Events as they arrive: read, yield what is new, then `wait()` (True ends it)."""
    seen: set[str] = set()
    while True:
        for event in read_events(logs_client, endpoint_name, start_ms):
            key = event.get("eventId") or f"{event['timestamp']}:{event['message']}"
            if key not in seen:
                seen.add(key)
                start_ms = max(start_ms, event["timestamp"])
                yield event
        if wait():
            return


def format_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["timestamp"] / 1000))
    return f"{stamp} {event.get('logStreamName', '-')} {event['message'].rstrip()}"
