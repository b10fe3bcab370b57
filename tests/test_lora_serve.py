"""LoRA adapters through `lmi serve`, as SageMaker's adapter inference components reach them: the real boto3 client
streams with `InferenceComponentName` naming an adapter (lmi serve sets the adapter header the container reads, as
SageMaker does), `lmi invoke --adapter` does the same, and `/v1/models` lists the base model and its adapters. The tiny
model and two adapters made with PEFT; each answer equals PEFT's merge_and_unload() model's greedy text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from lmikit.cli import main
from lmikit.client.runtime_client import runtime_client
from lmikit.client.stream import invoke_body_stream
from lmikit.embedded_model import ensure_tiny_model
from local_endpoint import connection, serve
from lora_support import RECIPES, merged_model_dir, model_with_adapters
from reference import ReferenceModel
from replay import MODEL_DIR

pytestmark = pytest.mark.integration

PROMPT, MAX_NEW_TOKENS = "The quick brown fox", 10
FIRST, SECOND = RECIPES[0].name, RECIPES[1].name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """serving.properties beside model/: model.py, lmistream and adapters/ made with PEFT."""
    root = tmp_path_factory.mktemp("lora-serve")
    model_dir = model_with_adapters(ensure_tiny_model(), root / "model")
    for name in ("model.py", "lmistream"):
        (model_dir / name).symlink_to(MODEL_DIR / name)
    (root / "serving.properties").write_text(
        f"engine=Python\noption.model_id={ensure_tiny_model()}\noption.dtype=fp32\noption.rolling_batch=auto\n"
        "option.generation_engine=portable\noption.enable_lora=true\n"
    )
    return root


@pytest.fixture(scope="module")
def texts(project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tiny = ensure_tiny_model()
    models = {None: tiny}
    for recipe in RECIPES:
        adapter_dir = project / "model" / "adapters" / recipe.name
        models[recipe.name] = merged_model_dir(tiny, adapter_dir, tmp_path_factory.mktemp(recipe.name))
    return {name: ReferenceModel(path)(PROMPT, MAX_NEW_TOKENS).text for name, path in models.items()}


@pytest.fixture(scope="module")
def endpoint(project: Path) -> Iterator:
    with serve(project, "--model-id", str(ensure_tiny_model())) as running:
        yield running


BODY = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}


def test_boto3_streams_from_the_adapter_its_inference_component_names(endpoint, texts: dict) -> None:
    client = runtime_client(endpoint.url)
    for component, expected in ((FIRST, texts[FIRST]), (SECOND, texts[SECOND]), ("base", texts[None])):
        assert invoke_body_stream(client, "local", BODY, inference_component=component).text() == expected
    assert invoke_body_stream(client, "local", BODY).text() == texts[None]


def test_boto3_invoke_endpoint_routes_by_inference_component_too(endpoint, texts: dict) -> None:
    answer = runtime_client(endpoint.url).invoke_endpoint(
        EndpointName="local", InferenceComponentName=SECOND, ContentType="application/json", Body=json.dumps(BODY)
    )
    assert json.loads(answer["Body"].read())["generated_text"] == texts[SECOND]


def test_lmi_invoke_adapter_answers_with_the_adapter(endpoint, texts: dict) -> None:
    args = ["invoke", PROMPT, "--endpoint-url", endpoint.url, "--max-new-tokens", str(MAX_NEW_TOKENS)]
    result = CliRunner().invoke(main, [*args, "--adapter", FIRST])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == texts[FIRST]


def test_v1_models_lists_the_base_model_and_its_adapters(endpoint) -> None:
    conn = connection(endpoint)
    conn.request("GET", "/v1/models")
    listed = json.loads(conn.getresponse().read())
    assert [entry["id"] for entry in listed["data"]] == [Path(str(ensure_tiny_model())).name, FIRST, SECOND]
