"""What DJL's Java frontend carries for one request: the queued job, and the decoding state of its stream.

`Job` is Java's WorkerJob (the request Input and where its answer goes); `JavaRequest` is the `Request` the
rolling-batch loop and the async request manager keep per request, turning the handler's items into the bytes and
status of the HTTP response, in the item encoding of the DJL generation.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from lmikit.djl.java import Malformed, decode_item, gson, gson_bool, gson_str, input_data, java_int, json_object
from lmikit.djl.response import Response, apply_error_status


@dataclass
class Job:
    """What Java's WorkerJob carries: the request Input (properties, content) and where the answer goes."""

    props: dict[str, str]
    content: list[tuple[str, bytes]]
    response: Response


class JavaRequest:
    """Java's rolling-batch / async `Request`: the original Input plus the decoding state of its stream."""

    def __init__(self, job: Job) -> None:
        self.props = job.props
        self.response = job.response
        self.data = input_data(job.content)
        self.seed = str(random.randint(-(2**31), 2**31 - 1))
        self.next_token: str | None = None
        self.last = False

    def add_json_response(self, raw: bytes) -> None:
        """0.23: item JSON {"data": str, "last": bool}; a {"code", "error"} object as data sets the status."""
        element = json_object(raw)
        self.last = gson_bool(element.get("last"))
        self.next_token = gson_str(element.get("data"))
        apply_error_status(self.response, self.next_token)
        self.response.emit(self.next_token.encode("utf-8"), self.last)

    def add_binary_response(self, raw: bytes, headers: Mapping[str, str] | None) -> None:
        """Newest: binary-encoded {"data", "last"[, "code", "error"]}; empty non-last data emits nothing."""
        if headers:
            self.response.put_headers(headers)
        fields = decode_item(raw)
        if "data" in fields:
            self.next_token = fields["data"]
        if "last" in fields:
            self.last = fields["last"].lower() == "true"
        if not self.next_token and not self.last:
            return
        if "code" in fields:
            self._emit_error(fields["code"], fields.get("error"))
        elif self.next_token is None:
            raise Malformed("last item without data")
        else:
            self.response.emit(self.next_token.encode("utf-8"), self.last)

    def _emit_error(self, code_text: str, error: str | None) -> None:
        code = java_int(code_text)
        if code is None:
            raise Malformed(f"item code {code_text!r} is not an int")
        self.response.set_status(code, error)
        body = {"code": code} if error is None else {"error": error, "code": code}
        self.response.emit(gson(body).encode("utf-8"), True)
