"""The `lmi chat` page, which Streamlit reruns on every interaction: history, sidebar, one streamed answer per prompt.

Only layout lives here; the request comes from `conversation`, the streaming and its errors from `answer`, the
endpoint from `target` (the environment `lmi chat` sets, or `endpoint_name` as in the blog's chatbot).
The request format is `auto` by default: chat messages (the model's chat template) first; an endpoint that refuses
them before answering gets the prompt transcript instead, for the rest of the session. The sidebar's "Tools and JSON
output" takes OpenAI tools and a JSON schema for chat requests; an answer's tool calls show under it.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from lmikit.chat.answer import Answer, AnswerStats
from lmikit.chat.conversation import (
    ASSISTANT,
    CHAT,
    DEFAULT_SYSTEM_PROMPT,
    PROMPT,
    SUGGESTED_PROMPTS,
    TOOL_CHOICES,
    USER,
    Message,
    Settings,
    build_request,
    json_setting,
)
from lmikit.chat.target import ChatTarget

EMPTY_ANSWER = "The model ended its answer without any text."
FORMATS = {"auto": "auto (chat, else prompt)", CHAT: "chat messages", PROMPT: "prompt transcript"}


@st.cache_resource
def runtime_client(target: ChatTarget) -> Any:
    return target.client()


@st.cache_data(ttl=30, show_spinner=False)
def served_models(target: ChatTarget) -> list[str]:
    return target.models()


def adapter_picker(target: ChatTarget) -> str | None:
    """The sidebar's model picker, shown when the endpoint lists LoRA adapters; the adapter picked (None: the base)."""
    models = served_models(target)
    if len(models) < 2:
        return None
    picked = st.selectbox("Model", models, help="The base model, or one of its LoRA adapters")
    return None if picked == models[0] else picked


def clear_conversation() -> None:
    st.session_state.history = []
    st.session_state.stats = None


def sidebar(target: ChatTarget) -> Settings:
    with st.sidebar:
        st.caption(f"Endpoint: {target.describe()}")
        adapter = adapter_picker(target)
        st.session_state.format = st.selectbox("Request format", list(FORMATS), format_func=FORMATS.__getitem__)
        settings = Settings(
            max_new_tokens=st.number_input("Max new tokens", min_value=1, max_value=4096, value=256, step=16),
            temperature=st.slider("Temperature (0: greedy)", 0.0, 2.0, 0.7, step=0.05),
            top_p=st.slider("Top p", 0.05, 1.0, 0.9, step=0.05),
            system_prompt=st.text_area("System prompt", DEFAULT_SYSTEM_PROMPT),
            adapter=adapter,
            **structured_settings(),
        )
        st.button("Clear conversation", on_click=clear_conversation)
    return settings


def structured_settings() -> dict[str, Any]:
    """The tools and the JSON schema a chat request carries (a field that is not valid JSON is shown and left out)."""
    with st.expander("Tools and JSON output (chat)"):
        tools, tools_error = json_setting(st.text_area("Tools (OpenAI JSON list)", ""), list, "Tools")
        choice = st.radio("Tool choice", TOOL_CHOICES, horizontal=True)
        schema, schema_error = json_setting(st.text_area("Answer JSON schema", ""), dict, "The JSON schema")
        for error in (tools_error, schema_error):
            if error is not None:
                st.error(error)
    return {"tools": tools or [], "tool_choice": choice, "json_schema": schema}


def show_message(message: Message) -> None:
    with st.chat_message(message.role):
        st.markdown(message.content)
        show_outcome(message)


def show_outcome(message: Message) -> None:
    """Under an answer: its tool calls, then its error, or a note that it holds no text."""
    for call in message.tool_calls:
        st.markdown(f"Tool call: `{call.name}`")
        st.code(call.arguments, language="json")
    if message.error is not None:
        st.error(message.error)
    elif message.role == ASSISTANT and not message.content and not message.tool_calls:
        st.caption(EMPTY_ANSWER)


def suggestion(slot: Any) -> str | None:
    """Buttons with suggested prompts (in `slot`, cleared once a prompt is sent); the one clicked, if any."""
    with slot.container():
        st.caption("Try one of these, or type below:")
        for column, prompt in zip(st.columns(len(SUGGESTED_PROMPTS)), SUGGESTED_PROMPTS):
            if column.button(prompt):
                return prompt
    return None


def answer(target: ChatTarget, history: list[Message], settings: Settings) -> AnswerStats | None:
    """Stream the answer to the last message of `history` into the page, then add it to `history`."""
    mode = st.session_state.format if st.session_state.format != "auto" else st.session_state.detected
    with st.chat_message(ASSISTANT):
        slot = st.empty()
        reply = stream_into(slot, target, build_request(history, settings, mode))
        if st.session_state.format == "auto" and mode == CHAT and reply.refused:
            fallback = stream_into(slot, target, build_request(history, settings, PROMPT))
            if not fallback.refused:
                st.session_state.detected, reply = PROMPT, fallback
        show_outcome(reply.message())
    history.append(reply.message())
    return reply.stats


def stream_into(slot: Any, target: ChatTarget, request: Any) -> Answer:
    """One answer streamed into `slot` (replacing what it showed)."""
    reply = Answer(lambda: runtime_client(target), target.endpoint_name, request)
    with slot.container():
        st.write_stream(reply.pieces())
    return reply


def show_stats(slot: Any, stats: AnswerStats | None) -> None:
    with slot.container():
        st.subheader("Last answer")
        if stats is None:
            st.caption("No answer yet.")
            return
        ttft, rate = stats.time_to_first_token, stats.tokens_per_second
        first, second = st.columns(2)
        first.metric("TTFT", "-" if ttft is None else f"{ttft:.2f} s")
        second.metric("Tokens/s", "-" if rate is None else f"{rate:.1f}")
        st.caption(f"{stats.tokens} tokens")


def main() -> None:
    st.set_page_config(page_title="lmi chat", page_icon=":speech_balloon:")
    target = ChatTarget.resolve(None, None, os.environ)
    st.session_state.setdefault("history", [])
    st.session_state.setdefault("stats", None)
    st.session_state.setdefault("detected", CHAT)  # what `auto` sends: chat until the endpoint refuses it
    history: list[Message] = st.session_state.history
    st.title("lmi chat")
    settings = sidebar(target)
    stats_slot = st.sidebar.empty()
    for message in history:
        show_message(message)
    suggestions = st.empty()
    prompt = st.chat_input("Ask the model") or (None if history else suggestion(suggestions))
    if prompt:
        suggestions.empty()
        history.append(Message(USER, prompt))
        show_message(history[-1])
        st.session_state.stats = answer(target, history, settings)
    show_stats(stats_slot, st.session_state.stats)


main()
