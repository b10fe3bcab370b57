"""Error hierarchy of the handler, and each client API's error body.

Every error carries the HTTP status DJL should answer with, the API whose shape its body takes (`lmi`, `tgi`,
`chat` or `completion`, set once the request's API is known) and, where one field is at fault, that field (`param`).
"""

from __future__ import annotations

import json

#: OpenAI's error `type` for each status the handler answers with
_OPENAI_TYPES = {400: "invalid_request_error", 424: "server_error", 507: "server_error"}


class HandlerError(Exception):
    """Base class: `status` is the HTTP code the client sees (DJL's codes: 400, 424, 507)."""

    status = 424

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.api = "lmi"

    def body(self) -> str:
        """The error as one JSON body in its API's shape."""
        return error_body(self.api, self.message, self.status, self.param)


class ConfigError(HandlerError):
    """A serving.properties option is missing or out of range; the model fails to load."""

    status = 424


class InvalidRequest(HandlerError):
    """A request's body or parameters are invalid; only that request fails."""

    status = 400


class EngineError(HandlerError):
    """The engine failed while generating; the requests it was running fail."""

    status = 424


class OutOfMemory(HandlerError):
    """The engine ran out of memory (DJL answers 507)."""

    status = 507


def error_body(api: str, message: str, status: int, param: str | None = None) -> str:
    """`chat` and `completion`: OpenAI's error object; `tgi`: TGI's `{"error", "error_type"}`; `lmi`: `{"code", "error"}`.

    Each also carries the status as a top-level `code`: DJL 0.23's rolling batch reads a response's status from the
    body's `code` (the newest DJL replaces an error item's body with its own `{"error", "code"}`).
    """
    if api in ("chat", "completion"):
        kind = _OPENAI_TYPES.get(status, "server_error")
        error = {"message": message, "type": kind, "param": param, "code": status}
        return json.dumps({"error": error, "code": status}, ensure_ascii=False)
    if api == "tgi":
        kind = "validation" if status == 400 else "generation"
        return json.dumps(
            {"error": message, "error_type": kind, "code": status}, ensure_ascii=False, separators=(",", ":")
        )
    return json.dumps({"code": status, "error": message})
