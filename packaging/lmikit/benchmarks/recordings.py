"""Byte-exact response bodies of every streaming output format, built from a token list.

Shared by the client tests and `parser_bench`. The bytes follow the servers' own serializers:
LMI 0.23 `json.dumps` (ensure_ascii, ", " / ": "), newest LMI (ensure_ascii=False), TGI and OpenAI
servers (compact separators, raw UTF-8).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any


def lmi023_jsonlines(tokens: Sequence[str]) -> bytes:
    """LMI 0.23 `jsonlines`: `{"outputs": [" a"]}\\n` per step, no final line."""
    return "".join(json.dumps({"outputs": [token]}) + "\n" for token in tokens).encode()


def lmi023_json(tokens: Sequence[str]) -> bytes:
    """LMI 0.23 `json`: one `{"generated_text": "..."}` object, the escaped text sent token by token."""
    return ('{"generated_text": "' + "".join(json.dumps(token)[1:-1] for token in tokens) + '"}').encode()


def lmi_jsonlines(tokens: Sequence[str], prompt: str = "Hi") -> bytes:
    """Newest LMI `jsonlines`: a `token` per line; the last adds `generated_text` and `details`."""
    return "".join(_dumps(line) + "\n" for line in _lmi_lines(tokens, prompt)).encode()


def lmi_sse(tokens: Sequence[str], prompt: str = "Hi") -> bytes:
    """Newest LMI `sse`: `data: ` + the jsonlines line + a blank line."""
    return "".join("data: " + _dumps(line) + "\n\n" for line in _lmi_lines(tokens, prompt)).encode()


def tgi_sse(tokens: Sequence[str]) -> bytes:
    """TGI `generate_stream`: `data:{"token": ...,"generated_text":null,"details":null}` + blank line."""
    events = []
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        event = {
            "token": {"id": 600 + index, "text": token, "logprob": _log_prob(index), "special": False},
            "generated_text": "".join(tokens) if last else None,
            "details": {"finish_reason": "length", "generated_tokens": len(tokens), "seed": None} if last else None,
        }
        events.append("data:" + _compact(event) + "\n\n")
    return "".join(events).encode()


def openai_sse(tokens: Sequence[str]) -> bytes:
    """OpenAI chat completion chunks: a role delta, one delta per token, a finish chunk, `[DONE]`."""
    deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": token}, None) for token in tokens] + [({}, "length")]
    chunks = [_chat_chunk(delta, finish_reason) for delta, finish_reason in deltas]
    return "".join(f"data: {chunk}\n\n" for chunk in chunks).encode() + b"data: [DONE]\n\n"


def split(body: bytes, offsets: Sequence[int]) -> list[bytes]:
    """Cut `body` at the given offsets (any order, repeats allowed): the parts a network might deliver."""
    cuts = [0, *sorted(offsets), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(cuts)]


def _lmi_lines(tokens: Sequence[str], prompt: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [
        {"token": {"id": 11 + index, "text": token, "log_prob": _log_prob(index)}} for index, token in enumerate(tokens)
    ]
    if lines:
        lines[-1]["generated_text"] = "".join(tokens)
        lines[-1]["details"] = {"finish_reason": "length", "generated_tokens": len(tokens), "inputs": prompt}
    return lines


def _chat_chunk(delta: dict[str, str], finish_reason: str | None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}
    return _compact(chunk)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _log_prob(index: int) -> float:
    return -0.125 * (index % 8)
