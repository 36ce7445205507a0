"""A Claude-Code-shaped request through the official `anthropic` SDK: system blocks with
cache_control, a system message in the middle of the conversation, 24 tools, extended
thinking, `metadata.user_id`, beta headers, a tool result with an image, streaming,
about 100 kB. It must reach inference exactly as the client sent it (body and the
headers a provider needs, never credentials), and its stream, thinking blocks and
signatures included, must reach the client exactly as inference relayed it."""

from __future__ import annotations

import base64

import anthropic
import httpx2
import orjson

from switchyard.common.events import ClientAPI, StreamEvent

from .conftest import API_KEY, completed_reply, record

BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
)
SIGNATURE = "EqQBCkYIBxgCKkD" + "s" * 300


def paragraph(topic: str, words: int) -> str:
    return " ".join(f"{topic}-{index}" for index in range(words))


def tool(index: int) -> dict:
    schema = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": paragraph("command", 40)},
            "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
            "paths": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["command"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    }
    return {
        "name": f"Tool{index}",
        "description": paragraph(f"tool{index}", 220),
        "input_schema": schema,
    }


def claude_code_body() -> dict:
    tools = [tool(index) for index in range(24)]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    image = base64.b64encode(bytes(range(256)) * 8).decode()
    return {
        "model": "sim-claude",
        "max_tokens": 32000,
        "temperature": 1,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": paragraph("instructions", 1800),
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>" + paragraph("context", 600)},
                    {"type": "text", "text": "Fix the failing test in tests/test_app.py"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "The user wants the test fixed; read it first.",
                        "signature": SIGNATURE,
                    },
                    {"type": "text", "text": "Let me look at the test."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Tool3",
                        "input": {"command": "cat tests/test_app.py"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [
                            {"type": "text", "text": paragraph("file", 300)},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": image,
                                },
                            },
                        ],
                    }
                ],
            },
            {"role": "system", "content": "The user switched to plan mode."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Go ahead.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 16000},
        "metadata": {"user_id": "user_4f1c_account_9a2b_session_77e0"},
    }


def reply_stream(request) -> list:
    """What inference relays for this request: thinking (with its signature), text and a
    tool call streamed as partial JSON."""
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "sim-claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 20000,
            "cache_read_input_tokens": 5000,
            "output_tokens": 1,
        },
    }

    def delta(index: int, body: dict) -> StreamEvent:
        return StreamEvent(
            event="content_block_delta",
            data={"type": "content_block_delta", "index": index, "delta": body},
        )

    def block(index: int, body: dict) -> StreamEvent:
        return StreamEvent(
            event="content_block_start",
            data={"type": "content_block_start", "index": index, "content_block": body},
        )

    def stop(index: int) -> StreamEvent:
        return StreamEvent(
            event="content_block_stop", data={"type": "content_block_stop", "index": index}
        )

    events = [
        StreamEvent(event="message_start", data={"type": "message_start", "message": message}),
        block(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "Run the test first."}),
        delta(0, {"type": "signature_delta", "signature": SIGNATURE}),
        stop(0),
        block(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "Running it."}),
        stop(1),
        block(2, {"type": "tool_use", "id": "toolu_02", "name": "Tool3", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"command": "pyt'}),
        delta(2, {"type": "input_json_delta", "partial_json": 'est -q"}'}),
        stop(2),
        StreamEvent(
            event="message_delta",
            data={
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 42},
            },
        ),
        StreamEvent(event="message_stop", data={"type": "message_stop"}),
    ]
    # Batched unevenly, as inference does when the bus is slower than the upstream.
    records = [events[0:1], events[1:5], events[5:6], events[6:12], events[12:]]
    return [record(request, index, batch) for index, batch in enumerate(records)]


async def test_claude_code_request_reaches_inference_unchanged_and_streams_back(harness):
    async def inference(request):
        return [*reply_stream(request), completed_reply(request, "unused")]

    harness.respond[0] = inference
    sent: list = []

    async def remember(request) -> None:
        sent.append(request)

    client = anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=harness.app), event_hooks={"request": [remember]}
        ),
    )
    body = claude_code_body()
    typed = {key: value for key, value in body.items() if key != "temperature"}
    async with client.messages.stream(
        **typed,
        extra_body={"temperature": body["temperature"]},
        extra_headers={"anthropic-beta": BETAS, "x-app": "cli"},
    ) as stream:
        final = await stream.get_final_message()

    [http_request] = sent
    assert 90_000 < len(http_request.content) < 150_000
    [published] = harness.requests
    # What the client sent is what inference got: every block, marker and parameter.
    assert published.data.body == orjson.loads(http_request.content)
    assert published.data.api == ClientAPI.ANTHROPIC_MESSAGES
    assert published.data.stream is True
    assert published.data.body["system"] == body["system"]
    assert published.data.body["messages"] == body["messages"]
    assert published.data.body["tools"] == body["tools"]
    assert published.data.body["thinking"] == body["thinking"]
    assert published.data.body["metadata"] == {"user_id": "user_4f1c_account_9a2b_session_77e0"}
    # The headers a provider needs; never the credential or what only the client uses.
    assert published.data.headers == {
        "anthropic-version": http_request.headers["anthropic-version"],
        "anthropic-beta": BETAS,
    }
    assert API_KEY not in orjson.dumps(published.model_dump(mode="json")).decode()

    # The stream reached the SDK whole: thinking with its signature, text, the tool call.
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "Run the test first."
    assert final.content[0].signature == SIGNATURE
    assert final.content[1].text == "Running it."
    assert final.content[2].input == {"command": "pytest -q"}
    assert final.stop_reason == "tool_use"
    assert final.usage.cache_creation_input_tokens == 20000
    assert final.usage.cache_read_input_tokens == 5000
    assert final.usage.output_tokens == 42
