"""Reasoning text of an OpenAI-compatible server (`reasoning_content`, vLLM's and
DeepSeek's; `reasoning`) reaches an Anthropic client that enabled thinking as a `thinking`
block, whole or streamed (as Anthropic streams one: `thinking_delta`s, then its
`signature_delta`), and no other client. Sent back, it goes to the server it came from as
its `reasoning_content` (signed for that server's origin: DeepSeek's and Kimi's thinking
models refuse a tool loop without it), and to no other model: other Chat Completions
servers refuse the field, and an Anthropic deployment would refuse its signature, so a
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
from switchyard.inference.upstream import SSE

from .test_translate import openai_chunk


def _sse(data: dict[str, Any]) -> SSE:
    return SSE(None, data)


def _streamed(adapter, *deltas: dict[str, Any]) -> list:
    """The client's stream events an adapter's translation makes of chunks with `deltas`,
    then a `stop`."""
    translation = adapter.stream({}, "m")
    events = []
    for chunk in (*(openai_chunk(delta) for delta in deltas), openai_chunk({}, "stop")):
        events += translation.feed(_sse(chunk))
    return events + translation.finish()


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


DEEPSEEK = Deployment(
    name="deepseek", provider="openai", model="d", base_url="http://127.0.0.1:9/v1", max_retries=0
)
OTHER = Deployment(
    name="other", provider="openai", model="o", base_url="http://127.0.0.2:9/v1", max_retries=0
)


def _messages_adapter(deployment: Deployment, body: dict[str, Any]):
    return Adapters().adapter_for(
        ClientAPI.ANTHROPIC_MESSAGES, deployment, _request(ClientAPI.ANTHROPIC_MESSAGES, body)
    )


def _tool_loop(thinking_block: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 2048,
        "thinking": THINKING,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [thinking_block, TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT]},
        ],
    }


def _reply_with_call() -> dict[str, Any]:
    completion = _completion()
    completion["choices"][0]["message"]["tool_calls"] = [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    return completion


def test_a_servers_reasoning_goes_back_to_it_as_reasoning_content_in_a_tool_loop():
    # DeepSeek's and Kimi's thinking models refuse a tool loop whose assistant message
    # lacks the reasoning_content they gave: the thinking block made from it is signed
    # for its server, and goes back to that server as the message's reasoning_content.
    first = _tool_loop({})["messages"][:1]
    adapter = _messages_adapter(DEEPSEEK, {**_tool_loop({}), "messages": first})
    message, _ = adapter.reply(_reply_with_call(), "m")
    made = message["content"][0]
    assert made["type"] == "thinking" and made["thinking"] == "Six times seven."
    assert made["signature"].startswith(TRANSLATED_THINKING_SIGNATURE + ".")

    body = _tool_loop(made)
    sent = _messages_adapter(DEEPSEEK, body).request(body, {}, DEEPSEEK, False).body
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["reasoning_content"] == "Six times seven."
    assert assistant["tool_calls"][0]["id"] == "toolu_1"

    # To another server, or to Claude, it goes nowhere: they would refuse the field.
    sent = _messages_adapter(OTHER, body).request(body, {}, OTHER, False).body
    assert "reasoning_content" not in sent["messages"][1]
    assert "Six times seven." not in str(_sent_to_claude(body)["messages"])


def test_a_streamed_thinking_block_is_signed_for_its_server_too():
    adapter = _messages_adapter(DEEPSEEK, {**_tool_loop({}), "stream": True})
    events = _streamed(
        adapter,
        {"role": "assistant", "reasoning_content": "Six "},
        {"reasoning_content": "times seven."},
        {"content": "42."},
    )
    (signature,) = [
        e.data["delta"]["signature"]
        for e in events
        if e.data.get("delta", {}).get("type") == "signature_delta"
    ]
    made = adapter.reply(_completion(), "m")[0]["content"][0]
    assert signature == made["signature"] != TRANSLATED_THINKING_SIGNATURE


def test_a_block_signed_before_servers_were_named_goes_back_to_none():
    body = _tool_loop(MADE)  # the bare `switchyard.reasoning.v1`
    sent = _messages_adapter(DEEPSEEK, body).request(body, {}, DEEPSEEK, False).body
    assert "reasoning_content" not in sent["messages"][1]


def test_a_forged_signature_of_another_server_is_not_sent():
    body = _tool_loop({**MADE, "signature": TRANSLATED_THINKING_SIGNATURE + ".0123456789abcdef"})
    sent = messages_request_to_chat(body, reasoning_origin="127.0.0.1:9")
    assert "reasoning_content" not in sent["messages"][1]


def _responses_tool_loop(reasoning: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    """A Responses request sending back a reasoning item and its function call, with the
    call's output."""
    return {
        "model": "m",
        "input": [
            {"role": "user", "content": "Weather in Oslo?"},
            reasoning,
            call,
            {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny."},
        ],
    }


def _responses_adapter(deployment: Deployment, body: dict[str, Any]):
    return Adapters().adapter_for(
        ClientAPI.OPENAI_RESPONSES, deployment, _request(ClientAPI.OPENAI_RESPONSES, body)
    )


def test_a_servers_reasoning_goes_back_to_it_from_a_responses_client_too():
    first = {"model": "m", "input": "Weather in Oslo?"}
    response, _ = _responses_adapter(DEEPSEEK, first).reply(_reply_with_call(), "m")
    reasoning, call = [item for item in response["output"] if item["type"] != "message"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["encrypted_content"].startswith(TRANSLATED_THINKING_SIGNATURE + ".")
    assert call["type"] == "function_call"

    second = _responses_tool_loop(reasoning, call)
    sent = _responses_adapter(DEEPSEEK, second).request(second, {}, DEEPSEEK, False).body
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["reasoning_content"] == "Six times seven."
    assert assistant["tool_calls"][0]["id"] == call["call_id"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]

    other = _responses_adapter(OTHER, second).request(second, {}, OTHER, False).body
    assert all("reasoning_content" not in m for m in other["messages"])
    to_claude = _responses_adapter(CLAUDE, second).request(second, {}, CLAUDE, False).body
    assert "Six times seven." not in str(to_claude["messages"])


def test_a_streamed_reasoning_item_is_signed_for_its_server():
    adapter = _responses_adapter(DEEPSEEK, {"model": "m", "input": "6*7?", "stream": True})
    events = _streamed(
        adapter, {"role": "assistant", "reasoning_content": "Six times seven."}, {"content": "42."}
    )
    (done,) = [
        e.data["item"]
        for e in events
        if e.event == "response.output_item.done" and e.data["item"]["type"] == "reasoning"
    ]
    made, _ = adapter.reply(_completion(), "m")
    assert done["encrypted_content"] == made["output"][0]["encrypted_content"]
    assert done["summary"][0]["text"] == "Six times seven."


def test_reasoning_followed_by_text_becomes_one_assistant_message():
    sign = _responses_adapter(DEEPSEEK, {"model": "m", "input": "x"}).ctx.reasoning_signature
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "6*7?"},
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "Six times seven."}],
                "encrypted_content": sign,
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "42."}]},
            {"role": "user", "content": "And 6*8?"},
        ],
    }
    sent = _responses_adapter(DEEPSEEK, body).request(body, {}, DEEPSEEK, False).body
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": "42.",
        "reasoning_content": "Six times seven.",
    }
    assert len(sent["messages"]) == 3


GEMINI = Deployment(
    name="gemini",
    provider="gemini",
    model="gemini-3-pro-preview",
    base_url="http://127.0.0.1:9/v1beta/openai",
    api_key_env="T_GEMINI_KEY",
    max_retries=0,
)


def test_a_tool_loop_translated_for_gemini_gives_each_call_a_thought_signature():
    # Gemini 3 refuses a tool loop whose calls lack their thought signature, which neither
    # an Anthropic nor a Responses client can keep: Google's documented value stands in.
    body = _tool_loop(MADE)
    sent = _messages_adapter(GEMINI, body).request(body, {}, GEMINI, False).body
    (call,) = sent["messages"][1]["tool_calls"]
    assert call["extra_content"] == {
        "google": {"thought_signature": "skip_thought_signature_validator"}
    }

    responses_body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny."},
        ],
    }
    sent = (
        _responses_adapter(GEMINI, responses_body).request(responses_body, {}, GEMINI, False).body
    )
    (call,) = sent["messages"][1]["tool_calls"]
    assert (
        call["extra_content"]["google"]["thought_signature"] == "skip_thought_signature_validator"
    )

    # No other deployment gets the field.
    sent = _messages_adapter(DEEPSEEK, body).request(body, {}, DEEPSEEK, False).body
    assert "extra_content" not in sent["messages"][1]["tool_calls"][0]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_goes_back_in_the_field_its_server_wrote_it_in(field):
    # A server writing `reasoning` (OpenRouter, Groq) may refuse `reasoning_content`.
    completion = _reply_with_call()
    message = completion["choices"][0]["message"]
    message[field] = message.pop("reasoning_content")
    first = {**_tool_loop({}), "messages": _tool_loop({})["messages"][:1]}
    made = _messages_adapter(DEEPSEEK, first).reply(completion, "m")[0]["content"][0]
    body = _tool_loop(made)
    sent = _messages_adapter(DEEPSEEK, body).request(body, {}, DEEPSEEK, False).body
    assistant = sent["messages"][1]
    assert assistant[field] == "Six times seven."
    assert [name for name in ("reasoning_content", "reasoning") if name in assistant] == [field]

    response, _ = _responses_adapter(DEEPSEEK, {"model": "m", "input": "x"}).reply(completion, "m")
    reasoning, call = [item for item in response["output"] if item["type"] != "message"]
    second = _responses_tool_loop(reasoning, call)
    sent = _responses_adapter(DEEPSEEK, second).request(second, {}, DEEPSEEK, False).body
    assert sent["messages"][1][field] == "Six times seven."


def test_a_streamed_reasonings_field_is_kept_in_its_signature():
    adapter = _messages_adapter(DEEPSEEK, {**_tool_loop({}), "stream": True})
    events = _streamed(
        adapter, {"role": "assistant", "reasoning": "Six times seven."}, {"content": "42."}
    )
    (signature,) = [
        e.data["delta"]["signature"]
        for e in events
        if e.data.get("delta", {}).get("type") == "signature_delta"
    ]
    assert signature.endswith(".r")

    responses = _responses_adapter(DEEPSEEK, {"model": "m", "input": "6*7?", "stream": True})
    events = _streamed(responses, {"role": "assistant", "reasoning": "Six times seven."})
    (done,) = [
        e.data["item"]
        for e in events
        if e.event == "response.output_item.done" and e.data["item"]["type"] == "reasoning"
    ]
    assert done["encrypted_content"] == signature
