"""`/v1/messages` (Anthropic shape, through the official `anthropic` SDK) and
`/v1/embeddings`, over the same bus path as chat completions."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ErrorInfo,
    TerminalStatus,
    TokenUsage,
)

from .conftest import API_KEY, chunk, completed_reply


def anthropic_client(harness) -> anthropic.AsyncAnthropic:
    # The anthropic SDK brings its own HTTP client package (httpx2): same ASGI transport.
    transport = httpx2.ASGITransport(app=harness.app)
    return anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def openai_client(harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=0, http_client=harness.client
    )


async def test_messages_round_trip_through_the_anthropic_sdk(harness):
    message = await anthropic_client(harness).messages.create(
        model="sim-small",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].text == "hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2 and message.usage.output_tokens == 2
    [published] = harness.requests
    assert published.data.api == "anthropic"
    # Inside the pipeline every request is OpenAI-shaped; the system prompt is a message.
    assert published.data.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert published.data.body["max_tokens"] == 64


async def test_messages_stream_as_anthropic_events(harness):
    async def streamer(request):
        return [
            chunk(request, 0, "Hel"),
            chunk(request, 1, "lo"),
            completed_reply(request, "Hello"),
        ]

    harness.respond[0] = streamer
    async with anthropic_client(harness).messages.stream(
        model="sim-small", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello"
    assert final.content[0].text == "Hello"
    assert final.usage.output_tokens == 2


@pytest.mark.parametrize(
    ("kwargs", "exception", "status"),
    [
        ({"api_key": "sk-sy-wrong"}, anthropic.AuthenticationError, 401),
        ({"model": "no-such-model"}, anthropic.NotFoundError, 404),
    ],
)
async def test_messages_errors_use_anthropics_format(harness, kwargs, exception, status):
    client = anthropic_client(harness)
    if "api_key" in kwargs:
        client = client.with_options(api_key=kwargs["api_key"])
    with pytest.raises(exception) as caught:
        await client.messages.create(
            model=kwargs.get("model", "sim-small"),
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["message"]


async def test_messages_without_max_tokens_gets_400_in_anthropic_format(harness):
    response = await harness.client.post(
        "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_messages_body_over_the_limit_gets_anthropic_413(harness):
    response = await harness.client.post(
        "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={
            "model": "sim-small",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "x" * 20_000}],
        },
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


async def test_failed_reply_on_messages_keeps_status_in_anthropic_format(harness):
    async def overloaded(request):
        return [
            ChatFailed(
                source="test",
                tenant=request.tenant,
                request_id=request.request_id,
                data=ChatFailedData(
                    status=TerminalStatus.FAILED,
                    error=ErrorInfo(
                        status=429, type="rate_limit_error", message="slow down", retry_after_s=7
                    ),
                ),
            )
        ]

    harness.respond[0] = overloaded
    response = await harness.client.post(
        "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={
            "model": "sim-small",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


async def test_embeddings_go_through_the_bus(harness):
    async def embedder(request):
        response = {
            "object": "list",
            "model": request.data.model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
        return [
            ChatCompleted(
                source="test",
                tenant=request.tenant,
                request_id=request.request_id,
                data=ChatCompletedData(
                    response=response,
                    provider="fake",
                    deployment="fake",
                    usage=TokenUsage(input_tokens=3),
                    latency_ms=1,
                ),
            )
        ]

    harness.respond[0] = embedder
    result = await openai_client(harness).embeddings.create(model="sim-small", input="hello")
    assert result.data[0].embedding == [0.1, 0.2]
    [published] = harness.requests
    assert published.data.operation == "embeddings"
    assert published.data.body["input"] == "hello"


async def test_embeddings_reject_bad_input(harness):
    response = await harness.client.post(
        "/v1/embeddings",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "sim-small", "input": {"not": "valid"}},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("input")


async def test_openai_sdk_streaming_through_the_gateway(harness):
    async def streamer(request):
        return [chunk(request, 0, "a"), chunk(request, 1, "b"), completed_reply(request, "ab")]

    harness.respond[0] = streamer
    stream = await openai_client(harness).chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert "".join([c.choices[0].delta.content async for c in stream]) == "ab"
