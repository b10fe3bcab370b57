"""Errors a response stream can end with; every one derives from `StreamError`.

StreamError
├── ModelStreamError      SageMaker ended the stream: model timed out or broke it (exception frame)
├── InternalStreamFailure SageMaker itself failed mid-stream (exception frame)
├── ModelError            the model reported an error in-band, as a line of its output format
└── ParseError            the bytes are not in the expected output format
"""

from __future__ import annotations


class StreamError(Exception):
    """Base class: the stream ended with an error; `message` is the text the server sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelStreamError(StreamError):
    """SageMaker's `ModelStreamError` frame; `code` is e.g. ModelInvocationTimeExceeded when known."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class InternalStreamFailure(StreamError):
    """SageMaker's `InternalStreamFailure` frame."""


class ModelError(StreamError):
    """An error line of the model's own output (`{"code": 424, "error": ...}`, TGI `error_type`, ...)."""

    def __init__(self, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ParseError(StreamError):
    """A line or body that is not valid for the stream's format; `text` is the offending input."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(f"{message}: {text[:200]!r}")
        self.text = text
