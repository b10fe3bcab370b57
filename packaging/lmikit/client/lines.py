"""Bytes → lines, httpx style: `decode(chunk)` returns the lines a chunk completes, `flush()` the rest.

Lines are split on b"\\n" before decoding, so a UTF-8 character split across chunks is never broken;
a trailing "\\r" is dropped (CRLF). Each byte is scanned once: a chunk without a newline is only
appended to the pending list, so many small parts of one long line cost linear time. A final line
without a newline comes out of `flush()` (the SageMaker SDK's LineIterator hangs on it instead).
"""

from __future__ import annotations


class LineDecoder:
    """Incremental line splitter over raw byte chunks; lines are returned without their terminator."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def decode(self, chunk: bytes) -> list[str]:
        """Return the lines completed by `chunk`, keeping any unterminated tail for later."""
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        *complete, rest = chunk.split(b"\n")
        complete[0] = b"".join([*self._pending, complete[0]])
        self._pending = [rest] if rest else []
        return [_text(line) for line in complete]

    def flush(self) -> list[str]:
        """Return the final unterminated line, if any, and reset."""
        line = b"".join(self._pending)
        self._pending = []
        return [_text(line)] if line else []


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")
