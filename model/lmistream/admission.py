"""Admissions: what every DJL protocol adapter does to a request besides speaking the protocol.

It validates and tokenizes a request Input, picks its formatter (the API it speaks: LMI, TGI or OpenAI chat), submits
it to the engine and opens its mailbox in the update hub; it releases it (cancelling it in the engine if needed) and
shapes whole-response errors. The adapters in `protocols` get one through their constructor.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from .chat import chat_request, is_chat
from .chat_output import ChatCompletion, ChatCompletionChunks
from .config import HandlerConfig
from .engine import Engine
from .errors import ConfigError, HandlerError, InvalidRequest
from .formatters import REGISTRY, Custom, Formatter, StreamEvent, builtin_names
from .generation import Generation
from .hub import UpdateHub
from .params import GenerationRequest, decode_body, request_from_payload

log = logging.getLogger(__name__)


class Admissions:
    """Admission and release of requests for one engine; `output_cls` is DJL's Output class."""

    def __init__(
        self, config: HandlerConfig, engine: Engine, hub: UpdateHub, output_cls: Any, namespace: Mapping[str, Any]
    ) -> None:
        self.config = config
        self.engine = engine
        self.hub = hub
        self.output_cls = output_cls
        self.dialect = config.djl_dialect
        self._namespace = namespace
        self._custom_formatter = self._resolve_custom(config.output_formatter)
        self._ids = itertools.count()

    def admit(self, item: Any, rolling: bool) -> Generation:
        """Validate, tokenize and submit one request Input; raises a HandlerError for this request alone (an
        unexpected error included) before it reaches the engine, in the shape of the request's API."""
        api = "lmi"
        try:
            payload = decode_body(item.get_as_bytes(), item.get_property("Content-Type"))
            api = self._api(payload, rolling)
            return self._admit(payload, rolling)
        except HandlerError as error:
            error.api = api
            raise
        except Exception as error:  # never the batch's failure: this request alone fails
            log.exception("admitting a request failed")
            failure = HandlerError(f"the request could not be admitted: {type(error).__name__}: {error}")
            failure.api = api
            raise failure from error

    def _admit(self, payload: dict[str, Any], rolling: bool) -> Generation:
        if is_chat(payload):
            request = chat_request(payload, self.config.max_new_tokens)
            self._check_characters(sum(len(m["content"]) for m in request.messages), "messages")
            request = replace(request, inputs=self.engine.tokenizer.render_chat(request.messages))
        else:
            request = request_from_payload(payload, self.config.max_new_tokens)
        self.engine.validate(request.params)
        self._check_characters(len(request.inputs), "inputs")
        prompt_ids = self.engine.tokenizer.encode(request.inputs, add_special_tokens=request.api != "chat")
        self._check_length(len(prompt_ids), request)
        request_id = f"req-{next(self._ids)}"
        generation = Generation(
            request_id,
            request,
            self.engine.tokenizer,
            self._formatter(request, rolling, request_id, len(prompt_ids)),
            buffered=request.stream is False,  # asked for one body, not a stream
            prompt_tokens=len(prompt_ids),
        )
        self.hub.open(request_id)
        self.engine.submit(request_id, prompt_ids, request.params)
        return generation

    def release(self, generation: Generation) -> None:
        """Forget a request; cancel it in the engine if it may still be generating."""
        if not generation.finished or generation.needs_cancel:
            self.engine.cancel(generation.request_id)
        self.hub.close(generation.request_id)
        log.info("request %s", generation.summary())

    def streams(self, request: GenerationRequest) -> bool:
        """Whether a request wants a stream: its own `stream` flag, else option.enable_streaming."""
        return self.config.streaming if request.stream is None else request.stream

    def error_output(self, error: HandlerError) -> Any:
        """A whole-response error: DJL's own error body for LMI requests, the API's error object for the others."""
        if error.api == "lmi":
            return self.output_cls().error(error.message, code=error.status)
        output = self.output_cls().set_code(error.status)
        output.set_message(error.message)
        output.add_property("content-type", "application/json")
        output.add(error.body(), key="data")
        return output

    def _check_characters(self, characters: int, field: str) -> None:
        """The cheap bound first: a prompt longer than this cannot fit in the model whatever it tokenizes to, so it
        is refused before the tokenizer spends time on it inside a batch step."""
        limit = self.engine.max_sequence_length * self.engine.tokenizer.max_token_chars
        if characters > limit:
            raise InvalidRequest(
                f"{field} is {characters} characters; the model holds {self.engine.max_sequence_length} tokens of at "
                f"most {self.engine.tokenizer.max_token_chars} characters, so at most {limit} characters",
                param=field,
            )

    def _check_length(self, prompt_tokens: int, request: GenerationRequest) -> None:
        limit, field = self.engine.max_sequence_length, "messages" if request.api == "chat" else "inputs"
        if prompt_tokens >= limit:
            raise InvalidRequest(f"{field} is {prompt_tokens} tokens; the model holds at most {limit - 1}", param=field)
        room = limit - prompt_tokens
        if request.params.max_new_tokens > room:
            name = "max_tokens" if request.api == "chat" else "parameters.max_new_tokens"
            raise InvalidRequest(
                f"{name}={request.params.max_new_tokens} does not fit: the prompt is {prompt_tokens} tokens and the "
                f"model holds {limit}, so at most {room}",
                param=name,
            )

    def _formatter(self, request: GenerationRequest, rolling: bool, request_id: str, prompt_tokens: int) -> Formatter:
        if request.chat is not None:
            shape = ChatCompletionChunks if request.stream else ChatCompletion
            return shape(
                f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self._model_name, prompt_tokens, request.chat
            )
        if self._custom_formatter is not None:
            return Custom(self._custom_formatter)
        return REGISTRY[(self._formatter_name(request.stream, rolling), self.dialect)]()

    def _formatter_name(self, stream: bool | None, rolling: bool) -> str:
        """The pinned option.output_formatter, else TGI's rule (`"stream": true` is SSE), else LMI's defaults: json
        unless streaming, and 0.23's rolling batch streams its json object in pieces."""
        if self.config.output_formatter is not None:
            return self.config.output_formatter.lower()
        if stream is True:
            return "sse"
        if not (self.config.streaming if stream is None else stream) or (self.dialect == "0.23" and rolling):
            return "json"
        return "jsonlines"

    def _api(self, payload: dict[str, Any], rolling: bool) -> str:
        """Whose error shape a request gets: OpenAI's for chat, TGI's where it is answered in TGI SSE, else LMI's."""
        if is_chat(payload):
            return "chat"
        stream = payload.get("stream")
        if (
            self._custom_formatter is None
            and self._formatter_name(stream if isinstance(stream, bool) else None, rolling) == "sse"
        ):
            return "tgi"
        return "lmi"

    @property
    def _model_name(self) -> str:
        """The name answers carry when the request names none: the model directory's or hub id's last part."""
        return self.config.model_id.rstrip("/").rsplit("/", 1)[-1]

    def _resolve_custom(self, name: str | None) -> Callable[[StreamEvent], str] | None:
        if name is None or (name.lower(), self.dialect) in REGISTRY:
            return None
        module_name, _, attr = name.rpartition(":")
        scope = vars(importlib.import_module(module_name)) if module_name else self._namespace
        fn: Callable[[StreamEvent], str] | None = scope.get(attr)
        if not callable(fn):
            raise ConfigError(
                f"option.output_formatter={name!r} is neither a built-in ({', '.join(builtin_names())}) nor a "
                "function defined in model.py (or 'module:function' beside it)"
            )
        return fn
