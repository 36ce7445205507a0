"""A cached Responses answer shows reasoning items' `encrypted_content` only to a request
that includes `reasoning.encrypted_content`, as OpenAI does, in its JSON and in its
stream; the response history records for the hit keeps it, so the hit's items can be
sent back by id with the thinking's signature."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from switchyard.common.events import ClientAPI, StreamEvent
from switchyard.common.responses import ENCRYPTED_REASONING
from switchyard.gateway.cache import CachedAnswer
from switchyard.gateway.dispatch import sse_event

REASONING = {
    "id": "rs_syt" + "a" * 32,
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "Thinking."}],
    "encrypted_content": "signature-1",
}
MESSAGE = {
    "id": "msg_sy" + "b" * 32,
    "type": "message",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
}
RESPONSE = {"id": "resp_0", "object": "response", "status": "completed"}


def _answer() -> CachedAnswer:
    response = {**RESPONSE, "output": [REASONING, MESSAGE]}
    events = [
        StreamEvent(
            event="response.created",
            data={"type": "response.created", "response": {**RESPONSE, "output": []}},
        ),
        StreamEvent(
            event="response.output_item.added",
            data={"type": "response.output_item.added", "output_index": 0, "item": REASONING},
        ),
        StreamEvent(
            event="response.output_item.done",
            data={"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        ),
        StreamEvent(
            event="response.completed",
            data={"type": "response.completed", "response": response},
        ),
    ]
    now = datetime.now(UTC)
    return CachedAnswer(
        api=ClientAPI.OPENAI_RESPONSES,
        model="sim-claude",
        response=response,
        body=orjson.dumps(response),
        stream=b"".join(sse_event(event) for event in events),
        source_request_id="req-source",
        source_cost_usd=0.0,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("include", "shown"), [(None, False), ([], False), ([ENCRYPTED_REASONING], True)]
)
def test_a_hit_shows_encrypted_content_only_when_included(include, shown):
    body = {"model": "sim-claude", "input": "Hi"}
    if include is not None:
        body["include"] = include

    hit = _answer().as_new_response("req-new", body, datetime.now(UTC))

    assert hit.stream is not None
    assert (b"signature-1" in hit.body) is shown
    assert hit.stream.count(b"signature-1") == (3 if shown else 0)
    # What history records for the hit keeps the signature, under the hit's own ids.
    recorded = hit.response["output"][0]
    assert recorded["encrypted_content"] == "signature-1"
    assert recorded["id"] != REASONING["id"]
    assert orjson.loads(hit.body)["output"][0]["id"] == recorded["id"]
    assert b"Thinking." in hit.body
