"""Responses requests translated to Chat Completions and to Anthropic Messages: the text
parts of one message stay apart (joined, the words of one part and the next would run
together)."""

from __future__ import annotations

from typing import Any

from switchyard.inference.translate_responses import (
    responses_request_to_chat,
    responses_request_to_messages,
)


def text(kind: str, value: str) -> dict[str, Any]:
    return {"type": kind, "text": value}


BODY: dict[str, Any] = {
    "model": "m",
    "input": [
        {
            "role": "developer",
            "content": [text("input_text", "Be brief."), text("input_text", "Be kind.")],
        },
        {"role": "user", "content": "Two paragraphs, then the weather."},
        {
            "type": "message",
            "role": "assistant",
            "content": [
                text("output_text", "First paragraph."),
                text("output_text", "Second paragraph."),
            ],
        },
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [text("input_text", "Paris: 18C."), text("input_text", "Oslo: 5C.")],
        },
    ],
}


def test_text_parts_stay_apart_towards_chat_completions() -> None:
    messages = responses_request_to_chat(BODY)["messages"]
    assert messages[0] == {
        "role": "system",
        "content": [text("text", "Be brief."), text("text", "Be kind.")],
    }
    assert messages[2]["content"] == [
        text("text", "First paragraph."),
        text("text", "Second paragraph."),
    ]
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": [text("text", "Paris: 18C."), text("text", "Oslo: 5C.")],
    }


def test_text_parts_stay_apart_towards_anthropic() -> None:
    sent = responses_request_to_messages(BODY)
    assert sent["system"] == "Be brief.\n\nBe kind."
    assert sent["messages"][1]["content"][:2] == [
        text("text", "First paragraph."),
        text("text", "Second paragraph."),
    ]


def test_consecutive_anthropic_text_blocks_make_one_output_text() -> None:
    # Joined once at the end, not block by block (a reply of many blocks stays linear).
    from datetime import UTC, datetime

    from switchyard.common.events import TokenUsage
    from switchyard.inference.translate_responses import ResponseContext, message_to_response

    ctx = ResponseContext({"model": "m", "input": "hi"}, "resp_1", datetime.now(UTC), "m")
    message = {
        "content": [
            text("text", "One, "),
            text("text", "two, "),
            {"type": "text", "text": None},
            text("text", "three."),
            {"type": "thinking", "thinking": "Hm", "signature": "S"},
            text("text", "Four."),
            *[text("text", "x") for _ in range(5000)],
        ],
        "stop_reason": "end_turn",
    }
    response = message_to_response(message, ctx, TokenUsage())
    output = response["output"]
    assert [item["type"] for item in output] == ["message", "reasoning", "message"]
    assert output[0]["content"][0]["text"] == "One, two, three."
    assert output[2]["content"][0]["text"] == "Four." + "x" * 5000
