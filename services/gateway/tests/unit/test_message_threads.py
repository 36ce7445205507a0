"""Anthropic's message threads (`thread`, which the SDKs' tool runners send by default)
through the gateway: the gateway sends `thread` on as the client sent it, for every
model (inference's translation refuses it for a model that cannot hold threads), and
relays a refusal's `error.details` (`thread_unsupported_request`, `thread_not_found`),
from which the SDKs recover by sending the whole conversation without `thread`."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import beta_async_tool

from .conftest import API_KEY, completed_reply, failed_reply
from .test_messages_and_embeddings import anthropic_client

MESSAGE = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
UNSUPPORTED = {"error_code": "thread_unsupported_request"}


def refusing_threads(calls: list):
    """A fake inference answering a request with `thread` as a deployment that holds no
    threads does (400 with the details), and any other request normally."""

    async def respond(request):
        calls.append(request.data.body.get("thread"))
        if request.data.body.get("thread") is not None:
            return [
                failed_reply(
                    request,
                    400,
                    "invalid_request_error",
                    "'thread' cannot be sent to this model",
                    param="thread",
                    details=UNSUPPORTED,
                )
            ]
        return [completed_reply(request)]

    return respond


@pytest.mark.parametrize("model", ["sim-small", "sim-claude"])
async def test_thread_is_sent_on_as_the_client_sent_it(harness, model):
    answer = await harness.client.post(
        "/v1/messages",
        json={"model": model, **MESSAGE, "thread": {"type": "create"}},
        headers=HEADERS,
    )

    assert answer.status_code == 200, answer.text
    [published] = harness.requests
    assert published.data.body["thread"] == {"type": "create"}


async def test_a_thread_refusal_reaches_the_client_with_its_details(harness):
    harness.respond[0] = refusing_threads([])

    answer = await harness.client.post(
        "/v1/messages",
        json={"model": "sim-small", **MESSAGE, "thread": {"type": "create"}},
        headers=HEADERS,
    )

    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["details"] == UNSUPPORTED
    assert answer.headers["x-should-retry"] == "false"

    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_client(harness).beta.messages.create(
            model="sim-small", thread={"type": "create"}, **MESSAGE
        )
    assert refused.value.body["error"]["details"] == UNSUPPORTED


async def test_details_are_not_added_to_an_openai_format_error(harness):
    harness.respond[0] = refusing_threads([])

    answer = await harness.client.post(
        "/v1/chat/completions",
        json={"model": "sim-small", **MESSAGE, "thread": {"type": "create"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )

    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_sdks_tool_runner_continues_without_a_thread(harness):
    """The SDK's tool runner threads by default; refused, it sends the turn again with the
    whole conversation and no `thread`, and finishes."""
    calls: list = []
    harness.respond[0] = refusing_threads(calls)

    @beta_async_tool
    async def weather(location: str) -> str:
        """The weather at `location`."""
        return "Sunny"

    runner = anthropic_client(harness).beta.messages.tool_runner(
        model="sim-claude", tools=[weather], **MESSAGE
    )
    last = await runner.until_done()

    assert last.content[0].text == "hi there"
    assert calls == [{"type": "create"}, None]
