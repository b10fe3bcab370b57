"""LineDecoder: byte-level line splitting that is safe for split UTF-8, CRLF and a final unterminated line."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmikit.benchmarks.recordings import split
from lmikit.client import LineDecoder

pytestmark = pytest.mark.usefixtures("per_test_timeout")


def decode_all(chunks: list[bytes]) -> list[str]:
    decoder = LineDecoder()
    lines = [line for chunk in chunks for line in decoder.decode(chunk)]
    return lines + decoder.flush()


def test_httpx_example_with_empty_and_partial_chunks() -> None:
    assert decode_all([b"", b"12345\n", b"foo ", b"bar ", b"baz\n"]) == ["12345", "foo bar baz"]


def test_final_unterminated_line_comes_from_flush() -> None:
    decoder = LineDecoder()
    assert decoder.decode(b'{"a":1}\n{"b":2}') == ['{"a":1}']
    assert decoder.flush() == ['{"b":2}']
    assert decoder.flush() == []


def test_crlf_split_between_chunks() -> None:
    assert decode_all([b"a\r", b"\nb\r\n", b"c\r"]) == ["a", "b", "c"]


def test_blank_lines_are_kept() -> None:
    assert decode_all([b"data:x\n\n", b"\n"]) == ["data:x", "", ""]


def test_multibyte_characters_split_byte_by_byte() -> None:
    body = "é日本🙂\nnext".encode()
    assert decode_all([body[i : i + 1] for i in range(len(body))]) == ["é日本🙂", "next"]


def test_long_line_in_one_byte_chunks_is_linear() -> None:
    body = b"x" * 300_000 + b"\n"
    chunks = [body[i : i + 1] for i in range(len(body))]
    started = time.perf_counter()
    assert decode_all(chunks) == ["x" * 300_000]
    assert time.perf_counter() - started < 5.0


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))),
    terminator=st.sampled_from(["\n", "\r\n"]),
    terminated=st.booleans(),
    data=st.data(),
)
def test_any_split_gives_the_same_lines(
    lines: list[str], terminator: str, terminated: bool, data: st.DataObject
) -> None:
    text = terminator.join(lines) + (terminator if terminated and lines else "")
    body = text.encode()
    offsets = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    expected = lines if terminated or not lines or lines[-1] else lines[:-1]
    assert decode_all(split(body, offsets)) == expected
