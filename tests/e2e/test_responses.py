"""OpenAI's Responses API through every service on real Kafka and PostgreSQL, with the
official `openai` SDK: passed through to a deployment offering it (`sim-small`), and
translated for a Chat-Completions-only deployment (`sim-large`) and an Anthropic one
(`sim-claude`); JSON and streaming; a conversation chained across two requests with
`previous_response_id` (the second request is published right after the first answer,
while history may still be recording it); retrieval, input items and deletion served
from PostgreSQL; a background response; and the 404s of responses not stored.

The simulator's `/_sim/stats` counts the calls per upstream route, which shows which
protocol each request used."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
from sqlalchemy import create_engine, text

from switchyard.common.db import sync_url
from switchyard.common.responses import parse_response_id
from switchyard.common.testing.infra import wait_until
from switchyard.simulator.testing import simulator_at

from .test_protocols import REPLY_PREFIX, UpstreamCalls, openai_client

pytestmark = pytest.mark.e2e

DEPLOYMENTS = [
    ("sim-small", "/v1/responses", "openai.responses"),
    ("sim-large", "/v1/chat/completions", "openai.chat_completions"),
    ("sim-claude", "/v1/messages", "anthropic.messages"),
]
IDS = ["passed-through", "translated-to-chat-completions", "translated-to-messages"]


def words() -> str:
    return f"hello {uuid.uuid4().hex[:8]}"


def stored(system, request_id: str) -> dict:
    """The request's row in history once it is completed."""

    def row():
        engine = create_engine(sync_url(system.database_url))
        try:
            with engine.connect() as connection:
                found = (
                    connection.execute(
                        text(
                            "SELECT status, api, upstream_api, request_body, response,"
                            " input_items FROM history_requests WHERE request_id = :id"
                        ),
                        {"id": request_id},
                    )
                    .mappings()
                    .first()
                )
        finally:
            engine.dispose()
        return dict(found) if found and found["status"] == "completed" else None

    return wait_until(row, timeout=30, message=f"request {request_id} completed in history")


@pytest.mark.parametrize(("model", "route", "upstream_api"), DEPLOYMENTS, ids=IDS)
def test_a_response_as_json(system, model, route, upstream_api):
    prompt = words()
    with UpstreamCalls(system) as calls:
        raw = openai_client(system).responses.with_raw_response.create(
            model=model, input=prompt, instructions="Be brief."
        )
    response = raw.parse()

    assert response.status == "completed"
    assert response.output_text == REPLY_PREFIX + prompt
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert calls.delta == {route: 1}
    row = stored(system, raw.headers["x-request-id"])
    assert (row["api"], row["upstream_api"]) == ("openai.responses", upstream_api)
    assert row["request_body"]["input"] == prompt  # as the client sent it
    assert row["response"]["id"] == response.id
    assert [item["content"][0]["text"] for item in row["input_items"]] == [prompt]


@pytest.mark.parametrize(("model", "route", "upstream_api"), DEPLOYMENTS, ids=IDS)
def test_a_response_streamed(system, model, route, upstream_api):
    prompt = words()
    with UpstreamCalls(system) as calls:
        with openai_client(system).responses.stream(model=model, input=prompt) as stream:
            events = list(stream)
            final = stream.get_final_response()

    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.output_text == REPLY_PREFIX + prompt
    assert calls.delta == {route: 1}
    row = stored(system, parse_response_id(final.id).request_id)
    assert row["response"]["output"][-1]["content"][0]["text"] == REPLY_PREFIX + prompt


@pytest.mark.parametrize(("model", "route", "upstream_api"), DEPLOYMENTS, ids=IDS)
def test_a_conversation_chained_across_two_requests(system, model, route, upstream_api):
    client = openai_client(system)
    first = client.responses.create(model=model, input="My name is Ada.")
    # At once: the first response may still be on its way to history.
    second = client.responses.create(
        model=model, input="What is my name?", previous_response_id=first.id
    )

    assert second.previous_response_id == first.id
    # The upstream got the whole conversation: 4 + 7 + 4 words (the simulator's tokens).
    assert second.usage.input_tokens == 15

    def listed():
        # History records the second response as its events arrive.
        try:
            return client.responses.input_items.list(second.id, order="asc")
        except openai.NotFoundError:
            return None

    items = wait_until(listed, timeout=30)
    assert [item.content[0].text for item in items.data] == [
        "My name is Ada.",
        REPLY_PREFIX + "My name is Ada.",
        "What is my name?",
    ]


COUNTS = [
    ("sim-small", {"/v1/responses/input_tokens": 1}, "openai.responses.input_tokens", "exact"),
    ("sim-large", {}, None, "estimate"),
    ("sim-claude", {"/v1/messages/count_tokens": 1}, "anthropic.count_tokens", "exact"),
]


@pytest.mark.parametrize(("model", "calls_made", "upstream_api", "kind"), COUNTS, ids=IDS)
def test_input_tokens_of_a_chained_request(system, model, calls_made, upstream_api, kind):
    client = openai_client(system)
    first = client.responses.create(model=model, input="My name is Ada.")
    with UpstreamCalls(system) as calls:
        # At once, as in the chaining test: the count reads the same conversation.
        raw = client.responses.input_tokens.with_raw_response.count(
            model=model, input="What is my name?", previous_response_id=first.id
        )
    counted = raw.parse()

    assert counted.object == "response.input_tokens"
    assert raw.headers["x-switchyard-token-count"] == kind
    assert calls.delta == calls_made  # the estimate calls nothing
    if kind == "exact":
        assert counted.input_tokens == 15  # what the continued response reports
    row = stored(system, raw.headers["x-request-id"])
    assert (row["api"], row["upstream_api"]) == ("openai.responses.input_tokens", upstream_api)
    assert row["response"] == {
        "object": "response.input_tokens",
        "input_tokens": counted.input_tokens,
    }
    assert row["input_items"] is None  # a count is not a response: nothing to continue


def test_an_input_token_count_refuses_what_it_does_not_take(system):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(system).responses.input_tokens.count(
            model="sim-small", input="hi", extra_body={"stream": True}
        )
    assert refused.value.body["code"] == "unknown_parameter"
    assert refused.value.body["param"] == "stream"


def test_retrieve_and_delete_from_postgresql(system):
    client = openai_client(system)
    created = client.responses.create(model="sim-claude", input="Remember the milk.")

    def retrieved():
        # History records the request and its outcome as their events arrive: until the
        # outcome is in, the stored response is still in progress.
        try:
            response = client.responses.retrieve(created.id)
        except openai.NotFoundError:
            return None
        return response if response.status == "completed" else None

    assert wait_until(retrieved, timeout=30).output_text == created.output_text
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(created.id)
    assert gone.value.body["code"] == "response_deleted"
    row = stored(system, parse_response_id(created.id).request_id)
    assert row["input_items"] is None and "Remember the milk." not in str(row)


def test_a_stream_failing_midway_keeps_its_items_in_postgresql(system):
    """The upstream fails after a reasoning item was given whole: the stream ends with
    `response.failed` listing it, and the response history stored (through `chat.failed`
    on Kafka) shows the same output."""
    with simulator_at(system.url("simulator")) as simulator:
        simulator.fault(stream_error_after=5, model="sim-small")
    client = openai_client(system)
    events = list(
        client.responses.create(
            model="sim-small",
            input=f"What is the weather in Paris? {words()}",
            tools=[
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"],
                    },
                }
            ],
            reasoning={"effort": "low"},
            stream=True,
        )
    )

    done = [e.item.model_dump() for e in events if e.type == "response.output_item.done"]
    assert [item["type"] for item in done] == ["reasoning"]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert [item.model_dump() for item in failed.response.output] == done

    def retrieved():
        try:
            response = client.responses.retrieve(failed.response.id)
        except openai.NotFoundError:
            return None
        return response if response.status == "failed" else None

    kept = wait_until(retrieved, timeout=30, message="the failed response in history")
    assert [item.model_dump() for item in kept.output] == done
    assert kept.error is not None and kept.error.code == failed.response.error.code


def test_a_background_response_runs_in_the_batch_lane(system):
    client = openai_client(system)
    queued = client.responses.create(model="sim-large", input="In the background", background=True)
    assert queued.status == "queued"

    def completed():
        response = client.responses.retrieve(queued.id)
        return response if response.status == "completed" else None

    done = wait_until(completed, timeout=60, message="the background response")
    assert done.output_text == REPLY_PREFIX + "In the background"


def test_responses_not_stored_cannot_be_continued_saying_why(system):
    client = openai_client(system)
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(
            model="sim-small", input="hi", previous_response_id="resp_00000000" + "0" * 32
        )
    assert unknown.value.body["param"] == "previous_response_id"
    assert unknown.value.body["code"] == "previous_response_not_found"

    unstored = client.responses.create(model="sim-small", input="forget it", store=False)
    with pytest.raises(openai.BadRequestError) as not_stored:
        client.responses.create(model="sim-large", input="and?", previous_response_id=unstored.id)
    assert not_stored.value.body["code"] == "previous_response_not_found"
    assert "store: false" in not_stored.value.message
    with pytest.raises(openai.NotFoundError) as retrieved:
        client.responses.retrieve(unstored.id)
    assert retrieved.value.body["code"] == "response_not_stored"


def test_responses_are_admitted_against_the_keys_rate_limit(system):
    created = system.cli("keys", "create", "--email", system.email, "--rpm-limit", "2", "--json")
    client = openai.OpenAI(
        base_url=system.url("gateway") + "/v1",
        api_key=json.loads(created)["key"],
        max_retries=0,
        timeout=60,
    )
    first = client.responses.with_raw_response.create(model="sim-small", input=words())
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    queued = client.responses.create(model="sim-large", input=words(), background=True)
    assert queued.status == "queued"

    for background in (False, True):
        with pytest.raises(openai.RateLimitError) as refused:
            client.responses.create(model="sim-small", input=words(), background=background)
        assert refused.value.body["code"] == "rate_limit_exceeded"
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(refused.value.response.headers["retry-after"]) >= 1
