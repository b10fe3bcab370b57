"""`lmi chat` as a person uses it: Debian's Chromium (driven by Playwright, nothing downloaded) on the real Streamlit
page, against `lmi serve` with the embedded SmolLM2: a typed prompt streams in visibly (sent as chat messages through
the model's chat template), the answer stays in the history, a second turn follows, a third with a tool given in
the sidebar (tool choice "required") shows the call's name and arguments, the conversation clears, a
stopped endpoint gives one readable error, and the next prompt is answered once an endpoint is back, one whose model
has no chat template, so the page falls back to a prompt transcript. With an endpoint that serves LoRA adapters (two
small ones made with PEFT for the tiny model), the sidebar's model picker lists the base model and the adapters, and
the answer follows the one picked.

Screenshots go to build/test-artifacts/; docs/chat.png (the README's) is refreshed once the whole scenario passed.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lmikit.chat.conversation import SUGGESTED_PROMPTS
from lmikit.embedded_model import ensure_tiny_model
from lmikit.launch import free_port
from local_endpoint import REPO, make_project
from lora_support import RECIPES, make_adapter
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "build" / "test-artifacts"
README_SCREENSHOT = REPO / "docs" / "chat.png"
START_TIMEOUT_S = 180.0
ANSWER_TIMEOUT_MS = 90_000
UI_TIMEOUT_MS = 30_000  # a rerun of the page, on a loaded 2-core machine
PROPERTIES = "engine=Python\noption.rolling_batch=custom\noption.output_formatter=jsonlines\n"
FIRST_PROMPT = "Tell me about foxes."
SECOND_PROMPT = "What do foxes eat?"
MAX_NEW_TOKENS = 96
LORA_PROPERTIES = (
    "engine=Python\noption.rolling_batch=auto\noption.generation_engine=portable\noption.dtype=fp32\n"
    "option.enable_lora=true\n"
)
ADAPTER_TOKENS = 8
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

#: every distinct text of the last chat message, recorded by the page itself on each DOM change
RECORD_RENDERS = """() => {
  window.renders = [];
  new MutationObserver(() => {
    const messages = document.querySelectorAll('[data-testid="stChatMessageContent"]');
    const text = messages.length ? messages[messages.length - 1].innerText.trim() : "";
    if (text && window.renders[window.renders.length - 1] !== text) window.renders.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

pytestmark = [pytest.mark.slow, pytest.mark.integration]


class Started:
    """A child process whose output is read as it comes; `settled` is set when a line holds the marker (`ready`) or
    the output ends (the process exited)."""

    def __init__(self, command: list[str], marker: str) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = False
        self.settled = threading.Event()
        threading.Thread(target=self._read, args=(marker,), daemon=True).start()

    def _read(self, marker: str) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if marker in line:
                self.ready = True
                self.settled.set()
        self.settled.set()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        print("".join(self.lines))  # pytest shows it when the test fails


@contextmanager
def started(command: list[str], marker: str) -> Iterator[Started]:
    child = Started(command, marker)
    try:
        child.settled.wait(START_TIMEOUT_S)
        assert child.ready, f"{command[2:4]} was not ready:\n{''.join(child.lines)}"
        yield child
    finally:
        child.stop()


def lmi(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmikit", *args]


@contextmanager
def local_endpoint(project: Path, port: int, *args: str) -> Iterator[Started]:
    with started(lmi("serve", "--project-dir", str(project), "--port", str(port), *args), "Ready: ") as endpoint:
        yield endpoint


@contextmanager
def chat_page(endpoint_port: int) -> Iterator[str]:
    port = free_port()
    with started(lmi("chat", "--endpoint-url", f"http://127.0.0.1:{endpoint_port}", "--port", str(port)), "URL:"):
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        health.request("GET", "/_stcore/health")
        assert health.getresponse().read() == b"ok"
        yield f"http://127.0.0.1:{port}"


@contextmanager
def browser(profile: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail("the browser test needs Debian's Chromium: apt-get install chromium")
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def messages(page: Page, role: str):
    return page.locator(f'[data-testid="stChatMessageAvatar{role.capitalize()}"]')


def contents(page: Page):
    return page.locator('[data-testid="stChatMessageContent"]')


def send(page: Page, prompt: str, users_before: int) -> None:
    """Type `prompt`, press Enter, and wait until the page has finished answering it."""
    page.get_by_placeholder("Ask the model").fill(prompt)
    page.get_by_placeholder("Ask the model").press("Enter")
    wait_for_answer(page, users_before + 1)


def wait_for_answer(page: Page, users: int) -> None:
    expect(messages(page, "user")).to_have_count(users, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator('[data-testid="stApp"]')).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=ANSWER_TIMEOUT_MS
    )


def set_generation(page: Page, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
    """Greedy decoding (the temperature slider at its minimum) and `max_new_tokens`, through the sidebar."""
    temperature = page.get_by_role("slider", name="Temperature")
    temperature.focus()
    temperature.press("Home")
    expect(temperature).to_have_value("0")
    tokens = page.get_by_label("Max new tokens")
    tokens.fill(str(max_new_tokens))
    tokens.press("Enter")
    expect(tokens).to_have_value(str(max_new_tokens))


def set_tools(page: Page, tools: str, choice: str) -> None:
    """The sidebar's tools (typed into its text area, applied with Ctrl+Enter) and tool choice."""
    expander = page.get_by_text("Tools and JSON output (chat)")
    if not page.get_by_label("Tools (OpenAI JSON list)").is_visible():
        expander.click()
    field = page.get_by_label("Tools (OpenAI JSON list)")
    field.fill(tools)
    field.press("Control+Enter")
    expect(field).to_have_value(tools)
    radio = page.get_by_role("radio", name=choice, exact=True)
    page.locator('[data-testid="stRadio"]').filter(has_text="Tool choice").get_by_text(choice, exact=True).click()
    expect(radio).to_be_checked()


def stats(page: Page) -> tuple[str, str, int]:
    """The sidebar's figures for the last answer, once the page has drawn them (they render after the answer)."""
    metrics = page.locator('[data-testid="stMetricValue"]')
    expect(metrics).to_have_count(2)
    ttft, rate = (metric.inner_text() for metric in metrics.all())
    tokens = page.get_by_text(re.compile(r"^\d+ tokens$")).inner_text()
    return ttft, rate, int(tokens.split()[0])


def model_without_chat_template(model: Path, copy: Path) -> Path:
    """The model's files, its chat template left out (the weights linked, not copied)."""
    copy.mkdir()
    for file in model.iterdir():
        if file.name != "chat_template.jinja":
            (copy / file.name).symlink_to(file)
    return copy


def test_a_person_chats_clears_and_sees_a_readable_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", PROPERTIES)
    endpoint_port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chat_page(endpoint_port) as url, browser(tmp_path / "profile") as page:
        with local_endpoint(project, endpoint_port):
            page.goto(url)
            expect(page.get_by_role("button", name=SUGGESTED_PROMPTS[0])).to_be_visible()
            set_generation(page)
            page.evaluate(RECORD_RENDERS)
            send(page, FIRST_PROMPT, users_before=0)
            first = contents(page).last.inner_text().strip()
            partial = [text for text in page.evaluate("window.renders") if text != first]
            assert len([text for text in partial if first.startswith(text)]) >= 2, (partial, first)
            ttft, rate, tokens = stats(page)
            assert re.fullmatch(r"\d+\.\d\d s", ttft) and re.fullmatch(r"\d+\.\d", rate), (ttft, rate)
            assert 2 <= tokens <= MAX_NEW_TOKENS

            send(page, SECOND_PROMPT, users_before=1)
            expect(messages(page, "assistant")).to_have_count(2)
            expect(contents(page).nth(1)).to_have_text(first)
            assert contents(page).last.inner_text().strip(), "the second answer is shown"
            conversation = page.screenshot()
            (ARTIFACTS / "chat-conversation.png").write_bytes(conversation)

            set_tools(page, json.dumps([WEATHER_TOOL]), "required")
            send(page, "Weather in Paris?", users_before=2)
            last = page.locator('[data-testid="stChatMessage"]').last
            expect(last.get_by_text("Tool call: get_weather")).to_be_visible()
            arguments = json.loads(last.locator('[data-testid="stCode"]').inner_text())
            assert set(arguments) == {"city"} and isinstance(arguments["city"], str), arguments
            page.screenshot(path=ARTIFACTS / "chat-tool-call.png")
            set_tools(page, "", "auto")

            page.get_by_role("button", name="Clear conversation").click()
            expect(contents(page)).to_have_count(0)
            expect(page.get_by_text("No answer yet.")).to_be_visible()

        page.get_by_role("button", name=SUGGESTED_PROMPTS[0]).click()
        wait_for_answer(page, 1)
        alert = page.locator('[data-testid="stChatMessage"] [data-testid="stAlert"]')
        expect(alert).to_have_text(
            re.compile(
                r"^Cannot reach the endpoint at http://127\.0\.0\.1:\d+/\S+: "
                r"is it running\?$"
            )
        )
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        page.screenshot(path=ARTIFACTS / "chat-endpoint-stopped.png")

        without_template = model_without_chat_template(ensure_tiny_model(), tmp_path / "no-template")
        with local_endpoint(project, endpoint_port, "--model-id", str(without_template)):
            send(page, "Once upon a time", users_before=1)
        expect(alert).to_have_count(1)
        expect(contents(page)).to_have_count(4)
        assert contents(page).last.inner_text().strip(), "the endpoint refused chat messages, the prompt was answered"
        assert MAX_NEW_TOKENS // 2 < stats(page)[2] <= MAX_NEW_TOKENS, (
            "the tiny model babbles up to the sidebar's limit"
        )
        page.screenshot(path=ARTIFACTS / "chat-after-error.png")
    README_SCREENSHOT.parent.mkdir(exist_ok=True)
    README_SCREENSHOT.write_bytes(conversation)


def project_with_adapters(root: Path) -> Path:
    """A project whose model/ holds the repository's handler beside adapters/ with the two adapters of the tiny model."""
    model = root / "model"
    model.mkdir(parents=True)
    for item in (REPO / "model").iterdir():
        (model / item.name).symlink_to(item)
    for recipe in RECIPES:
        make_adapter(ensure_tiny_model(), recipe, model / "adapters" / recipe.name)
    (root / "serving.properties").write_text(LORA_PROPERTIES)
    return root


def pick_model(page: Page, name: str) -> list[str]:
    """Pick `name` in the sidebar's model picker; the names it offered."""
    picker = page.get_by_role("combobox", name="Model")
    picker.click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    offered = [text.strip() for text in options.all_inner_texts()]
    options.filter(has_text=re.compile(f"^{re.escape(name)}$")).click()
    expect(picker).to_have_value(name)
    return offered


def test_a_person_picks_a_lora_adapter_and_the_answer_follows_it(tmp_path: Path) -> None:
    tiny = ensure_tiny_model()
    project = project_with_adapters(tmp_path / "project")
    endpoint_port = free_port()
    with (
        local_endpoint(project, endpoint_port, "--model-id", str(tiny)),
        chat_page(endpoint_port) as url,
        browser(tmp_path / "profile") as page,
    ):
        page.goto(url)
        set_generation(page, ADAPTER_TOKENS)
        answers = []
        for name in (tiny.name, RECIPES[0].name, RECIPES[1].name, tiny.name):
            assert pick_model(page, name) == [tiny.name, *(recipe.name for recipe in RECIPES)]
            send(page, FIRST_PROMPT, users_before=0)
            expect(page.locator('[data-testid="stChatMessage"] [data-testid="stAlert"]')).to_have_count(0)
            answers.append(contents(page).last.inner_text().strip())
            page.get_by_role("button", name="Clear conversation").click()
            expect(contents(page)).to_have_count(0)
    base, first, second, base_again = answers
    assert base_again == base, "greedy answers of the base model repeat"
    assert len({base, first, second}) == 3, f"each adapter changes the answer: {answers}"
