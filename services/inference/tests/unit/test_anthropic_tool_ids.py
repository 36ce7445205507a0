"""The tool calls of an OpenAI-protocol model reach an Anthropic client with ids it can
send back: OpenAI-compatible servers name calls as they like (`functions.get_weather:0`,
`call_0` for two parallel calls, or `call_0` again in the next turn), while Anthropic
takes only ids matching `^[a-zA-Z0-9_-]+$`, unique in the whole conversation, and the
gateway refuses others as Anthropic does. The reply, whole or streamed, is sent back in
the next turn's request and must pass that check (`check_messages_request`)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from switchyard.common.anthropic_request import check_messages_request
from switchyard.common.events import ClientAPI
from switchyard.common.routing import Deployment
from switchyard.common.testing.events import chat_requested
from switchyard.inference.adapters import Adapters
from switchyard.inference.translate import (
    AnthropicToolIds,
    ChatChunksToMessageEvents,
    messages_request_to_chat,
    upstream_tool_id,
)
from switchyard.inference.upstream import SSE

from .test_translate import openai_chunk

DEPLOYMENT = Deployment(
    name="up", provider="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0
)
PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
TOOLS = [{"name": "w", "input_schema": {"type": "object"}}]


def _call(index: int, call_id: str | None) -> dict[str, Any]:
    call: dict[str, Any] = {
        "index": index,
        "type": "function",
        "function": {"name": "w", "arguments": "{}"},
    }
    if call_id is not None:
        call["id"] = call_id
    return call


def _completion(*ids: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_call(i, call_id) for i, call_id in enumerate(ids)],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _turn(ids: list[str]) -> list[dict[str, Any]]:
    """An assistant turn calling `w` under `ids`, then the user's results."""
    return [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": i, "name": "w", "input": {}} for i in ids],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i in ids],
        },
    ]


def _request(history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 100,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "Weather?"}, *history],
    }


def _reply_ids(body: dict[str, Any], upstream_ids: tuple[str | None, ...], stream: bool) -> list:
    """The tool_use ids the client gets for a reply calling `w` under `upstream_ids`, to
    the request `body`, through the adapter inference uses."""
    event = chat_requested(body=body)
    event = event.model_copy(
        update={"data": event.data.model_copy(update={"api": ClientAPI.ANTHROPIC_MESSAGES})}
    )
    adapter = Adapters().adapter_for(ClientAPI.ANTHROPIC_MESSAGES, DEPLOYMENT, event)
    if not stream:
        message, _ = adapter.reply(_completion(*upstream_ids), "m")
        return [block["id"] for block in message["content"] if block["type"] == "tool_use"]
    translation = adapter.stream(body, "m")
    chunks = [
        openai_chunk({"tool_calls": [_call(i, call_id)]}) for i, call_id in enumerate(upstream_ids)
    ] + [openai_chunk({}, "tool_calls")]
    events = []
    for chunk in chunks:
        events += translation.feed(SSE(None, chunk))
    events += translation.finish()
    return [
        event.data["content_block"]["id"]
        for event in events
        if event.event == "content_block_start"
        and event.data["content_block"]["type"] == "tool_use"
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("earlier", "upstream_ids"),
    [
        ([], ("functions.get_weather:0",)),
        ([], ("call_0", "call_0")),
        (["call_0"], ("call_0",)),
        (["call_0", "call_0_2"], ("call_0", "call_0")),
        ([], (None, None)),
        ([], ("", "x" * 40)),
    ],
    ids=["colon", "parallel-repeat", "earlier-turn", "suffix-taken", "no-ids", "empty"],
)
def test_reply_ids_can_be_sent_back(earlier, upstream_ids, stream):
    body = _request(_turn(earlier) if earlier else [])
    check_messages_request(body)

    ids = _reply_ids(body, upstream_ids, stream)

    assert len(ids) == len(upstream_ids)
    assert all(PATTERN.fullmatch(i) for i in ids), ids
    assert len(set(ids) | set(earlier)) == len(ids) + len(earlier)
    check_messages_request(_request([*(_turn(earlier) if earlier else []), *_turn(ids)]))


def test_ids_that_fit_are_kept_and_a_mapped_id_is_the_same_every_time():
    assert AnthropicToolIds().give("call_abc") == "call_abc"
    first = AnthropicToolIds().give("functions.get_weather:0")
    assert first == AnthropicToolIds().give("functions.get_weather:0")
    assert first == "toolu_sy_ZnVuY3Rpb25zLmdldF93ZWF0aGVyOjA"
    assert AnthropicToolIds({"call_abc"}).give("call_abc") == "toolu_sy2_Y2FsbF9hYmM"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("earlier", "upstream_ids"),
    [
        ([], ("functions.get_weather:0", "functions.get_weather:1")),
        (["toolu_sy_ZnVuY3Rpb25zLmdldF93ZWF0aGVyOjA"], ("functions.get_weather:0",)),
        ([], ("call_0", "call_0")),
        (["call_0"], ("call_0",)),
        ([], ("aB3dE5gH7",)),
        ([], ("id with spaces/and ünïcode",)),
        ([], ("toolu_sy_Y2FsbF8w",)),
    ],
    ids=[
        "kimi",
        "kimi-next-turn",
        "parallel-repeat",
        "earlier-turn",
        "mistral",
        "any",
        "lookalike",
    ],
)
def test_the_upstream_gets_its_own_ids_back_in_the_next_turn(earlier, upstream_ids, stream):
    """Servers that read their ids (Kimi-K2's template parses `functions.NAME:INDEX`;
    Mistral's are 9 letters and digits) get each call and its result under the id they
    gave it, whatever the client had to be given."""
    history = [
        *(_turn(list(earlier)) if earlier else []),
        *_turn(_reply_ids(_request(_turn(earlier) if earlier else []), upstream_ids, stream)),
    ]
    body = _request(history)
    check_messages_request(body)

    chat = messages_request_to_chat(body)
    last_calls = [m for m in chat["messages"] if m.get("tool_calls")][-1]["tool_calls"]
    results = [m["tool_call_id"] for m in chat["messages"] if m["role"] == "tool"]
    assert [call["id"] for call in last_calls] == list(upstream_ids)
    assert results[-len(upstream_ids) :] == list(upstream_ids)


@pytest.mark.parametrize(
    "client_id",
    ["toolu_sy_", "toolu_sy_!!", "toolu_sy_Y2FsbF8w=", "toolu_sy_Y2FsbF8x_", "toolu_01AbC", "x"],
)
def test_a_client_id_that_only_looks_translated_is_sent_as_it_is(client_id):
    assert upstream_tool_id(client_id) == client_id


def test_the_converter_without_ids_given_still_keeps_a_reply_unique():
    converter = ChatChunksToMessageEvents("m")
    events = converter.feed(openai_chunk({"tool_calls": [_call(0, "c"), _call(1, "c")]}))
    events += converter.finish()
    ids = [e["content_block"]["id"] for e in events if e["type"] == "content_block_start"]
    assert ids == ["c", "toolu_sy2_Yw"]
