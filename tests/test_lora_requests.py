"""Requests naming LoRA adapters through model/model.py behind DJL's replayed frontend, on the portable engine with the
tiny model and two adapters made with PEFT in `adapters/`: the body field `adapters`, the SageMaker adapter header,
TGI's `parameters.adapter_id` and a chat body's `model` each select the adapter (its text equals PEFT's merged model's);
an unknown adapter is a 400 listing the known ones while the other requests go on; DJL's adapter registration adds
and removes adapters at run time, and refuses a bad one without disturbing the served ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmikit.djl import standin
from lmikit.embedded_model import ensure_tiny_model
from lmistream.adapters import ADAPTER_HEADER
from lmistream.service import StreamingService
from lora_support import RECIPES, merged_model_dir, model_with_adapters
from reference import ReferenceModel
from replay import MODEL_DIR, collect, frontend, post

pytestmark = pytest.mark.integration

PROMPT, MAX_NEW_TOKENS = "Hello, my name is", 10
FIRST, SECOND = RECIPES[0].name, RECIPES[1].name


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="module")
def handler_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DJL's model directory: model.py and lmistream beside `adapters/`."""
    directory = model_with_adapters(tiny_dir, tmp_path_factory.mktemp("lora") / "model")
    for name in ("model.py", "lmistream"):
        (directory / name).symlink_to(MODEL_DIR / name)
    return directory


@pytest.fixture(scope="module")
def texts(tiny_dir: Path, handler_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each model's greedy text for the prompt: the base model's and each adapter's merged model's."""
    models = {None: tiny_dir}
    for recipe in RECIPES:
        adapter_dir = handler_dir / "adapters" / recipe.name
        models[recipe.name] = merged_model_dir(tiny_dir, adapter_dir, tmp_path_factory.mktemp(recipe.name))
    return {name: ReferenceModel(path)(PROMPT, MAX_NEW_TOKENS).text for name, path in models.items()}


@pytest.fixture(scope="module", params=["newest", "0.23"])
def front(request, tiny_dir: Path, handler_dir: Path) -> Iterator:
    options = {"model_id": str(tiny_dir), "dtype": "fp32", "rolling_batch": "auto", "enable_lora": "true"}
    with frontend(request.param, handler_dir, generation_engine="portable", **options) as running:
        yield running


def _answer(front, payload: dict, **headers: str) -> tuple[int, dict]:
    return _body(post(front, payload, **headers))


def _body(response) -> tuple[int, dict]:
    status, chunks = collect(response)
    body = json.loads(b"".join(chunks))
    return status, body[0] if isinstance(body, list) else body


def _lmi(adapter_fields: dict | None = None, parameters: dict | None = None) -> dict:
    return {
        "inputs": PROMPT,
        "parameters": {"max_new_tokens": MAX_NEW_TOKENS, **(parameters or {})},
        **(adapter_fields or {}),
    }


def test_the_body_field_adapters_selects_an_adapter(front, texts: dict) -> None:
    for adapter in (FIRST, SECOND):
        assert _answer(front, _lmi({"adapters": adapter})) == (200, {"generated_text": texts[adapter]})
    assert _answer(front, _lmi()) == (200, {"generated_text": texts[None]})


def test_the_sagemaker_header_and_tgi_adapter_id_select_an_adapter(front, texts: dict) -> None:
    assert _answer(front, _lmi(), **{ADAPTER_HEADER: SECOND}) == (200, {"generated_text": texts[SECOND]})
    by_tgi = _lmi(parameters={"adapter_id": FIRST})
    assert _answer(front, by_tgi) == (200, {"generated_text": texts[FIRST]})


def test_a_chat_body_whose_model_names_an_adapter_uses_it(front) -> None:
    chat = {"messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 10, "temperature": 0}
    base = _answer(front, {**chat, "model": "anything"})
    adapted = _answer(front, {**chat, "model": FIRST})
    assert base[0] == adapted[0] == 200
    assert adapted[1]["model"] == FIRST
    assert base[1]["choices"][0]["message"] != adapted[1]["choices"][0]["message"]


def test_an_unknown_adapter_is_a_400_listing_the_known_ones_and_the_others_go_on(front, texts: dict) -> None:
    running = post(front, _lmi({"adapters": FIRST}))
    status, body = _answer(front, _lmi({"adapters": "nope"}))
    assert status == 400
    assert f"unknown adapter 'nope'; known adapters: {FIRST}, {SECOND}" in json.dumps(body)
    assert _body(running) == (200, {"generated_text": texts[FIRST]})


def test_two_fields_naming_different_adapters_are_a_400(front) -> None:
    status, body = _answer(front, _lmi({"adapters": FIRST}), **{ADAPTER_HEADER: SECOND})
    assert status == 400
    assert "name one" in json.dumps(body)


def test_djl_adapter_registration_adds_removes_and_refuses_bad_adapters(
    tiny_dir: Path, handler_dir: Path, tmp_path: Path
) -> None:
    djl = standin.install("newest")
    service = StreamingService(djl.Output)
    service.initialize({"model_id": str(tiny_dir), "enable_lora": "true", "max_lora_rank": "4"})
    try:
        registered = service.register_adapter_input(
            _input(djl, name="later", src=str(handler_dir / "adapters" / FIRST))
        )
        assert registered.code == 200
        assert service.adapters.names() == ["later"]
        too_big = service.register_adapter_input(_input(djl, name="big", src=str(handler_dir / "adapters" / SECOND)))
        assert too_big.code == 400 and "above option.max_lora_rank=4" in too_big.message
        empty = service.register_adapter_input(_input(djl, name="empty", src=str(tmp_path)))
        assert empty.code == 400 and "no adapter_config.json" in empty.message
        assert service.adapters.names() == ["later"]
        assert service.unregister_adapter_input(_input(djl, name="later")).code == 200
        assert service.adapters.names() == []
        assert service.unregister_adapter_input(_input(djl, name="later")).code == 400
    finally:
        service.close()


def _input(djl, **properties: str):
    inputs = djl.Input()
    inputs.properties.update(properties)
    return inputs
