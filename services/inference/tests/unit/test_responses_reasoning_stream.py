"""An Anthropic stream's thinking as the Responses API streams reasoning: its
`response.output_item.added` carries the signature as `encrypted_content` (as OpenAI's
does; langchain-openai reads reasoning items from that event only), so the item's events
are held until the signature is whole and then streamed in order, numbered as they go
out; a thinking so long that holding it would keep the stream from starting streams live
after `REASONING_HOLD_S`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from switchyard.common.events import TokenUsage
from switchyard.inference import translate_responses
from switchyard.inference.translate_responses import (
    ChatChunksToResponseEvents,
    MessageEventsToResponseEvents,
    ResponseContext,
)

CTX = ResponseContext(
    body={"model": "sim-claude", "input": "Weather?", "reasoning": {"effort": "low"}},
    response_id="resp_test",
    created_at=datetime(2025, 1, 1, tzinfo=UTC),
    model="sim-claude",
)


def usage() -> TokenUsage:
    return TokenUsage(input_tokens=10, output_tokens=20)


def start() -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": []},
    }


def thinking(index: int, *signature: str, text: str = "Hmm.", at_start: str = "") -> list[dict]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": at_start},
        },
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "thinking_delta", "thinking": text},
        },
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "signature_delta", "signature": piece},
            }
            for piece in signature
        ),
        {"type": "content_block_stop", "index": index},
    ]


def tool_use(index: int) -> list[dict]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {
                "type": "tool_use",
                "id": f"toolu_{index}",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": '{"location": "Oslo"}'},
        },
        {"type": "content_block_stop", "index": index},
    ]


def stop(reason: str = "tool_use") -> list[dict]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ]


def run(upstream: list[dict], clock=None) -> list[list[dict[str, Any]]]:
    """The Responses events each upstream event produced."""
    converter = (
        MessageEventsToResponseEvents(CTX, usage)
        if clock is None
        else MessageEventsToResponseEvents(CTX, usage, clock)
    )
    return [converter.feed(event) for event in upstream]


def flat(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [event for batch in batches for event in batch]


def sdk_final(events: list[dict[str, Any]]) -> Response:
    """The `openai` SDK's own stream reader (it checks the order of the events and the
    identity of the items) on the stream; the response it assembles."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    assert state._completed_response is not None
    return state._completed_response


def added(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "response.output_item.added"]


def test_a_thinking_blocks_reasoning_item_is_added_with_its_signature():
    upstream = [start(), *thinking(0, "SIG-1"), *tool_use(1), *stop()]

    batches = run(upstream)
    events = flat(batches)

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    reasoning = added(events)[0]
    assert reasoning["type"] == "reasoning"
    assert reasoning["encrypted_content"] == "SIG-1"
    # The usual sequence, in its order: nothing of the item before it is added.
    kinds = [e["type"] for e in events if e.get("output_index") == 0]
    assert kinds == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    # Held while its signature was not whole, all of it streamed at the block's end.
    stop_at = len(thinking(0, "SIG-1"))  # the block's content_block_stop (after start())
    assert not [e for batch in batches[1:stop_at] for e in batch if e.get("output_index") == 0]
    assert len([e for e in batches[stop_at] if e.get("output_index") == 0]) == 6
    final = sdk_final(events)
    assert final.output[0].encrypted_content == "SIG-1"
    assert final.output[0].summary[0].text == "Hmm."
    assert final.output[0].id == reasoning["id"]
    assert [item.type for item in final.output] == ["reasoning", "function_call"]


def test_a_signature_in_pieces_is_added_whole():
    events = flat(run([start(), *thinking(0, "SIG", "", "-2"), *tool_use(1), *stop()]))

    assert added(events)[0]["encrypted_content"] == "SIG-2"
    assert sdk_final(events).output[0].encrypted_content == "SIG-2"


def test_a_signature_whole_at_the_start_streams_the_thinking_live():
    batches = run([start(), *thinking(0, at_start="SIG-3"), *tool_use(1), *stop()])

    assert added(batches[1])[0]["encrypted_content"] == "SIG-3"
    assert [e["type"] for e in batches[2]] == ["response.reasoning_summary_text.delta"]
    assert sdk_final(flat(batches)).output[0].encrypted_content == "SIG-3"


def test_redacted_thinking_is_added_with_its_data():
    redacted = [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "redacted_thinking", "data": "DATA-1"},
        },
        {"type": "content_block_stop", "index": 0},
    ]
    events = flat(run([start(), *redacted, *tool_use(1), *stop()]))

    assert added(events)[0]["encrypted_content"] == "DATA-1"
    assert sdk_final(events).output[0].encrypted_content == "DATA-1"


def test_a_stream_ending_inside_a_thinking_block_still_streams_it():
    upstream = [start(), *thinking(0, "SIG-4")[:-1], *stop("max_tokens")]

    events = flat(run(upstream))

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert added(events)[0]["encrypted_content"] == "SIG-4"
    assert events[-1]["type"] == "response.incomplete"
    incomplete = construct_type(type_=Response, value=events[-1]["response"])
    assert incomplete.output[0].summary[0].text == "Hmm."
    assert incomplete.output[0].encrypted_content == "SIG-4"


def test_several_thinking_blocks_each_come_whole_in_their_order():
    upstream = [start(), *thinking(0, "SIG-A", text="One."), *tool_use(1)]
    upstream += [*thinking(2, "SIG-B", text="Two."), *tool_use(3), *stop()]

    events = flat(run(upstream))

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [item.get("encrypted_content") for item in added(events)] == [
        "SIG-A",
        None,
        "SIG-B",
        None,
    ]
    final = sdk_final(events)
    assert [item.type for item in final.output] == [
        "reasoning",
        "function_call",
        "reasoning",
        "function_call",
    ]


def test_a_thinking_held_too_long_streams_live_from_then_on(monkeypatch):
    monkeypatch.setattr(translate_responses, "REASONING_HOLD_S", 5.0)
    now = [0.0]

    def clock() -> float:
        return now[0]

    converter = MessageEventsToResponseEvents(CTX, usage, clock)
    events = converter.feed(start())
    block = thinking(0, "SIG-5")
    events += converter.feed(block[0])
    assert not added(events)  # held
    now[0] = 6.0
    released = converter.feed(block[1])
    # The stream must start: the item is added (its signature unknown yet) with its events.
    assert [e["type"] for e in released] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ]
    assert "encrypted_content" not in released[0]["item"]
    events += released
    for event in [*block[2:], *tool_use(1), *stop()]:
        events += converter.feed(event)

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sdk_final(events).output[0].encrypted_content == "SIG-5"


# A Chat Completions server's reasoning text (vLLM's, DeepSeek's), streamed.
REASONING_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "model": "m",
    "choices": [{"index": 0, "delta": {"reasoning_content": "Thinking."}}],
}


def test_a_chat_completions_servers_reasoning_streams_live():
    # No signature ever comes: nothing to hold.
    converter = ChatChunksToResponseEvents(CTX, usage)
    chunk = REASONING_CHUNK

    events = converter.feed(chunk)

    assert "response.reasoning_summary_text.delta" in [e["type"] for e in events]


def test_a_chat_completions_servers_reasoning_is_not_named_as_thinking():
    # Its id says it was no thinking block: sent back by id alone, it needs nothing found
    # (the gateway looks up `rs_syt` items, for their signature), as the reply not
    # streamed names it.
    converter = ChatChunksToResponseEvents(CTX, usage)
    chunk = REASONING_CHUNK

    events = converter.feed(chunk)
    events += converter.feed({**chunk, "choices": [{"index": 0, "delta": {"content": "4"}}]})

    [added] = [e for e in events if e["type"] == "response.output_item.added"][:1]
    item_id = added["item"]["id"]
    assert item_id.startswith(translate_responses.TRANSLATED_REASONING_PREFIX)
    assert not item_id.startswith("rs_syt")
    whole = translate_responses.chat_completion_to_response(
        {
            "id": "c1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "4", "reasoning_content": "T."},
                    "finish_reason": "stop",
                }
            ],
        },
        CTX,
        usage(),
    )
    assert not whole["output"][0]["id"].startswith("rs_syt")


@pytest.mark.parametrize("signature", ["SIG-6", None])
def test_the_reply_not_streamed_has_the_signature_too(signature):
    block: dict[str, Any] = {"type": "thinking", "thinking": "Hmm."}
    if signature:
        block["signature"] = signature
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [block, {"type": "text", "text": "Cold."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }

    response = translate_responses.message_to_response(message, CTX, usage())

    assert response["output"][0].get("encrypted_content") == signature
