"""Parsers of every output format: exact recorded bytes, any split into parts, in-band errors, detection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmikit.benchmarks import recordings
from lmikit.benchmarks.recordings import split
from lmikit.client import ErrorEvent, EventParser, ParseError, TokenEvent, sniff_format

pytestmark = pytest.mark.usefixtures("per_test_timeout")

LINE_FORMATS: dict[str, tuple[Callable[[Sequence[str]], bytes], str]] = {
    "lmi023_jsonlines": (recordings.lmi023_jsonlines, "jsonlines"),
    "lmi_jsonlines": (recordings.lmi_jsonlines, "jsonlines"),
    "lmi_sse": (recordings.lmi_sse, "sse"),
    "tgi_sse": (recordings.tgi_sse, "sse"),
    "openai_sse": (recordings.openai_sse, "sse"),
}
TOKENS = st.lists(
    st.sampled_from([" a", "é", "日本", "🙂", " the", "\n", '"', "\\", "\u2028", ""]) | st.text(max_size=5),
    max_size=12,
)


def parse(chunks: Sequence[bytes], fmt: str | None = None, content_type: str | None = None) -> list:
    parser = EventParser(fmt, content_type)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.close()


def texts(events: list) -> list[str]:
    return [event.text for event in events if event.text]


def test_lmi023_jsonlines_exact_bytes() -> None:
    assert parse([b'{"outputs": [" a"]}\n{"outputs": [" b"]}\n']) == [TokenEvent(" a"), TokenEvent(" b")]


def test_newest_lmi_jsonlines_exact_bytes() -> None:
    body = (
        b'{"token": {"id": 11, "text": " a", "log_prob": -0.1}}\n'
        b'{"token": {"id": 2, "text": "", "log_prob": -0.5, "special_token": true}, "generated_text": " a",'
        b' "details": {"finish_reason": "length", "generated_tokens": 2, "inputs": "Hi"}}\n'
    )
    details = {"finish_reason": "length", "generated_tokens": 2, "inputs": "Hi"}
    assert parse([body]) == [
        TokenEvent(" a", token_id=11, log_prob=-0.1),
        TokenEvent("", 2, -0.5, special=True, generated_text=" a", details=details, finish_reason="length"),
    ]


def test_tgi_sse_exact_bytes_with_comment_and_blank_lines() -> None:
    body = (
        b": keep-alive\n\n"
        b'data:{"token":{"id":601,"text":" time","logprob":-0.1,"special":false},'
        b'"generated_text":null,"details":null}\n\n'
        b'data:{"token":{"id":0,"text":"<|endoftext|>","logprob":0.0,"special":true},"generated_text":" time",'
        b'"details":null}\n\n'
    )
    assert parse([body]) == [
        TokenEvent(" time", token_id=601, log_prob=-0.1),
        TokenEvent("<|endoftext|>", token_id=0, log_prob=0.0, special=True, generated_text=" time"),
    ]


def test_openai_chat_chunks_and_done() -> None:
    body = (
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},'
        b'"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"total_tokens":3}}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
        b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    assert parse([body]) == [TokenEvent("Hi"), TokenEvent("", finish_reason="stop")]


def test_lmi023_json_yields_text_as_it_arrives() -> None:
    parser = EventParser()
    assert parser.feed(b'{"generated_text": "Hel') == [TokenEvent("Hel")]
    assert parser.feed(b"lo \\u00e9\\ud83d") == [TokenEvent("lo é")]
    assert parser.feed(b'\\ude42"}') == [TokenEvent("🙂")]
    assert parser.close() == [TokenEvent("", generated_text="Hello é🙂")]
    assert parser.format == "json"


def test_whole_json_body_with_details_and_tgi_compat_list() -> None:
    body = b'[{"generated_text": "ok", "details": {"finish_reason": "eos_token"}}]'
    assert texts(parse([body])) == ["ok"]
    assert parse([body])[-1].finish_reason == "eos_token"


def test_truncated_json_body_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse([b'{"generated_text": "cut off'])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"code": 424, "error": "Input Parsing failed"}\n', ErrorEvent("Input Parsing failed", 424)),
        (b'data:{"error":"CUDA OOM","error_type":"generation"}\n\n', ErrorEvent("CUDA OOM", "generation")),
        (
            (
                b'{"token": {"id": -1, "text": "", "log_prob": -1.0, "error_msg": "engine died"},'
                b' "generated_text": "", "details": {"finish_reason": "error"}}\n'
            ),
            ErrorEvent("engine died", None),
        ),
        (b'{"generated_text": null, "error": "bad", "code": 400}', ErrorEvent("bad", 400)),
        (b'data: {"error": {"message": "too long", "code": 400}}\n\n', ErrorEvent("too long", 400)),
        (
            b'{"token": {"text": "x"}, "details": {"finish_reason": "error"}}\n',
            ErrorEvent("generation failed (finish_reason=error)", None),
        ),
    ],
)
def test_in_band_errors_become_error_events(body: bytes, expected: ErrorEvent) -> None:
    assert parse([body])[-1] == expected


def test_invalid_line_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="Batch inference failed"):
        parse([b'{"outputs": [" a"]}\nBatch inference failed\n'], fmt="jsonlines")


@pytest.mark.parametrize("fmt", [None, "jsonlines", "sse"])
def test_unterminated_final_line_is_yielded(fmt: str | None) -> None:
    sse = b'data:{"token":{"id":1,"text":"end","logprob":0,"special":false}}'
    body = sse if fmt == "sse" else b'{"outputs": [" a"]}\n{"outputs": ["end"]}'
    assert texts(parse([body], fmt))[-1] == "end"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/jsonlines", b"", "jsonlines"),
        ("text/event-stream; charset=utf-8", b"", "sse"),
        ("application/json", b'{"generated_text": "x"}', "json"),
        ("application/json", b'{"token": {"text": "x"}}\n', "jsonlines"),
        (None, b"\n: ping\n\n", "sse"),
        (None, b"", "jsonlines"),
    ],
)
def test_format_detection(content_type: str | None, body: bytes, expected: str) -> None:
    parser = EventParser(content_type=content_type)
    parser.feed(body)
    parser.close()
    assert parser.format == expected


def test_sniff_waits_for_enough_bytes() -> None:
    assert sniff_format(b"da") is None
    assert sniff_format(b'{"generated') is None
    assert sniff_format(b'{"generated_text": "') == "json"
    assert sniff_format(b'{"outputs": [" a"]}\n') == "jsonlines"
    assert sniff_format(b"data:") == "sse"


def test_unknown_format_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown stream format"):
        EventParser("xml")


@pytest.mark.parametrize("name", sorted(LINE_FORMATS))
@settings(max_examples=60, deadline=None)
@given(tokens=TOKENS, data=st.data())
def test_line_formats_any_split_gives_the_same_events(name: str, tokens: list[str], data: st.DataObject) -> None:
    render, fmt = LINE_FORMATS[name]
    body = render(tokens)
    offsets = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    whole = parse([body])
    assert parse(split(body, offsets)) == whole
    assert parse(split(body, offsets), fmt=fmt) == whole
    assert texts(whole) == [token for token in tokens if token]


@settings(max_examples=100, deadline=None)
@given(tokens=TOKENS, data=st.data())
def test_json_format_any_split_gives_the_same_text(tokens: list[str], data: st.DataObject) -> None:
    body = recordings.lmi023_json(tokens)
    offsets = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    events = parse(split(body, offsets))
    assert "".join(texts(events)) == "".join(tokens)
    assert events[-1].generated_text == "".join(tokens)


def test_invalid_escape_in_json_body_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse([b'{"generated_text": "bad \\x"}'])
