"""Error hierarchy of the handler: every error carries the HTTP status DJL should answer with."""
from __future__ import annotations


class HandlerError(Exception):
    """Base class: `status` is the HTTP code the client sees (DJL's codes: 400, 424, 507)."""

    status = 424

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
