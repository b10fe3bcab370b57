"""Decoding whole SSE bodies in tests: OpenAI chat chunks and TGI events to their text (python 3.9 compatible)."""

from __future__ import annotations

import json


def sse_payloads(raw: bytes) -> list[dict]:
    """The JSON payload of every `data:` line, `[DONE]` left out."""
    datas = [line[len(b"data:") :].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    return [json.loads(data) for data in datas if data != b"[DONE]"]


def chat_text(raw: bytes) -> str:
    """The assistant's text of a `chat.completion.chunk` stream."""
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in sse_payloads(raw) if p.get("choices"))


def tgi_text(raw: bytes) -> str:
    """The text of a TGI stream, special tokens dropped."""
    return "".join(p["token"]["text"] for p in sse_payloads(raw) if not p["token"]["special"])
