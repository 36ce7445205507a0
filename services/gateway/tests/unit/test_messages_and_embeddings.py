"""`/v1/messages` (Anthropic's API, through the official `anthropic` SDK) and
`/v1/embeddings`, over the same bus path as chat completions: the body is published in
the client's own API, and the reply relayed as inference sent it."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import orjson
import pytest

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ClientAPI,
    TokenUsage,
)

from .conftest import API_KEY, anthropic_stream, chunk, completed_reply, failed_reply

MESSAGE = {"model": "sim-small", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def anthropic_client(harness, sent: list | None = None) -> anthropic.AsyncAnthropic:
    """The SDK against the gateway app; the HTTP requests it sends are appended to `sent`."""

    async def record(request) -> None:
        if sent is not None:
            sent.append(request)

    # The anthropic SDK brings its own HTTP client package (httpx2): same ASGI transport.
    transport = httpx2.ASGITransport(app=harness.app)
    return anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport, event_hooks={"request": [record]}),
    )


def openai_client(harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=0, http_client=harness.client
    )


async def test_messages_are_published_in_anthropics_api_unchanged(harness):
    sent: list = []
    message = await anthropic_client(harness, sent).messages.create(
        model="sim-small",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].text == "hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2 and message.usage.output_tokens == 2
    [published] = harness.requests
    assert published.data.api == ClientAPI.ANTHROPIC_MESSAGES
    # Not translated: the system prompt stays a top-level field, as the client sent it.
    assert published.data.body == {
        "model": "sim-small",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
    }
    assert published.data.headers == {"anthropic-version": sent[0].headers["anthropic-version"]}
    assert "x-api-key" not in published.data.headers


async def test_messages_stream_relays_anthropics_events(harness):
    async def streamer(request):
        return [*anthropic_stream(request, ["Hel", "lo"]), completed_reply(request, "Hello")]

    harness.respond[0] = streamer
    async with anthropic_client(harness).messages.stream(
        model="sim-small", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello"
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 2
    assert harness.requests[0].data.stream is True


BIG = 123456789012345678901234567890


async def test_integers_beyond_64_bits_in_a_reply_reach_the_client_with_their_digits(harness):
    """orjson cannot write them; the reply (and a stream's events) are the upstream's, so
    their digits reach the client as inference relayed them."""

    async def reply(request):
        message = {
            "id": "msg_big",
            "type": "message",
            "role": "assistant",
            "model": request.data.model,
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"n": BIG}}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 2, "output_tokens": 2},
        }
        if not request.data.stream:
            return [completed_reply(request, response=message)]
        records = anthropic_stream(request, ["x"])
        records[0].data.events[0].data["message"]["a_future_field"] = BIG
        return [*records, completed_reply(request, response=message)]

    harness.respond[0] = reply
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    whole = await harness.client.post("/v1/messages", json=MESSAGE, headers=headers)
    streamed = await harness.client.post(
        "/v1/messages", json={**MESSAGE, "stream": True}, headers=headers
    )

    assert whole.status_code == 200, whole.text
    assert str(BIG) in whole.text and whole.json()["content"][0]["input"]["n"] == BIG
    assert streamed.status_code == 200 and f'"a_future_field":{BIG}' in streamed.text


@pytest.mark.parametrize(
    ("kwargs", "exception", "status", "error_type"),
    [
        ({"api_key": "sk-sy-wrong"}, anthropic.AuthenticationError, 401, "authentication_error"),
        ({"model": "no-such-model"}, anthropic.NotFoundError, 404, "not_found_error"),
    ],
)
async def test_messages_errors_use_anthropics_format(
    harness, kwargs, exception, status, error_type
):
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
    assert body["error"]["type"] == error_type


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({**MESSAGE, "max_tokens": "8"}, "max_tokens"),
        ({**MESSAGE, "max_tokens": True}, "max_tokens"),
        ({"model": "sim-small", "max_tokens": 8}, "messages"),
        ({**MESSAGE, "messages": {"role": "user"}}, "messages"),
        ({**MESSAGE, "model": None}, "model"),
        ({**MESSAGE, "stream": "true"}, "stream"),
    ],
)
async def test_messages_fields_the_gateway_reads_get_400_in_anthropic_format(harness, body, param):
    response = await harness.client.post("/v1/messages", headers={"x-api-key": API_KEY}, json=body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    assert param in payload["error"]["message"]
    assert response.headers["x-request-id"]
    assert not harness.requests


async def test_messages_pass_what_only_the_provider_judges(harness):
    # A system message inside `messages`, document blocks, an unknown content block type
    # and parameters this gateway has never heard of: all for inference and the provider.
    body = {
        **MESSAGE,
        "messages": [
            {"role": "system", "content": "Mid-conversation instructions."},
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
                    {"type": "a_future_block", "payload": {"k": [1, 2]}},
                ],
            },
        ],
        "top_k": 5,
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "output_config": {"effort": "low"},
    }
    response = await harness.client.post("/v1/messages", headers={"x-api-key": API_KEY}, json=body)
    assert response.status_code == 200, response.text
    assert harness.requests[0].data.body == body


async def test_messages_body_over_the_limit_gets_anthropic_413(harness):
    response = await harness.client.post(
        "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={**MESSAGE, "messages": [{"role": "user", "content": "x" * 250_000}]},
    )
    assert response.status_code == 413
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "request_too_large"
    assert response.headers["x-request-id"]


async def test_each_api_has_its_own_body_limit(harness):
    # 100 kB: over the Chat Completions limit of this test's settings, under Messages'.
    content = "x" * 100_000
    chat = await harness.client.post(
        "/v1/chat/completions",
        headers={"x-api-key": API_KEY},
        json={"model": "sim-small", "messages": [{"role": "user", "content": content}]},
    )
    messages = await harness.client.post(
        "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={**MESSAGE, "messages": [{"role": "user", "content": content}]},
    )
    assert chat.status_code == 413
    assert chat.json()["error"]["code"] == "request_too_large"
    assert messages.status_code == 200
    assert len(harness.requests) == 1


async def test_an_upstream_overloaded_error_reaches_the_anthropic_client_as_it_was(harness):
    async def overloaded(request):
        return [failed_reply(request, 529, "overloaded_error", "Overloaded", retry_after_s=3)]

    harness.respond[0] = overloaded
    with pytest.raises(anthropic.APIStatusError) as caught:
        await anthropic_client(harness).messages.create(**MESSAGE)
    assert caught.value.status_code == 529
    request_id = harness.requests[0].request_id
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": request_id,  # as Anthropic's API: the `request-id` header's value
    }
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["x-request-id"] == request_id
    assert caught.value.request_id == request_id


async def test_failed_reply_on_messages_keeps_type_and_param(harness):
    async def refused(request):
        return [
            failed_reply(
                request,
                400,
                "invalid_request_error",
                "logprobs is not supported by this model",
                param="logprobs",
            )
        ]

    harness.respond[0] = refused
    response = await harness.client.post(
        "/v1/messages", headers={"x-api-key": API_KEY}, json=MESSAGE
    )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "logprobs is not supported by this model",
            "param": "logprobs",
        },
        "request_id": response.headers["request-id"],
    }


async def test_embeddings_go_through_the_bus_in_their_own_api(harness):
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
                    api=ClientAPI.OPENAI_EMBEDDINGS,
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
    assert published.data.api == ClientAPI.OPENAI_EMBEDDINGS
    assert published.data.body["input"] == "hello"
    assert published.data.stream is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "sim-small", "input": {"not": "valid"}}, "invalid_type"),
        ({"model": "sim-small", "input": 42}, "invalid_type"),
        ({"model": "sim-small"}, "missing_required_parameter"),
    ],
)
async def test_embeddings_reject_input_of_the_wrong_type(harness, body, code):
    response = await harness.client.post(
        "/v1/embeddings", headers={"Authorization": f"Bearer {API_KEY}"}, json=body
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", code)


async def test_openai_sdk_streaming_through_the_gateway(harness):
    async def streamer(request):
        return [chunk(request, 0, "a"), chunk(request, 1, "b"), completed_reply(request, "ab")]

    harness.respond[0] = streamer
    stream = await openai_client(harness).chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert "".join([c.choices[0].delta.content async for c in stream]) == "ab"


async def test_openai_sdk_request_reaches_inference_as_sent(harness):
    sent: list[bytes] = []

    async def record(request):
        sent.append(request.content)

    harness.client.event_hooks["request"].append(record)
    await openai_client(harness).chat.completions.create(
        model="sim-small",
        messages=[{"role": "user", "content": "x"}],
        stream_options=None,
        logprobs=True,
        extra_body={"vendor_extension": {"a": 1}},
    )
    [published] = harness.requests
    assert published.data.body == orjson.loads(sent[0])
    assert published.data.body["vendor_extension"] == {"a": 1}


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (
            "/v1/messages",
            {**MESSAGE, "max_tokens": None},
            "max_tokens",
            "max_tokens: Field required",
        ),
        (
            "/v1/messages",
            {**MESSAGE, "max_tokens": "8"},
            "max_tokens",
            "max_tokens: Input should be a valid integer",
        ),
        (
            "/v1/messages",
            {**MESSAGE, "messages": "hi"},
            "messages",
            "messages: Input should be a valid list",
        ),
        ("/v1/messages", {**MESSAGE, "model": None}, "model", "model: Field required"),
        (
            "/v1/messages/count_tokens",
            {"model": "sim-small", "messages": []},
            "messages",
            "messages: at least one message is required",
        ),
        (
            "/v1/messages",
            {**MESSAGE, "stream": "yes"},
            "stream",
            "stream: Input should be a valid boolean",
        ),
    ],
)
async def test_an_anthropic_client_is_refused_in_anthropics_words(
    harness, path, body, param, message
):
    sent = {name: value for name, value in body.items() if value is not None}
    response = await harness.client.post(
        path,
        json=sent,
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )

    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert (payload["error"]["message"], payload["error"]["param"]) == (message, param)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("version", [None, " "])
async def test_a_messages_request_without_anthropic_version_is_refused_as_anthropic_does(
    harness, path, version
):
    from .conftest import WITHOUT_ANTHROPIC_VERSION

    headers = {"x-api-key": API_KEY}
    if version is not None:
        headers["anthropic-version"] = version
    response = await harness.client.post(
        path,
        json={**MESSAGE} if path == "/v1/messages" else {"model": "sim-small", "messages": []},
        headers=headers,
        extensions={WITHOUT_ANTHROPIC_VERSION: True},
    )

    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == "anthropic-version: header is required"
    assert body["request_id"] == response.headers["request-id"]
    assert harness.requests == []  # nothing reached the deployment with a version not chosen


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        (["garbage"], "garbage"),
        (["06/01/2023"], "06/01/2023"),
        (["2023-06-01", "2023-06-01"], "2023-06-01, 2023-06-01"),
        (["2023-02-30"], "2023-02-30"),  # no such day
        (["2999-01-01"], "2999-01-01"),  # a day still to come
    ],
)
async def test_a_version_anthropic_does_not_have_is_refused_as_anthropic_refuses_it(
    harness, path, sent, shown
):
    from .conftest import WITHOUT_ANTHROPIC_VERSION

    headers = [("x-api-key", API_KEY), *(("anthropic-version", value) for value in sent)]
    body = {**MESSAGE} if path == "/v1/messages" else {"model": "sim-small", "messages": []}
    response = await harness.client.post(
        path, json=body, headers=headers, extensions={WITHOUT_ANTHROPIC_VERSION: True}
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f'anthropic-version: "{shown}" is not a valid version'
    assert harness.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {API_KEY}", "x-api-key": "sk-sy-" + "w" * 43},
        {"authorization": f"Bearer {API_KEY}", "x-api-key": "not-a-key"},
        {"authorization": "Bearer a.b.c", "x-api-key": API_KEY},
    ],
)
async def test_two_credentials_that_differ_are_refused_whichever_is_good(harness, headers):
    """An `x-api-key` beside a Bearer credential that differs from it is refused, never
    ignored: which one a proxy in front judged is unknown."""
    response = await harness.client.post(
        "/v1/messages", json=MESSAGE, headers={**headers, "anthropic-version": "2023-06-01"}
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "conflicting_credentials")
    assert harness.requests == []


@pytest.mark.parametrize("x_api_key", [f" {API_KEY}", "", " "])
async def test_the_same_credential_in_both_headers_or_an_empty_one_is_taken(harness, x_api_key):
    response = await harness.client.post(
        "/v1/messages/count_tokens",
        json={"model": "sim-small", "messages": MESSAGE["messages"]},
        headers={
            "authorization": f"Bearer {API_KEY}",
            "x-api-key": x_api_key,
            "anthropic-version": "2023-06-01",
        },
    )
    # Taken: past authentication, the count reaches inference (which the harness plays).
    assert response.status_code == 200, response.text
    assert [event.data.api for event in harness.requests] == [ClientAPI.ANTHROPIC_COUNT_TOKENS]
