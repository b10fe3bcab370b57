"""FormatterChoice: which formatter answers a request, and whose error shape it gets.

OpenAI chat and completions bodies get OpenAI's answers. Others get the format the client's headers ask for (an
`Accept` naming text/event-stream, huggingface_hub's InferenceClient), else option.output_formatter (a built-in, or a
custom function defined in model.py), else TGI's rule for `"stream"`, else LMI's defaults for the DJL generation in
use. A format that cannot show what a request asks for (its prompt's or its top tokens' log-probabilities) refuses it
by name. Pure: no torch, no I/O.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from .chat import is_chat
from .chat_output import ChatCompletion, ChatCompletionChunks
from .completion_output import Completion, CompletionChunks
from .completions import is_completion
from .config import HandlerConfig, served_model_name
from .errors import ConfigError, InvalidRequest
from .formatters import REGISTRY, Custom, Formatter, StreamEvent, TgiJson, builtin_names
from .params import GenerationRequest


@dataclass(frozen=True)
class ClientHeaders:
    """The request headers that say which formats the client reads."""

    accept: str
    user_agent: str

    def format_asked(self, stream: bool | None) -> str | None:
        """SSE for a stream whose Accept names text/event-stream; for huggingface_hub's InferenceClient (its
        User-Agent names hf_hub: it sends `Accept: */*` and the very body an LMI client sends, so nothing else tells
        it apart) TGI's rule, SSE for `"stream": true` and one JSON body otherwise, the only shapes it reads; None
        where the options decide."""
        if "text/event-stream" in self.accept.lower() and stream is not False:
            return "sse"
        if "hf_hub/" in self.user_agent.lower():
            return "sse" if stream is True else "json"
        return None


class FormatterChoice:
    """The formatters of one handler's options; `namespace` is model.py's, where a custom formatter is defined."""

    def __init__(self, config: HandlerConfig, namespace: Mapping[str, Any]) -> None:
        self.config = config
        self.generation = config.djl_generation
        self.dialect = config.djl_generation.dialect
        self._namespace = namespace
        self._custom = self._resolve_custom(config.output_formatter)

    def formatter(
        self, request: GenerationRequest, rolling: bool, request_id: str, prompt_tokens: int, client: ClientHeaders
    ) -> Formatter:
        """The request's formatter; one that cannot show the prompt's or the top tokens' log-probabilities a request
        asks for refuses it."""
        formatter = self.shape(request, rolling, request_id, prompt_tokens, client)
        if request.params.prompt_logprobs and not formatter.prefill:
            raise InvalidRequest(
                "parameters.decoder_input_details is answered in newest LMI's json and jsonlines formats and TGI's "
                "json, not in TGI's server-sent events (TGI's rule: not when streaming tokens) nor in LMI 0.23's "
                'formats: send "stream": false',
                param="parameters.decoder_input_details",
            )
        if request.params.top_logprobs and not formatter.top_tokens:
            raise InvalidRequest(
                'parameters.top_n_tokens is answered in TGI\'s server-sent events only ("stream": true, without '
                "an option.output_formatter that pins another format); OpenAI bodies take top_logprobs",
                param="parameters.top_n_tokens",
            )
        return formatter

    def shape(
        self, request: GenerationRequest, rolling: bool, request_id: str, prompt_tokens: int, client: ClientHeaders
    ) -> Formatter:
        """The formatter of the request's API and format, before `formatter`'s check of what it can show."""
        if request.api == "completion" and request.chat is not None:
            answer = CompletionChunks if request.stream else Completion
            return answer(
                f"cmpl-{uuid.uuid4().hex}",
                int(time.time()),
                self._model_name,
                prompt_tokens,
                request.chat,
                request.inputs,
            )
        if request.chat is not None:
            shape = ChatCompletionChunks if request.stream else ChatCompletion
            return shape(
                f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self._model_name, prompt_tokens, request.chat
            )
        if self._custom is not None:
            return Custom(self._custom)
        name = self._formatter_name(request.stream, rolling, client)
        if name == "json" and self.config.tgi_compat:
            return TgiJson()
        return REGISTRY[(name, self.generation)]()

    def _formatter_name(self, stream: bool | None, rolling: bool, client: ClientHeaders) -> str:
        """The format the client's headers ask for, else the pinned option.output_formatter, else TGI's rule
        (`"stream": true`, or any stream with option.tgi_compat, is SSE), else LMI's defaults: json unless
        streaming, and 0.23's rolling batch streams its json object in pieces."""
        streams = self.config.streaming if stream is None else stream
        asked = client.format_asked(stream)
        if asked is not None:
            return asked
        if self.config.output_formatter is not None:
            return self.config.output_formatter.lower()
        if stream is True or (streams and self.config.tgi_compat):
            return "sse"
        if not streams or (self.dialect.rolling_streams_json and rolling):
            return "json"
        return "jsonlines"

    def api(self, payload: dict[str, Any], rolling: bool, client: ClientHeaders) -> str:
        """Whose error shape a request gets: OpenAI's for chat and completions, TGI's where it is answered in TGI SSE,
        else LMI's."""
        if is_chat(payload):
            return "chat"
        if is_completion(payload):
            return "completion"
        stream = payload.get("stream")
        if (
            self._custom is None
            and self._formatter_name(stream if isinstance(stream, bool) else None, rolling, client) == "sse"
        ):
            return "tgi"
        return "lmi"

    @property
    def _model_name(self) -> str:
        return served_model_name(self.config.model_id)

    def _resolve_custom(self, name: str | None) -> Callable[[StreamEvent], str] | None:
        """option.output_formatter's function when it names no built-in: `module:function`, or one in model.py."""
        if name is None or (name.lower(), self.generation) in REGISTRY:
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
