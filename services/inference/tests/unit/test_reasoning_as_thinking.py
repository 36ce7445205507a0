"""Reasoning text of an OpenAI-compatible server (`reasoning_content`, vLLM's and
DeepSeek's; `reasoning`) reaches an Anthropic client that enabled thinking as a `thinking`
block, whole or streamed (as Anthropic streams one: `thinking_delta`s, then its
`signature_delta`), and no other client; sent back, it goes to no model: Chat Completions
is never sent thinking, and an Anthropic deployment would refuse its signature, so a
request (or a token count) to one leaves it out."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from switchyard.common.events import ClientAPI
from switchyard.common.routing import Deployment
from switchyard.common.testing.events import chat_requested
from switchyard.inference.adapters import Adapters
from switchyard.inference.translate import (
    TRANSLATED_THINKING_SIGNATURE,
    ChatChunksToMessageEvents,
    chat_completion_to_message,
    messages_request_to_chat,
)

from .test_translate import openai_chunk

OPENAI = Deployment(
    name="up", provider="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0
)
CLAUDE = Deployment(
    name="claude", provider="anthropic", model="c", base_url="http://127.0.0.1:9", max_retries=0
)
THINKING = {"type": "enabled", "budget_tokens": 1024}


def _completion(field: str = "reasoning_content") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "42.", field: "Six times seven."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_whole_reply_starts_with_a_thinking_block(field):
    message = chat_completion_to_message(_completion(field), "m", thinking=True)

    assert message["content"] == [
        {
            "type": "thinking",
            "thinking": "Six times seven.",
            "signature": TRANSLATED_THINKING_SIGNATURE,
        },
        {"type": "text", "text": "42."},
    ]


def test_without_thinking_enabled_the_reasoning_is_not_shown():
    # As Anthropic sends no thinking unless asked: `content[0].text` stays the text.
    message = chat_completion_to_message(_completion(), "m")
    assert message["content"] == [{"type": "text", "text": "42."}]


def test_a_stream_gives_a_thinking_block_the_sdk_assembles():
    converter = ChatChunksToMessageEvents("m", thinking=True)
    chunks = [
        openai_chunk({"role": "assistant", "reasoning_content": "Six "}),
        openai_chunk({"reasoning_content": "times seven."}),
        openai_chunk({"content": "42."}),
        openai_chunk({}, "stop"),
    ]
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()

    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in events]
    assert kinds[:6] == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
    ]
    snapshot, buffers = None, {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    thinking, text = snapshot.content
    assert thinking.type == "thinking" and thinking.thinking == "Six times seven."
    assert thinking.signature == TRANSLATED_THINKING_SIGNATURE
    assert text.type == "text" and text.text == "42."


def test_a_stream_without_thinking_enabled_shows_only_the_text():
    converter = ChatChunksToMessageEvents("m")
    events = converter.feed(openai_chunk({"role": "assistant", "reasoning_content": "Hm."}))
    events += converter.feed(openai_chunk({"content": "42."}))
    events += converter.finish()
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["text"]


def _request(api: ClientAPI, body: dict[str, Any]):
    event = chat_requested(body=body)
    return event.model_copy(update={"data": event.data.model_copy(update={"api": api})})


def test_the_adapter_shows_it_only_to_a_request_that_enabled_thinking():
    base = {"model": "m", "max_tokens": 2048, "messages": [{"role": "user", "content": "6*7?"}]}
    for body, shown in ((base, False), ({**base, "thinking": THINKING}, True)):
        request = _request(ClientAPI.ANTHROPIC_MESSAGES, body)
        adapter = Adapters().adapter_for(ClientAPI.ANTHROPIC_MESSAGES, OPENAI, request)
        message, _ = adapter.reply(_completion(), "m")
        assert (message["content"][0]["type"] == "thinking") is shown


def test_sent_back_it_reaches_no_model():
    made = {
        "type": "thinking",
        "thinking": "Six times seven.",
        "signature": TRANSLATED_THINKING_SIGNATURE,
    }
    claudes = {"type": "thinking", "thinking": "Mine.", "signature": "EqQBCkgIAR..."}
    body = {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "messages": [
            {"role": "user", "content": "6*7?"},
            {"role": "assistant", "content": [made, claudes, {"type": "text", "text": "42."}]},
            {"role": "user", "content": "And 6*8?"},
        ],
    }

    for api in (ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.ANTHROPIC_COUNT_TOKENS):
        adapter = Adapters().adapter_for(api, CLAUDE, _request(api, body))
        sent = adapter.request(body, {}, CLAUDE, False).body
        assert sent["messages"][1]["content"] == [claudes, {"type": "text", "text": "42."}]
    assert body["messages"][1]["content"][0] is made  # the client's body is not changed
    translated = messages_request_to_chat(body)
    assert "Six times seven." not in str(translated["messages"])


MADE = {
    "type": "thinking",
    "thinking": "Call the tool.",
    "signature": TRANSLATED_THINKING_SIGNATURE,
}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny."}
CLEARING = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}


def _sent_to_claude(body: dict[str, Any]) -> dict[str, Any]:
    adapter = Adapters().adapter_for(
        ClientAPI.ANTHROPIC_MESSAGES, CLAUDE, _request(ClientAPI.ANTHROPIC_MESSAGES, body)
    )
    return adapter.request(body, {}, CLAUDE, False).body


def test_a_tool_loop_that_opened_with_made_thinking_goes_to_claude_without_thinking():
    # A conversation moved from an OpenAI-protocol model to Claude mid tool loop: its turn
    # opens with thinking only Switchyard made, which goes; Anthropic refuses thinking on
    # for a turn in progress that does not open with a thinking block, so it goes too,
    # with the thinking-clearing edit that needs it.
    body = {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "context_management": CLEARING,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [MADE, TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT]},
        ],
    }
    sent = _sent_to_claude(body)
    assert sent["messages"][1]["content"] == [TOOL_USE]
    assert "thinking" not in sent
    assert "context_management" not in sent
    assert body["thinking"] == THINKING  # the client's body is not changed


def test_other_context_edits_stay_when_thinking_goes():
    other = {"type": "clear_tool_uses_20250919"}
    body = {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "context_management": {"edits": [CLEARING["edits"][0], other]},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [MADE, TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT]},
        ],
    }
    assert _sent_to_claude(body)["context_management"] == {"edits": [other]}


def test_a_message_of_made_thinking_alone_is_left_out_and_a_new_turn_keeps_thinking():
    body = {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "context_management": CLEARING,
        "messages": [
            {"role": "user", "content": "6*7?"},
            {"role": "assistant", "content": [MADE]},
            {"role": "user", "content": "And 6*8?"},
        ],
    }
    sent = _sent_to_claude(body)
    assert [m["role"] for m in sent["messages"]] == ["user", "user"]
    # A new user message: no turn in progress, so thinking may stay on.
    assert sent["thinking"] == THINKING
    assert sent["context_management"] == CLEARING


def test_a_turn_opening_with_claudes_own_thinking_keeps_thinking():
    claudes = {"type": "thinking", "thinking": "Mine.", "signature": "EqQBCkgIAR..."}
    body = {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "messages": [
            {"role": "user", "content": "6*7?"},
            {"role": "assistant", "content": [MADE, {"type": "text", "text": "42."}]},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [claudes, TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT]},
        ],
    }
    sent = _sent_to_claude(body)
    assert sent["thinking"] == THINKING
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "42."}]
