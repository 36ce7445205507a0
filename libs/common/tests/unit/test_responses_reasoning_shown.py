"""`without_encrypted_reasoning`: a response, or a Responses stream event, as OpenAI shows
it to a request that did not include `reasoning.encrypted_content`."""

from __future__ import annotations

import copy

from switchyard.common.responses import (
    ENCRYPTED_REASONING,
    includes_encrypted_reasoning,
    without_encrypted_reasoning,
)

REASONING = {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "sig"}
MESSAGE = {"id": "msg_1", "type": "message", "content": [], "encrypted_content": "kept"}


def test_only_reasoning_items_lose_it_and_the_input_is_not_changed():
    response = {"id": "resp_1", "output": [REASONING, MESSAGE]}
    before = copy.deepcopy(response)

    shown = without_encrypted_reasoning(response)

    assert response == before
    assert shown["output"] == [{"id": "rs_1", "type": "reasoning", "summary": []}, MESSAGE]
    assert shown["id"] == "resp_1"


def test_stream_events_lose_it_from_their_item_and_their_response():
    added = {"type": "response.output_item.added", "item": REASONING}
    completed = {"type": "response.completed", "response": {"output": [REASONING]}}

    assert "encrypted_content" not in without_encrypted_reasoning(added)["item"]
    assert without_encrypted_reasoning(completed)["response"]["output"] == [
        {"id": "rs_1", "type": "reasoning", "summary": []}
    ]
    assert REASONING["encrypted_content"] == "sig"


def test_data_without_it_is_returned_itself():
    for data in (
        {"type": "response.output_text.delta", "delta": "Hi"},
        {"type": "response.created", "response": {"output": []}},
        {"output": [MESSAGE, {"type": "reasoning", "summary": []}]},
        {"output": "not a list", "item": "not an item"},
    ):
        assert without_encrypted_reasoning(data) is data


def test_include_given_as_a_body_array_or_a_query_value():
    assert includes_encrypted_reasoning([ENCRYPTED_REASONING])
    assert includes_encrypted_reasoning(f"message.output_text.logprobs,{ENCRYPTED_REASONING}")
    assert includes_encrypted_reasoning(f"message.output_text.logprobs, {ENCRYPTED_REASONING}")
    for value in (None, [], ["message.output_text.logprobs"], "", 3, {"a": ENCRYPTED_REASONING}):
        assert not includes_encrypted_reasoning(value)
