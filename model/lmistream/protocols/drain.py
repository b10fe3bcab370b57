"""Draining one request's formatted output from the update hub as the engine produces it, for the adapters that hand
DJL a stream per request: `plain` (a generator DJL iterates on its own thread) and `asynchronous` (an async
generator). The two loops differ only in how they wait; they sit side by side here around the step they share.
Closing either (the client went away) releases the request, which cancels it in the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from ..admission import EngineRequests
from ..generation_group import Admitted

#: how long one wait for an update lasts before the loop looks again (a wake-up needs no timeout)
WAIT_SECONDS = 5.0


def chunks(requests: EngineRequests, generation: Admitted) -> Iterator[str]:
    """Non-empty pieces of output until the request finishes."""
    try:
        while not generation.finished:
            requests.hub.wait_any([generation.request_id], timeout=WAIT_SECONDS)
            text = _next_text(requests, generation)
            if text:
                yield text
    finally:
        requests.release(generation)


async def texts(requests: EngineRequests, generation: Admitted) -> AsyncIterator[str]:
    """Pieces of output until the request finishes; the last one even when empty (it carries `last`)."""
    try:
        while not generation.finished:
            await requests.hub.wait_async(generation.request_id, timeout=WAIT_SECONDS)
            text = _next_text(requests, generation)
            if text or generation.finished:
                yield text
    finally:
        requests.release(generation)


def _next_text(requests: EngineRequests, generation: Admitted) -> str:
    return generation.absorb(requests.hub.take(generation.request_id))
