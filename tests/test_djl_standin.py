"""The djl_python stand-ins: both batch encodings, Input/Output API per flavour, install() switching."""

from __future__ import annotations

import json
import sys

import pytest
from lmikit.djl import standin
from lmikit.djl.dialect import DjlVersion


def _batched(djl, props: dict, content: list[tuple[str, bytes]]):
    inputs = djl.Input()
    inputs.properties.update(props)
    for key, value in content:
        inputs.content.add(key=key, value=bytearray(value))
    return inputs


def test_023_batches_parse_unpadded_keys_and_copy_prefixed_properties():
    djl = standin.install("0.23")
    inputs = _batched(
        djl,
        {
            "batch_size": "2",
            "handler": "handle",
            "batch_0.Content-Type": "application/json",
            "batch_1.X-Foo": "bar",
            "batch_10.ignored": "x",
        },
        [("batch_0.data", b'{"inputs": "a"}'), ("batch_0.seed", b"7"), ("batch_1.data", b"b")],
    )
    first, second = inputs.get_batches()
    assert first.properties == {"Content-Type": "application/json"}
    assert first.get_property("content-type") == "application/json"
    assert first.get_as_json() == {"inputs": "a"} and first.get_as_string("seed") == "7"
    assert second.properties == {"X-Foo": "bar"} and second.get_as_bytes() == bytearray(b"b")
    assert type(first).__name__ == "Input" and inputs.is_batch() and inputs.get_batch_size() == 2


def test_023_batches_reject_keys_without_the_dot_form():
    djl = standin.install("0.23")
    inputs = _batched(djl, {"batch_size": "1"}, [("batch_000_data", b"x")])
    with pytest.raises(ValueError, match="batch_000_data"):
        inputs.get_batches()


def test_newest_batches_parse_by_position_with_either_separator():
    djl = standin.install("newest")
    inputs = _batched(
        djl,
        {
            "batch_size": "2",
            "handler": "handle",
            "reset_rollingbatch": "true",
            "batch_000.requestId": "r0",
            "batch_001_Content-Type": "text/plain",
        },
        [("batch_000.data", b"a"), ("batch_000.seed", b"1"), ("batch_001_data", b"b")],
    )
    first, second = inputs.get_batches()
    assert first.properties == {"requestId": "r0"}
    assert first.content.keys == ["data", "seed"]
    assert second.properties == {"Content-Type": "text/plain"} and second.get_as_string() == "b"


@pytest.mark.parametrize("version", list(DjlVersion))
def test_unbatched_input_is_its_own_batch(version):
    djl = standin.install(version)
    inputs = _batched(djl, {"Content-Type": "text/plain"}, [("data", b"hello")])
    assert inputs.get_batches() == [inputs] and not inputs.is_batch()
    assert inputs.get_data() == "hello" and inputs.contains_key("data") and not inputs.contains_key("x")


@pytest.mark.parametrize("version", list(DjlVersion))
def test_get_as_bytes_prefers_data_then_first_item(version):
    djl = standin.install(version)
    empty = djl.Input()
    assert empty.is_empty() and empty.get_as_bytes() is None and empty.get_data() is None
    inputs = _batched(djl, {}, [("q", b"1"), ("data", b"body")])
    assert inputs.get_as_bytes() == bytearray(b"body")
    assert _batched(djl, {}, [("q", b"1")]).get_as_bytes() == bytearray(b"1")
    with pytest.raises(KeyError):
        inputs.get_as_bytes("missing")


@pytest.mark.parametrize("version", list(DjlVersion))
def test_output_add_encodes_values_and_batch_keys_unpadded(version):
    djl = standin.install(version)
    out = djl.Output().add("tok", key="data", batch_index=3).add(b"raw").add({"a": [1, 2]})
    out.content.add(key="ignored", value=None)
    assert out.content.keys == ["batch_3.data", None, None]
    assert out.content.values == [bytearray(b"tok"), bytearray(b"raw"), bytearray(b'{\n  "a":[\n    1,\n    2\n  ]\n}')]
    assert [type(value) for value in out.content.values] == [bytes, bytearray, bytearray]


@pytest.mark.parametrize(("version", "message"), [("0.23", "prediction failure"), ("newest", "invoke handler failure")])
def test_output_error_uses_the_flavour_default_message(version, message):
    djl = standin.install(version)
    out = djl.Output().error("boom")
    assert (out.code, out.message, out.properties) == (424, message, {"content-type": "application/json"})
    body = bytes(out.content.value_at(0)).decode()
    assert body == f'{{\n  "code":424,\n  "message":"{message}",\n  "error":"boom"\n}}'


def test_binary_encode_only_in_newest_and_round_trips():
    assert not hasattr(standin.install("0.23").Output, "binary_encode")
    newest = standin.install("newest").Output
    assert hasattr(newest, "binary_encode") and newest().add_property("k", "v").get_properties() == {"k": "v"}
    encoded = newest.binary_encode({"data": "héllo", "last": True, "code": 424})
    assert encoded[:2] == b"\x00\x03"
    assert standin.decode_binary(encoded) == {"data": "héllo", "last": "True", "code": "424"}
    with pytest.raises(ValueError):
        standin.decode_binary(encoded[:-1])


@pytest.mark.parametrize("version", list(DjlVersion))
def test_stream_content_default_formatter(version):
    out = standin.install(version).Output().add_stream_content(iter([[" a"]]))
    assert out.stream_output_formatter([" a"]) == bytearray(b'{"outputs": [" a"]}\n')
    assert out.add_stream_content(iter([]), output_formatter=None).stream_output_formatter is None


def test_install_switches_flavours_and_registers_submodules():
    old = standin.install("0.23")
    import djl_python
    from djl_python.outputs import Output

    assert djl_python is old and Output is old.Output and not hasattr(Output, "binary_encode")
    new = standin.install("newest")
    from djl_python import Output as NewOutput
    from djl_python.inputs import Input
    from djl_python.pair_list import PairList

    assert hasattr(NewOutput, "binary_encode") and Input is new.Input and PairList is new.PairList
    assert standin.install("0.23") is old and standin.is_standin(old)
    with pytest.raises(ValueError):
        standin.install("0.99")


def test_install_returns_a_real_djl_python_untouched(tmp_path, monkeypatch):
    package = tmp_path / "djl_python"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name.split(".")[0] == "djl_python"]:
        monkeypatch.delitem(sys.modules, name)
    real = standin.install("newest")
    assert real.REAL and sys.modules["djl_python"] is real and not standin.is_standin(real)
    assert standin.install("0.23") is real
    monkeypatch.delitem(sys.modules, "djl_python")


def test_pair_list_ignores_none_and_inserts_by_index():
    pairs = standin.PairList(pair_map={"a": 1})
    pairs.add("b", None)
    pairs.add("c", 3, index=0)
    assert pairs.keys == ["c", "a"] and pairs.get("a") == 1 and pairs.get("zz") is None
    assert json.loads(str(standin.install("newest").Output().add("x", key="k"))) == {
        "code": 200,
        "message": "OK",
        "properties": {},
        "content": {"k": "type: <class 'bytes'>"},
    }
