"""The HTTP/1.1 protocol of `lmi serve`: uvicorn's h11 protocol, with the parser's reason in its 400 answers.

uvicorn answers every request h11 cannot parse with the same "Invalid HTTP request received.", so a client that sent
a malformed `Content-Length` cannot tell which header was at fault. h11 names it in its error ("bad Content-Length",
"conflicting Content-Length headers"); this protocol passes that on. uvicorn sends the 400 from inside its handler of
h11's error, which is how `send_400_response` finds it.
"""

from __future__ import annotations

import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class NamingH11Protocol(H11Protocol):
    """H11Protocol whose 400 for an unparsable request says what h11 found wrong."""

    def send_400_response(self, msg: str) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, h11.RemoteProtocolError):
            msg = f"{msg.rstrip('.')}: {_named(str(error))}"
        super().send_400_response(msg)


def _named(reason: str) -> str:
    """h11's reason, with 'header' after a header name it gives alone ("bad Content-Length")."""
    return reason if reason.endswith("headers") else f"{reason} header"
