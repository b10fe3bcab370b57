"""EngineRequests: what every DJL protocol adapter does to a request besides speaking the protocol.

It validates and tokenizes a request Input, gives it its formatter (`formatter_choice`: by the API it speaks, LMI,
TGI, OpenAI chat or completions, and the format asked for), submits it to the engine (a list of `inputs`, or several
sequences of one prompt: each its own row, `generation_group`) and opens its mailbox in the update hub; it releases
it (cancelling it in the engine if needed) and shapes whole-response errors. The adapters in `protocols` get one
through their constructor.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .adapters import ADAPTER_HEADER, AdapterRegistry, requested_adapter
from .chat import chat_request, is_chat
from .chat_output import merge_choices
from .completions import completion_request, is_completion
from .config import HandlerConfig
from .engine import Engine
from .errors import ConfigError, HandlerError, InvalidRequest
from .formatter_choice import ClientHeaders, FormatterChoice
from .formatters import JsonNewest, SequenceJson, TgiJson, sequences_answer
from .generation import Generation
from .generation_group import Admitted, GenerationGroup
from .hub import UpdateHub
from .params import GenerationParams, GenerationRequest, batch_inputs, decode_body, request_from_payload

log = logging.getLogger(__name__)
#: the field holding the prompt, per API (for the errors that name it)
_PROMPT_FIELDS = {"chat": "messages", "completion": "prompt"}


class EngineRequests:
    """The handler's requests to one engine: their admission and release; `output_cls` is DJL's Output class."""

    def __init__(
        self,
        config: HandlerConfig,
        engine: Engine,
        hub: UpdateHub,
        output_cls: Any,
        namespace: Mapping[str, Any],
        adapters: AdapterRegistry | None = None,
    ) -> None:
        self.config = config
        self.adapters = adapters if adapters is not None else AdapterRegistry(enabled=False)
        self.engine = engine
        self.hub = hub
        self.output_cls = output_cls
        self.dialect = config.djl_generation.dialect
        self.formats = FormatterChoice(config, namespace)
        self.max_sequence_length = _sequence_limit(config, engine.max_sequence_length)
        self._ids = itertools.count()

    def admit(self, item: Any, rolling: bool) -> Admitted:
        """Validate, tokenize and submit one request Input; raises a HandlerError for this request alone (an
        unexpected error included) before it reaches the engine, in the shape of the request's API."""
        api = "lmi"
        try:
            payload = decode_body(item.get_as_bytes(), item.get_property("Content-Type"))
            client = ClientHeaders(str(item.get_property("Accept") or ""), str(item.get_property("User-Agent") or ""))
            api = self.formats.api(payload, rolling, client)
            payload, adapter = requested_adapter(
                payload, item.get_property(ADAPTER_HEADER), self.adapters, _openai(payload)
            )
            return self._admit(payload, rolling, adapter, client)
        except HandlerError as error:
            error.api = api
            raise
        except Exception as error:  # never the batch's failure: this request alone fails
            log.exception("admitting a request failed")
            failure = HandlerError(f"the request could not be admitted: {type(error).__name__}: {error}")
            failure.api = api
            raise failure from error

    def _admit(self, payload: dict[str, Any], rolling: bool, adapter: str | None, client: ClientHeaders) -> Admitted:
        prompts = None if _openai(payload) else batch_inputs(payload, self.config.max_rolling_batch_size)
        if prompts is not None:
            return self._admit_batch(payload, prompts, adapter)
        request = self._request(payload, adapter)
        if request.chat is not None and request.chat.n > 1:
            return self._admit_choices(request, rolling, client)
        if request.params.n > 1 or request.params.best_of > 1:
            return self._admit_sequences(request, rolling, client)
        prompt_ids = self._prompt_ids(request)
        request_id = f"req-{next(self._ids)}"
        generation = Generation(
            request_id,
            request,
            self.engine.tokenizer,
            self.formats.formatter(request, rolling, request_id, len(prompt_ids), client),
            buffered=request.stream is False,  # asked for one body, not a stream
            prompt_tokens=len(prompt_ids),
        )
        self.hub.open(request_id)
        self.engine.submit(request_id, prompt_ids, request.params)
        return generation

    def _admit_batch(self, payload: dict[str, Any], prompts: list[str], adapter: str | None) -> GenerationGroup:
        """A list of `inputs`: every prompt validated and tokenized first, then each submitted as its own row."""
        requests = [self._request({**payload, "inputs": prompt}, adapter) for prompt in prompts]
        if requests[0].params.n > 1 or requests[0].params.best_of > 1:
            name = "n" if requests[0].params.n > 1 else "best_of"
            raise InvalidRequest(
                f"parameters.{name} > 1 takes one prompt, not a list of inputs", param=f"parameters.{name}"
            )
        if requests[0].params.top_logprobs:
            raise InvalidRequest(
                "parameters.top_n_tokens is answered in TGI's server-sent events only, not for a list of inputs",
                param="parameters.top_n_tokens",
            )
        if self.streams(requests[0]):
            raise InvalidRequest(
                'a list of inputs is answered as one JSON array, not streamed; send "stream": false',
                param="inputs",
            )
        prompt_ids = [self._prompt_ids(request) for request in requests]
        request_id = f"req-{next(self._ids)}"
        members = [
            Generation(f"{request_id}.{i}", request, self.engine.tokenizer, JsonNewest(), True, len(ids))
            for i, (request, ids) in enumerate(zip(requests, prompt_ids))
        ]
        return self._start_group(GenerationGroup(request_id, members), prompt_ids)

    def _admit_choices(self, request: GenerationRequest, rolling: bool, client: ClientHeaders) -> GenerationGroup:
        """OpenAI's `n`: the prompt once, each choice its own row (a given seed: seed + i for choice i), one answer."""
        assert request.chat is not None  # only OpenAI requests ask for choices
        n = request.chat.n
        self._check_rows(n, "n")
        prompt_ids = self._prompt_ids(request)
        request_id = f"req-{next(self._ids)}"
        members = []
        for index in range(n):
            choice = replace(
                request,
                params=replace(request.params, seed=_seed(request.params.seed, index)),
                chat=replace(request.chat, index=index),
            )
            formatter = self.formats.formatter(choice, rolling, request_id, len(prompt_ids), client)
            members.append(
                Generation(f"{request_id}.{index}", choice, self.engine.tokenizer, formatter, True, len(prompt_ids))
            )
        return self._start_group(GenerationGroup(request_id, members, merge_choices), [prompt_ids] * n)

    def _admit_sequences(self, request: GenerationRequest, rolling: bool, client: ClientHeaders) -> GenerationGroup:
        """DJL's `n` and TGI's `best_of` on the LMI body: the prompt once, each sequence its own row
        (`_sequence_params`); one answer in DJL newest's shape (`sequences_answer`), so only where the json formatter
        answers whole."""
        params = request.params
        name, count = ("best_of", params.best_of) if params.best_of > 1 else ("n", params.n)
        field = f"parameters.{name}"
        self._check_rows(count, field)
        shape = self.formats.shape(request, rolling, "", 0, client)
        if not isinstance(shape, JsonNewest):  # the format that answers whole
            raise InvalidRequest(
                f"{field} > 1 is answered as one JSON body (newest LMI's json format, or TGI's with "
                'option.tgi_compat), not streamed nor in another format: send "stream": false',
                param=field,
            )
        prompt_ids = self._prompt_ids(request)
        request_id = f"req-{next(self._ids)}"
        tgi, likeliest = isinstance(shape, TgiJson), name == "best_of"
        members = [
            Generation(
                f"{request_id}.{index}",
                replace(request, params=_sequence_params(params, index, likeliest)),
                self.engine.tokenizer,
                SequenceJson(tgi, top_tokens=params.top_logprobs > 0),
                True,
                len(prompt_ids),
            )
            for index in range(count)
        ]
        compose = functools.partial(sequences_answer, inputs=request.inputs, likeliest=likeliest, tgi=tgi)
        return self._start_group(GenerationGroup(request_id, members, compose), [prompt_ids] * count)

    def _check_rows(self, count: int, field: str) -> None:
        limit = self.config.max_rolling_batch_size
        if count > limit:
            raise InvalidRequest(
                f"{field}={count} asks for more rows than option.max_rolling_batch_size={limit}", param=field
            )

    def _start_group(self, group: GenerationGroup, prompt_ids: list[list[int]]) -> GenerationGroup:
        self.hub.open(group.request_id, group.member_ids)
        for member, ids in zip(group.members, prompt_ids):
            self.engine.submit(member.request_id, ids, member.request.params)
        return group

    def _request(self, payload: dict[str, Any], adapter: str | None) -> GenerationRequest:
        """The validated request of a body, its adapter set, checked by the engine."""
        if is_chat(payload):
            tokenizer = self.engine.tokenizer
            request = chat_request(
                payload, self.config.max_new_tokens, tokenizer.renders_tools, self.config.auto_tool_parser
            )
            self._check_characters(sum(len(m["content"]) for m in request.messages), "messages")
            request = replace(request, inputs=tokenizer.render_chat(request.messages, request.tools))
        elif is_completion(payload):
            request = completion_request(payload)
        else:
            request = request_from_payload(payload, self.config.max_new_tokens)
        if adapter is not None:
            request = replace(request, params=replace(request.params, adapter=adapter))
        self.engine.validate(request.params)
        return request

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens (truncated as asked), checked against the model's length."""
        self._check_characters(len(request.inputs), _PROMPT_FIELDS.get(request.api, "inputs"))
        prompt_ids = self.engine.tokenizer.encode(request.inputs, add_special_tokens=request.api != "chat")
        if request.params.truncate is not None:
            prompt_ids = prompt_ids[-request.params.truncate :]  # TGI's and vLLM's truncation: keep the end
        self._check_length(len(prompt_ids), request)
        return prompt_ids

    def release(self, generation: Admitted) -> None:
        """Forget a request; cancel it in the engine if it may still be generating."""
        for row in generation.rows_to_cancel():
            self.engine.cancel(row)
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
        limit = self.max_sequence_length * self.engine.tokenizer.max_token_chars
        if characters > limit:
            raise InvalidRequest(
                f"{field} is {characters} characters; the model holds {self.max_sequence_length} tokens of at "
                f"most {self.engine.tokenizer.max_token_chars} characters, so at most {limit} characters",
                param=field,
            )

    def _check_length(self, prompt_tokens: int, request: GenerationRequest) -> None:
        limit, field = self.max_sequence_length, _PROMPT_FIELDS.get(request.api, "inputs")
        if prompt_tokens >= limit:
            raise InvalidRequest(f"{field} is {prompt_tokens} tokens; the model holds at most {limit - 1}", param=field)
        room = limit - prompt_tokens
        if request.params.max_new_tokens > room:
            name = "parameters.max_new_tokens" if request.api == "lmi" else "max_tokens"
            raise InvalidRequest(
                f"{name}={request.params.max_new_tokens} does not fit: the prompt is {prompt_tokens} tokens and the "
                f"model holds {limit}, so at most {room}",
                param=name,
            )


def _sequence_params(params: GenerationParams, index: int, ranked: bool) -> GenerationParams:
    """Sequence `index`'s row: one sequence, seed + index for a given seed, its tokens' log-probabilities where they
    rank it (`best_of`), the prompt's computed by the first row alone."""
    return replace(
        params,
        seed=_seed(params.seed, index),
        n=1,
        best_of=1,
        logprobs=params.logprobs or ranked,
        prompt_logprobs=params.prompt_logprobs and index == 0,
    )


def _seed(seed: int | None, index: int) -> int | None:
    """Row `index`'s seed among several of one request: the request's seed + index (None: each row draws its own)."""
    return None if seed is None else (seed + index) % 2**63


def _sequence_limit(config: HandlerConfig, model_limit: int) -> int:
    """The most tokens one sequence holds: option.max_model_len where given (at most the model's), else the
    model's."""
    asked = config.max_model_len
    if asked is None:
        return model_limit
    if asked > model_limit:
        raise ConfigError(
            f"option.max_model_len={asked} exceeds the model's {model_limit} tokens: give at most {model_limit}",
            param="option.max_model_len",
        )
    return asked


def _openai(payload: Mapping[str, Any]) -> bool:
    """Whether a body speaks an OpenAI API (whose `model` may name an adapter)."""
    return is_chat(payload) or is_completion(payload)
