"""Incremental detokenization: never half a character, never part of a stop sequence."""

from fakes import EOS, ByteTokenizer
from hypothesis import given
from hypothesis import strategies as st
from lmistream.params import GenerationParams
from lmistream.textstream import FinishReason, TextStream


def run(text: str, stops=(), eos=True):
    tok = ByteTokenizer()
    stream = TextStream(tok, GenerationParams(max_new_tokens=1000, stop_sequences=tuple(stops)))
    deltas = []
    for token_id in tok.ids(text) + ([EOS] if eos else []):
        deltas.append(stream.push(token_id).text)
        if stream.finish_reason:
            break
    deltas.append(stream.finish(FinishReason.EOS_TOKEN))
    return deltas, stream


def test_multibyte_characters_are_never_split():
    deltas, stream = run("né日🙂")
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "né日🙂" == stream.generated_text
    assert deltas[:3] == ["n", "", "é"]


def test_stop_sequence_is_never_streamed_and_ends_the_request():
    deltas, stream = run("Hello, User: again", stops=["User:"])
    assert "".join(deltas) == "Hello, "
    assert not any("U" in d for d in deltas)
    assert stream.finish_reason is FinishReason.STOP_SEQUENCE


def test_partial_stop_match_is_released_at_the_end():
    deltas, stream = run("abc Use", stops=["User:"])
    assert "".join(deltas) == "abc Use"
    assert stream.finish_reason is FinishReason.EOS_TOKEN


def test_special_tokens_release_no_text_but_count():
    _, stream = run("ok")
    assert stream.generated_text == "ok" and stream.count == 3


@given(
    st.text(alphabet="abcé日", min_size=1, max_size=40),
    st.lists(st.text(alphabet="abcé日", min_size=1, max_size=4), max_size=3),
)
def test_output_is_the_text_up_to_the_first_stop(text, stops):
    deltas, _ = run(text, stops=stops)
    # generation stops as soon as a stop sequence is complete: the earliest end wins, then the longest
    hits = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    expected = text[: min(hits)[1]] if hits else text
    assert "".join(deltas) == expected


def test_a_stop_token_ends_the_request_without_its_text_and_releases_what_was_held():
    tok = ByteTokenizer()
    stop_id = tok.ids("!")[0]
    params = GenerationParams(max_new_tokens=100, stop_sequences=("xyz",), stop_token_ids=(stop_id,))
    stream = TextStream(tok, params)
    deltas = [stream.push(token_id).text for token_id in tok.ids("Hi x!")]
    assert "".join(deltas) == "Hi x" == stream.generated_text
    assert stream.finish_reason is FinishReason.STOP_SEQUENCE and stream.count == 5
