"""One handler, every client, over real HTTP: the official `openai` client on `/v1` (chat and completions, and their
bodies on `/invocations`),
`huggingface_hub`'s InferenceClient on TGI's SSE, the blog's TGI pattern through the SageMaker runtime route, and
all of them in one batch at once, each getting exactly transformers' greedy tokens in its own format. Under both DJL
generations, with the real portable engine and the tiny model."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import huggingface_hub.constants
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import BadRequestError, TextGenerationError, ValidationError
from inprocess_endpoint import post, served
from lmikit.embedded_model import ensure_tiny_model
from lmikit.project.layout import Project
from local_endpoint import REPO, make_project, serve
from reference import ReferenceModel
from runtime_support import client_for
from sse_decode import chat_text, tgi_text

pytestmark = pytest.mark.integration

VERSIONS = ["0.23", "newest"]
QUESTION = [{"role": "user", "content": "Once upon a time"}]
PROMPT = "The quick brown fox"
#: what `lmi serve` leaves unpinned: the request picks its format (TGI's rule: "stream": true is SSE)
UNPINNED = {"output_formatter": None, "enable_streaming": "true"}


@pytest.fixture(scope="module")
def reference() -> ReferenceModel:
    return ReferenceModel(ensure_tiny_model())


@pytest.fixture
def hub_client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's client refuses every URL, a local one too, in offline mode (HF_HUB_OFFLINE, set for the
    suite and read once at import); the model itself is local either way."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def chat_reference(reference: ReferenceModel, messages: list[dict], max_new_tokens: int) -> Any:
    prompt = reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return reference(prompt, max_new_tokens)


def client(endpoint: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_openai_client_streams_and_completes_exactly_the_reference(version: str, reference: ReferenceModel) -> None:
    expected = chat_reference(reference, QUESTION, 12)
    with served(version, **UNPINNED) as (endpoint, _):
        api = client(endpoint)
        assert [model.id for model in api.models.list()] == ["tiny"]
        whole = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12, temperature=0)
        chunks = list(
            api.chat.completions.create(
                model="tiny",
                messages=QUESTION,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        with_logprobs = api.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=3, temperature=0, logprobs=True
        )
    finish = "stop" if expected.finish_reason == "eos_token" else "length"
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected.text and whole.choices[0].finish_reason == finish
    assert whole.usage.completion_tokens == len(expected.token_ids) and whole.usage.prompt_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([d for d in deltas if d]) >= 2 and "".join(deltas) == expected.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    prompt_tokens = whole.usage.prompt_tokens  # the same prompt again: its full blocks but the last token's are cached
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 16 * ((prompt_tokens - 1) // 16) > 0
    logprobs = with_logprobs.choices[0].logprobs.content
    assert len(logprobs) == 3 and all(entry.logprob <= 0 for entry in logprobs)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_openai_client_completes_a_prompt_exactly_as_the_reference(version: str, reference: ReferenceModel) -> None:
    expected = reference(PROMPT, 12)
    with served(version, **UNPINNED) as (endpoint, _):
        api = client(endpoint)
        whole = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=0)
        chunks = list(
            api.completions.create(
                model="tiny",
                prompt=PROMPT,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        invocations = post(endpoint, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "echo": True})
        echoed = json.loads(invocations.read())
        sampled = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 1.5}
        two = api.completions.create(**sampled, n=2, seed=7)
        alone = [api.completions.create(**sampled, seed=seed).choices[0].text for seed in (7, 8)]
        chat_two = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0, n=2)
        with pytest.raises(openai.BadRequestError) as streamed_choices:
            api.completions.create(model="tiny", prompt=PROMPT, n=2, stream=True)
    finish = "stop" if expected.finish_reason == "eos_token" else "length"
    choice = whole.choices[0]
    assert whole.object == "text_completion" and (choice.text, choice.finish_reason) == (expected.text, finish)
    assert whole.usage.completion_tokens == len(expected.token_ids) and whole.usage.prompt_tokens > 0
    assert "".join(choice.logprobs.tokens) == expected.text and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len([text for text in texts if text]) >= 2 and "".join(texts) == expected.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == finish
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert invocations.status == 200 and echoed["choices"][0]["text"] == PROMPT + expected.text
    assert [(c.index, c.text) for c in two.choices] == list(enumerate(alone)) and alone[0] != alone[1]
    assert two.usage.completion_tokens == 12 and two.usage.prompt_tokens == whole.usage.prompt_tokens
    assert [c.message.content for c in chat_two.choices] == [chat_reference(reference, QUESTION, 4).text] * 2
    assert [c.index for c in chat_two.choices] == [0, 1]
    assert (
        streamed_choices.value.status_code == 400 and "n > 1 is answered in one body" in streamed_choices.value.message
    )


@pytest.mark.usefixtures("hub_client_online")
def test_top_log_probabilities_are_the_models_own_in_each_apis_shape(reference: ReferenceModel) -> None:
    """TGI's top_n_tokens, OpenAI completions' logprobs=3 and chat's top_logprobs: the model's own most likely tokens
    at each greedy position, as transformers' forward pass over the prompt and the answer gives them."""
    chat_prompt = reference.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    greedy = {"model": "tiny", "max_tokens": 4, "temperature": 0}
    with served("newest", **UNPINNED) as (endpoint, _):
        api = client(endpoint)
        completion = api.completions.create(prompt=PROMPT, logprobs=3, **greedy)
        chat = api.chat.completions.create(messages=QUESTION, logprobs=True, top_logprobs=3, **greedy)
        tgi = InferenceClient(endpoint.url + "/invocations")
        events = list(tgi.text_generation(PROMPT, max_new_tokens=4, stream=True, details=True, top_n_tokens=3))
        unshown = post(endpoint, {"inputs": PROMPT, "parameters": {"top_n_tokens": 3}, "stream": False})
        unshown_status, unshown_body = unshown.status, json.loads(unshown.read())["error"]
    tops = reference.top_log_probs(PROMPT, reference(PROMPT, 4).token_ids, 3)
    assert [[(top.id, top.text) for top in event.top_tokens] for event in events] == [
        [(i, reference.tokenizer.decode([i])) for i, _ in top] for top in tops
    ]
    assert [[top.logprob for top in event.top_tokens] for event in events] == [
        pytest.approx([lp for _, lp in top], abs=1e-3) for top in tops
    ]
    legacy = completion.choices[0].logprobs.top_logprobs
    assert len(legacy) == len([t for t in reference(PROMPT, 4).token_ids if t not in reference.eos])
    assert (
        legacy
        == [pytest.approx({reference.tokenizer.decode([i]): lp for i, lp in top}, abs=1e-3) for top in tops][
            : len(legacy)
        ]
    )
    chat_tops = reference.top_log_probs(chat_prompt, chat_reference(reference, QUESTION, 4).token_ids, 3)
    content = chat.choices[0].logprobs.content
    assert [[(top.token, top.logprob) for top in entry.top_logprobs] for entry in content] == [
        [pytest.approx((reference.tokenizer.decode([i]), lp), abs=1e-3) for i, lp in top] for top in chat_tops
    ][: len(content)]
    assert unshown_status == 400 and "parameters.top_n_tokens is answered in TGI's server-sent events" in unshown_body


@pytest.mark.parametrize("version", VERSIONS)
def test_chat_bodies_work_on_invocations_and_through_the_runtime_route(version: str, reference: ReferenceModel) -> None:
    expected = chat_reference(reference, QUESTION, 10)
    body = {"messages": QUESTION, "max_tokens": 10, "temperature": 0, "stream": True}
    with served(version) as (endpoint, _):  # output_formatter=jsonlines pinned: chat keeps its own format
        direct = post(endpoint, body)
        direct_type, direct_body = direct.getheader("Content-Type"), direct.read()
        runtime = client_for(endpoint.url).invoke_endpoint_with_response_stream(
            EndpointName="local", ContentType="application/json", Body=json.dumps(body)
        )
        runtime_type = runtime["ContentType"]
        runtime_body = b"".join(event["PayloadPart"]["Bytes"] for event in runtime["Body"])
    # DJL 0.23 labels every rolling-batch response with the pinned formatter's one content type
    labelled = "application/jsonlines" if version == "0.23" else "text/event-stream"
    for content_type, raw in ((direct_type, direct_body), (runtime_type, runtime_body)):
        assert content_type == labelled
        assert chat_text(raw) == expected.text and raw.endswith(b"data: [DONE]\n\n")


@pytest.mark.usefixtures("hub_client_online")
@pytest.mark.parametrize("version", VERSIONS)
def test_errors_come_back_in_each_apis_own_shape(version: str) -> None:
    with served(version, **UNPINNED) as (endpoint, _):
        api = client(endpoint)
        with pytest.raises(openai.BadRequestError) as bad_field:
            api.chat.completions.create(model="tiny", messages=QUESTION, temperature=5)
        with pytest.raises(openai.BadRequestError) as not_chat:
            api.chat.completions.create(model="tiny", messages=QUESTION, extra_body={"tools_choice": "auto"})
        no_messages = post(endpoint, {"inputs": "hi"}, path="/v1/chat/completions")
        no_messages_body = json.loads(no_messages.read())
        tgi = InferenceClient(endpoint.url + "/invocations")
        with pytest.raises((BadRequestError, TextGenerationError)) as tgi_error:
            list(tgi.text_generation(PROMPT, max_new_tokens=4, stream=True, typical_p=0.5))
        lmi = post(endpoint, {"inputs": PROMPT, "parameters": {"temperature": -1}})
        lmi_status, lmi_body = lmi.status, json.loads(lmi.read())
    assert bad_field.value.status_code == 400 and "temperature must be in [0, 2], got 5" in bad_field.value.message
    assert bad_field.value.body["type"] == "invalid_request_error"
    assert "unknown field 'tools_choice'" in not_chat.value.message
    assert no_messages.status == 400 and no_messages_body["error"]["type"] == "invalid_request_error"
    assert "messages" in no_messages_body["error"]["message"]
    # TGI's {"error", "error_type": "validation"} becomes huggingface_hub's ValidationError; the newest DJL rewrites an
    # error item's body to its own {"error", "code"}, which huggingface_hub raises as a plain 400
    assert type(tgi_error.value) is (ValidationError if version == "0.23" else BadRequestError)
    assert "parameters.typical_p is not supported" in str(tgi_error.value)
    assert lmi_status == 400 and lmi_body["code"] == 400 and "parameters.temperature" in lmi_body["error"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_failure_mid_stream_reaches_the_openai_client_in_band(version: str) -> None:
    with served(version, **UNPINNED) as (endpoint, tools):
        api = client(endpoint)
        stream = api.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=1500, temperature=0, stream=True
        )
        first = next(iter(stream))
        tools.fault = RuntimeError("injected engine fault")
        with pytest.raises(openai.APIError) as caught:
            list(stream)
        after = api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3, temperature=0)
    assert first.choices[0].delta.role == "assistant"
    assert "injected engine fault" in caught.value.message
    assert after.choices[0].finish_reason == "length"


@pytest.mark.usefixtures("hub_client_online")
@pytest.mark.parametrize("version", VERSIONS)
def test_huggingface_hub_text_generation_streams_tgi_sse_unmodified(version: str, reference: ReferenceModel) -> None:
    expected = reference(PROMPT, 8)
    with served(version, **UNPINNED) as (endpoint, _):
        tgi = InferenceClient(endpoint.url + "/invocations")
        texts = list(tgi.text_generation(PROMPT, max_new_tokens=8, stream=True))
        detailed = list(tgi.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True, seed=7))
    assert "".join(texts) == expected.text and len(texts) >= 2
    assert [event.token.id for event in detailed] == list(expected.token_ids)
    last = detailed[-1]
    assert last.generated_text == expected.text
    assert (last.details.finish_reason, last.details.generated_tokens, last.details.seed) == (
        expected.finish_reason,
        len(expected.token_ids),
        7,
    )


def shipped_options() -> dict[str, str]:
    """The repository's serving.properties as `lmi serve` runs it here: its options, on the tiny model in fp32."""
    props = Project.at(REPO).properties
    options = {key[len("option.") :]: value for key, value in props.items() if key.startswith("option.")}
    return {**options, "model_id": str(ensure_tiny_model()), "dtype": "fp32", "entryPoint": None}


@pytest.mark.usefixtures("hub_client_online")
@pytest.mark.parametrize("version", VERSIONS)
def test_huggingface_hub_and_lmi_clients_both_work_with_the_shipped_serving_properties(
    version: str, reference: ReferenceModel
) -> None:
    expected = reference(PROMPT, 8)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}, "stream": True}  # huggingface_hub's very body
    with served(version, **shipped_options()) as (endpoint, _):
        tgi = InferenceClient(endpoint.url + "/invocations")
        streamed = list(tgi.text_generation(PROMPT, max_new_tokens=8, stream=True))
        whole = tgi.text_generation(PROMPT, max_new_tokens=8)
        runtime = client_for(endpoint.url).invoke_endpoint_with_response_stream(
            EndpointName="local", ContentType="application/json", Body=json.dumps(body)
        )
        lmi = b"".join(event["PayloadPart"]["Bytes"] for event in runtime["Body"])
    assert "".join(streamed) == expected.text and len(streamed) >= 2
    assert whole == expected.text
    lines = [json.loads(line) for line in lmi.splitlines()]  # the LMI client keeps its pinned jsonlines
    if version == "0.23":
        assert "".join(line["outputs"][0] for line in lines) == expected.text
    else:
        assert lines[-1]["generated_text"] == expected.text


@pytest.mark.parametrize("version", VERSIONS)
def test_the_blogs_tgi_pattern_gets_every_token_through_the_runtime_route(
    version: str, reference: ReferenceModel
) -> None:
    expected = reference(PROMPT, 20)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20, "return_full_text": False}, "stream": True}
    with served(version, **UNPINNED) as (endpoint, _):
        response = client_for(endpoint.url).invoke_endpoint_with_response_stream(
            EndpointName="local", ContentType="application/json", Body=json.dumps(body)
        )
        lines = b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"]).split(b"\n")
    tokens = []
    for line in lines:  # the blog: parse each line from its first "{", skip the special tokens
        if line.find(b"{") >= 0:
            token = json.loads(line[line.find(b"{") :])["token"]
            if not token["special"]:
                tokens.append(token["text"])
    assert response["ContentType"] == ("application/json" if version == "0.23" else "text/event-stream")
    assert "".join(tokens) == expected.text


@pytest.mark.parametrize("version", VERSIONS)
def test_chat_lmi_and_tgi_requests_share_one_batch_and_each_gets_its_own_tokens(
    version: str, reference: ReferenceModel
) -> None:
    chat_expected = chat_reference(reference, QUESTION, 40)
    lmi_expected, tgi_expected = reference("Roses are", 40), reference(PROMPT, 40)
    requests: dict[str, tuple[dict, Callable[[bytes], str]]] = {
        "chat": ({"messages": QUESTION, "max_tokens": 40, "temperature": 0, "stream": True}, chat_text),
        "lmi": ({"inputs": "Roses are", "parameters": {"max_new_tokens": 40}}, _lmi_text(version)),
        "tgi": ({"inputs": PROMPT, "parameters": {"max_new_tokens": 40}, "stream": True}, tgi_text),
    }
    with served(version, **UNPINNED) as (endpoint, tools):
        peak = _peak_rows(tools)
        responses = {name: post(endpoint, body) for name, (body, _) in requests.items()}
        bodies = {name: (response.getheader("Content-Type"), response.read()) for name, response in responses.items()}
    assert peak() == 3
    # DJL 0.23 labels all rolling-batch responses alike (application/json when no formatter is pinned)
    sse, lmi = ("application/json",) * 2 if version == "0.23" else ("text/event-stream", "application/jsonlines")
    assert [content_type for content_type, _ in bodies.values()] == [sse, lmi, sse]
    assert chat_text(bodies["chat"][1]) == chat_expected.text
    assert requests["lmi"][1](bodies["lmi"][1]) == lmi_expected.text
    assert tgi_text(bodies["tgi"][1]) == tgi_expected.text


@pytest.mark.slow
def test_smollm2_answers_a_factual_question_through_its_chat_template(tmp_path: Any) -> None:
    project = make_project(tmp_path / "project", (REPO / "serving.properties").read_text())
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with serve(project) as endpoint:  # `lmi serve` as a user runs it: the embedded SmolLM2-135M-Instruct
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{endpoint.port}/v1", api_key="unused", max_retries=0)
        whole = api.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in api.chat.completions.create(
                model="smollm2", messages=question, max_tokens=24, temperature=0, stream=True
            )
            if chunk.choices
        )
    assert "Paris" in whole.choices[0].message.content and streamed == whole.choices[0].message.content


def _peak_rows(tools: Any) -> Callable[[], int]:
    """The most rows the engine held at once while the requests ran (sampled on every engine update)."""
    peak = {"rows": tools.engine.batch_rows}
    lock = threading.Lock()

    def noted(update: Any) -> None:
        with lock:
            peak["rows"] = max(peak["rows"], tools.engine.batch_rows)

    tools.hub.observe(noted)
    return lambda: peak["rows"]


def _lmi_text(version: str) -> Callable[[bytes], str]:
    """0.23's rolling batch streams one json object in pieces; the newest streams jsonlines."""
    if version == "0.23":
        return lambda raw: json.loads(raw)["generated_text"]
    return lambda raw: "".join(
        json.loads(line)["token"]["text"]
        for line in raw.splitlines()
        if not json.loads(line)["token"].get("special_token")
    )
