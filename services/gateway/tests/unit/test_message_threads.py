"""Anthropic's message threads (`thread`, which the SDKs' tool runners send by default)
on a model no deployment of which speaks Anthropic's API: refused with the 400 the SDKs
recover from (`error.details.error_code` `thread_unsupported_request`), after which they
send the whole conversation without `thread`. A model with an Anthropic deployment gets
`thread` sent on."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import beta_async_tool

from .conftest import API_KEY, completed_reply, failed_reply
from .test_messages_and_embeddings import anthropic_client

MESSAGE = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    "thread", [{"type": "create"}, {"type": "continue", "previous_message_id": "msg_1"}]
)
async def test_a_thread_on_a_translated_model_is_refused_as_the_sdks_recover_from(harness, thread):
    answer = await harness.client.post(
        "/v1/messages",
        json={"model": "sim-small", **MESSAGE, "thread": thread},
        headers=HEADERS,
    )

    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["details"] == {"error_code": "thread_unsupported_request"}
    assert "thread" in body["error"]["message"]
    assert answer.headers["x-should-retry"] == "false"
    assert harness.requests == []


async def test_a_thread_on_a_model_with_an_anthropic_deployment_is_sent_on(harness):
    answer = await harness.client.post(
        "/v1/messages",
        json={"model": "sim-claude", **MESSAGE, "thread": {"type": "create"}},
        headers=HEADERS,
    )

    assert answer.status_code == 200, answer.text
    [published] = harness.requests
    assert published.data.body["thread"] == {"type": "create"}


async def test_the_sdks_tool_runner_continues_without_a_thread(harness):
    """The SDK's tool runner threads by default; refused, it sends the turn again with the
    whole conversation and no `thread`, and finishes."""
    sent: list = []

    @beta_async_tool
    async def weather(location: str) -> str:
        """The weather at `location`."""
        return "Sunny"

    runner = anthropic_client(harness, sent).beta.messages.tool_runner(
        model="sim-small", tools=[weather], **MESSAGE
    )
    last = await runner.until_done()

    assert last.content[0].text == "hi there"
    threads = [request.read() for request in sent]
    assert b'"thread"' in threads[0]
    assert b'"thread"' not in threads[-1]
    assert len(harness.requests) == 1  # the refused turn never reached inference


async def test_the_refusal_reaches_a_direct_sdk_call_with_its_details(harness):
    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_client(harness).beta.messages.create(
            model="sim-small", thread={"type": "create"}, **MESSAGE
        )
    assert refused.value.body["error"]["details"]["error_code"] == "thread_unsupported_request"


async def test_an_upstreams_thread_refusal_reaches_the_sdk_with_its_details(harness):
    """A real Anthropic deployment's `thread_not_found` (or the simulator's
    `thread_unsupported_request`) is relayed with its `details`, which the SDK recovers
    by; the tool runner then finishes."""
    calls = []

    async def refuse_threads(request):
        calls.append(request.data.body.get("thread"))
        if request.data.body.get("thread") is not None:
            return [
                failed_reply(
                    request,
                    400,
                    "invalid_request_error",
                    "thread: this deployment does not hold message threads",
                    details={"error_code": "thread_unsupported_request"},
                )
            ]
        return [completed_reply(request)]

    harness.respond[0] = refuse_threads

    @beta_async_tool
    async def weather(location: str) -> str:
        """The weather at `location`."""
        return "Sunny"

    runner = anthropic_client(harness).beta.messages.tool_runner(
        model="sim-claude", tools=[weather], **MESSAGE
    )
    await runner.until_done()

    assert calls[0] == {"type": "create"}
    assert calls[-1] is None
