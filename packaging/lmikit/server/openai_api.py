"""The OpenAI side of `lmi serve`: what `/v1/chat/completions` and `/v1/completions` check before the handler, how its errors look, and
the `/v1/models` list. Pure: bytes and dicts in, bytes and dicts out.

The handler itself answers chat bodies in OpenAI's shapes; what lands here is what DJL shapes on its own (the newest
rolling batch rewrites an error item's body to `{"error", "code"}`, a failed request before the handler gets DJL's
`{"code", "type", "message"}`). Those are rewritten into OpenAI's error object, so the `openai` client raises the
right exception class with the right message.
"""

from __future__ import annotations

import json
from typing import Any

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


#: what each OpenAI route needs in its body, and the API that defines it
ROUTE_BODIES = {"chat": ("messages", "chat completions"), "completions": ("prompt", "completions")}


def read_openai_body(body: bytes, route: str) -> tuple[str | None, str]:
    """Why a body cannot be a request of this OpenAI route (None when it can: the handler validates the rest), and
    the content type of its answer. DJL 0.23 labels every rolling-batch response with the one content type of
    `option.output_formatter`; these routes label an answer as what it is."""
    field, api = ROUTE_BODIES[route]
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "request body is not valid JSON", "application/json"
    if not isinstance(payload, dict) or field not in payload or "inputs" in payload:
        return f'request body must be a JSON object with "{field}", as OpenAI\'s {api} API takes', "application/json"
    return None, "text/event-stream" if payload.get("stream") is True else "application/json"


def openai_error(status: int, content: bytes, param: str | None = None) -> bytes:
    """An error body in OpenAI's shape (unchanged when it already is)."""
    try:
        body: Any = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return content
    if isinstance(body, dict):
        message = body.get("error") or body.get("message") or json.dumps(body)
    else:
        message = content.decode("utf-8", errors="replace") or f"HTTP {status}"
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    error = {"message": str(message), "type": kind, "param": param, "code": status}
    return json.dumps({"error": error}).encode()


def models_list(model: str, created: int, adapters: tuple[str, ...] = ()) -> dict[str, Any]:
    """`GET /v1/models`: the model this endpoint serves, then its LoRA adapters (each names itself as `model`)."""
    entries = [{"id": model, "object": "model", "created": created, "owned_by": "lmikit"}]
    entries += [
        {"id": name, "object": "model", "created": created, "owned_by": "lmikit", "parent": model} for name in adapters
    ]
    return {"object": "list", "data": entries}
