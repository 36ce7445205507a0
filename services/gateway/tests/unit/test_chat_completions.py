"""The gateway's chat endpoint: authentication, validation, publication, replies, errors."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from switchyard.common.bus import BusUnavailableError, PublishOutcomeUnknownError
from switchyard.common.events import ChatCancelRequested

from .conftest import API_KEY, chunk, completed_reply, failed_reply

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def test_api_key_request_is_published_and_answered(harness):
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hi there"
    [published] = harness.requests
    assert published.tenant == "acme"
    assert published.data.user_id == "user-1"
    assert published.data.api_key_id == "key-1"
    assert published.data.body["messages"] == BODY["messages"]
    assert response.headers["x-request-id"] == published.request_id


async def test_api_key_lookup_is_cached(harness):
    for _ in range(3):
        response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
        assert response.status_code == 200
    assert harness.auth.lookups == 1


async def test_x_api_key_header_is_accepted(harness):
    response = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers={"x-api-key": API_KEY}
    )
    assert response.status_code == 200


async def test_jwt_is_verified_against_jwks(harness):
    token = harness.auth.token()
    response = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    assert harness.requests[0].data.user_id == "user-jwt"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-sy-unknown"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Authorization": "Bearer not-a-token"},
    ],
)
async def test_missing_or_invalid_credentials_get_401(harness, headers):
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)
    error = assert_openai_error(response, 401, "invalid_api_key")
    assert "sk-sy-unknown" not in response.text
    assert error["type"] == "invalid_request_error"
    assert not harness.requests


async def test_expired_and_unsigned_tokens_get_401(harness):
    expired = harness.auth.token(exp=1, iat=0, nbf=0)
    header, payload, _ = harness.auth.token().split(".")
    unsigned = f"{header}.{payload}."
    for token in (
        expired,
        unsigned,
        harness.auth.token(aud="someone-else"),
        harness.auth.token(exp=None),
    ):
        response = await harness.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert_openai_error(response, 401)
    assert not harness.requests


async def test_malformed_json_gets_400(harness):
    response = await harness.client.post(
        "/v1/chat/completions",
        content=b'{"model": "sim-small", ',
        headers={**AUTH, "content-type": "application/json"},
    )
    error = assert_openai_error(response, 400)
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "sim-small"}, "messages", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
        ({"model": "sim-small", "messages": []}, "messages", "empty_array"),
        ({"model": "sim-small", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, "model", "invalid_type"),
        ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model", "invalid_value"),
        ({**BODY, "stream": "yes"}, "stream", "invalid_type"),
        # Inference rewrites `stream_options` (usage is always asked for): the provider
        # never sees a wrong one, so the gateway refuses it as OpenAI's API would.
        ({**BODY, "stream": True, "stream_options": "x"}, "stream_options", "invalid_type"),
        ({**BODY, "stream": True, "stream_options": [1]}, "stream_options", "invalid_type"),
        (
            {**BODY, "stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "invalid_type",
        ),
        (
            {**BODY, "stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "invalid_type",
        ),
        ({**BODY, "stream_options": {"include_usage": True}}, "stream_options", None),
        ({**BODY, "stream": False, "stream_options": {}}, "stream_options", None),
        # A deployment speaking another API drops `metadata`: OpenAI's limits are judged
        # here, for every deployment alike.
        ({**BODY, "metadata": ["x"]}, "metadata", "invalid_type"),
        ({**BODY, "metadata": {"a": 1}}, "metadata.a", "invalid_type"),
        ({**BODY, "metadata": {"a": "x" * 513}}, "metadata.a", "string_above_max_length"),
        (
            {**BODY, "metadata": {str(n): "x" for n in range(17)}},
            "metadata",
            "object_above_max_properties",
        ),
    ],
)
async def test_fields_the_gateway_reads_get_400_naming_the_field(harness, body, param, code):
    response = await harness.client.post("/v1/chat/completions", json=body, headers=AUTH)
    error = assert_openai_error(response, 400, code)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert not harness.requests


async def test_fields_the_gateway_does_not_read_reach_inference_unchanged(harness):
    # Roles, content parts, out-of-range values and parameters newer than this gateway
    # are for the provider to judge: the body is published exactly as it was sent.
    body = {
        "model": "sim-small",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "wizard", "content": "hi", "x-custom": {"nested": [1, 2.5, None]}},
        ],
        "temperature": "hot",
        "logit_bias": {"50256": -100},
        "reasoning_effort": "minimal",
        "a_parameter_from_the_future": {"enabled": True},
    }
    raw = orjson.dumps(body)
    response = await harness.client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    [published] = harness.requests
    assert published.data.body == body
    assert orjson.dumps(published.data.body) == raw
    assert published.data.api == "openai.chat_completions"
    assert published.data.stream is False


async def test_unknown_model_gets_404_model_not_found(harness):
    response = await harness.client.post(
        "/v1/chat/completions", json={**BODY, "model": "no-such-model"}, headers=AUTH
    )
    assert_openai_error(response, 404, "model_not_found")
    assert not harness.requests


async def test_body_over_the_limit_gets_413(harness):
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 60_000}]}
    response = await harness.client.post("/v1/chat/completions", json=big, headers=AUTH)
    assert_openai_error(response, 413, "request_too_large")
    assert not harness.requests


async def test_reply_that_never_comes_gets_504_at_the_deadline(harness):
    async def silent(_request):
        return []

    harness.respond[0] = silent
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert_openai_error(response, 504, "deadline_exceeded")
    assert response.headers["x-request-id"] == harness.requests[0].request_id
    assert 1.5 <= loop.time() - started < 4


async def test_failed_reply_keeps_its_status_type_code_and_param(harness):
    async def rate_limited(request):
        return [
            failed_reply(
                request,
                429,
                "rate_limit_exceeded",
                "slow down",
                code="rate_limited",
                param="model",
                retry_after_s=7,
            )
        ]

    harness.respond[0] = rate_limited
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    error = assert_openai_error(response, 429, "rate_limited")
    assert error == {
        "message": "slow down",
        "type": "rate_limit_exceeded",
        "param": "model",
        "code": "rate_limited",
    }
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-request-id"] == harness.requests[0].request_id


@pytest.mark.parametrize(
    ("wait_s", "header", "header_ms"),
    [
        (2.5, "3", "2500"),
        (1.4, "2", "1400"),
        (0.2, "1", "200"),
        (7, "7", "7000"),
        # Capped at a day, however far off: a wait near a float's range is no 500.
        (1e306, "86400", "86400000"),
    ],
)
async def test_an_upstream_wait_is_rounded_up_and_given_exactly_in_milliseconds(
    harness, wait_s, header, header_ms
):
    # Rounded down (or to even), a client would retry before the upstream's wait is over.
    async def rate_limited(request):
        return [
            failed_reply(request, 429, "rate_limit_exceeded", "slow down", retry_after_s=wait_s)
        ]

    harness.respond[0] = rate_limited
    for path, body, headers in (
        ("/v1/chat/completions", BODY, AUTH),
        (
            "/v1/messages",
            {**BODY, "max_tokens": 5},
            {**AUTH, "anthropic-version": "2023-06-01"},
        ),
    ):
        response = await harness.client.post(path, json=body, headers=headers)
        assert response.status_code == 429
        assert response.headers["retry-after"] == header
        assert response.headers["retry-after-ms"] == header_ms


async def test_bus_unavailable_gets_503_quickly(harness):
    async def refuse(*_args, **_kwargs):
        raise BusUnavailableError("down")

    harness.bus.publish = refuse  # type: ignore[method-assign]
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert_openai_error(response, 503, "bus_unavailable")


async def test_publish_outcome_unknown_waits_for_the_reply_instead_of_refusing(harness):
    # The broker wrote the event but its answer was lost: the request runs, so the client
    # gets its reply, never a 503 for a request that ran.
    publish = harness.bus.publish

    async def written_but_unanswered(topic, event, **kwargs):
        await publish(topic, event, **kwargs)
        if topic.endswith("requests.interactive"):
            raise PublishOutcomeUnknownError("no answer")

    harness.bus.publish = written_but_unanswered  # type: ignore[method-assign]
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert len(harness.requests) == 1

    async with harness.client.stream(
        "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    ) as streamed:
        assert streamed.status_code == 200
        lines = [line async for line in streamed.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"


async def test_publish_outcome_unknown_never_written_is_cancelled_at_the_deadline_not_503(harness):
    # The event never landed: nothing can say so for sure, so the client is told at the
    # deadline that the outcome is unknown (504), not that the request was refused, and a
    # cancellation goes out so that it cannot run if it is written after all.
    publish = harness.bus.publish
    published: list[tuple[str, object]] = []

    refused_once: list[str] = []

    async def unanswered(topic, event, **kwargs):
        if topic.endswith("requests.interactive"):
            raise PublishOutcomeUnknownError("no answer")
        if not refused_once:  # the bus is still away at the deadline: retried
            refused_once.append(topic)
            raise BusUnavailableError("still down")
        published.append((topic, event))
        await publish(topic, event, **kwargs)

    harness.bus.publish = unanswered  # type: ignore[method-assign]
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    error = assert_openai_error(response, 504, "publish_outcome_unknown")
    assert "cancelled" in error["message"]
    assert harness.requests == []
    request_id = response.headers["x-request-id"]
    for _ in range(150):
        if any(isinstance(event, ChatCancelRequested) for _, event in published):
            break
        await asyncio.sleep(0.02)
    cancels = [e for _, e in published if isinstance(e, ChatCancelRequested)]
    assert [c.request_id for c in cancels] == [request_id]
    assert refused_once, "the first attempt to publish the cancellation was refused"


async def test_streaming_relays_chunks_in_order_then_done(harness):
    async def streamer(request):
        # Published out of order and with a duplicate: the client still sees 0, 1, 2 once.
        return [
            chunk(request, 0, "Hel"),
            chunk(request, 1, "lo"),
            chunk(request, 1, "lo"),
            chunk(request, 2, "!"),
            completed_reply(request, "Hello!"),
        ]

    harness.respond[0] = streamer
    async with harness.client.stream(
        "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    contents = [orjson.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines[:-1]]
    assert contents == ["Hel", "lo", "!"]


async def test_too_many_requests_in_flight_get_429(harness):
    harness.settings.max_in_flight = 0
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert_openai_error(response, 429, "gateway_busy")
    assert response.headers["retry-after"] == "1"


async def test_models_lists_routable_models(harness):
    response = await harness.client.get("/v1/models", headers=AUTH)
    assert response.status_code == 200
    ids = [model["id"] for model in response.json()["data"]]
    assert "sim-small" in ids


async def test_unknown_route_uses_the_error_format(harness):
    response = await harness.client.get("/v1/nothing-here", headers=AUTH)
    assert_openai_error(response, 404)


async def test_openapi_documents_the_chat_request_body(harness):
    schema = (await harness.client.get("/openapi.json")).json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert (await harness.client.get("/docs")).status_code == 200


async def test_body_that_is_not_an_object_gets_400(harness):
    response = await harness.client.post(
        "/v1/chat/completions",
        content=b"[1, 2]",
        headers={**AUTH, "content-type": "application/json"},
    )
    error = assert_openai_error(response, 400, "invalid_json")
    assert "JSON object" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b'{"seed": 123456789012345678901234567890, ', "seed"),
        (
            "/v1/messages",
            b'{"max_tokens": 5, "metadata": {"n": [1, -99999999999999999999999]}, ',
            "metadata.n.1",  # Anthropic's notation, in its words
        ),
        (
            "/v1/messages/count_tokens",
            b'{"tools": [{"name": "t", "input_schema": {"maximum": 99999999999999999999}}], ',
            "tools.0.input_schema.maximum",
        ),
        # Just beyond 64 bits, with 19 digits and with 20.
        ("/v1/chat/completions", b'{"seed": -9223372036854775809, ', "seed"),
        ("/v1/chat/completions", b'{"seed": 18446744073709551616, ', "seed"),
        # Beyond a double (orjson refuses to read it), and beyond the 4,300 digits Python
        # turns into an integer: still valid JSON, refused for the same reason.
        ("/v1/responses", b'{"input": "x", "metadata": {"k": ' + b"7" * 400 + b"}, ", "metadata.k"),
        (
            "/v1/messages",
            b'{"max_tokens": 5, "metadata": {"k": ' + b"1" * 5001 + b"}, ",
            "metadata.k",
        ),
        ("/v1/chat/completions", b'{"temperature": 1e999, ', "temperature"),
    ],
)
async def test_an_integer_beyond_64_bits_is_refused_not_sent_on_as_a_float(
    harness, path, body, param
):
    raw = body + b'"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]}'
    response = await harness.client.post(
        path, content=raw, headers={**AUTH, "content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert "64 bits" in error["message"] or "64-bit float" in error["message"]
    assert "not valid JSON" not in error["message"]
    if path.startswith("/v1/messages"):
        assert response.json()["type"] == "error"
        assert error["message"].startswith(f"{param}: "), error["message"]
    else:
        assert error["message"].startswith(f"Invalid value for '{param}': ")
    assert not harness.requests


async def test_long_digit_strings_and_64_bit_integers_pass_unchanged(harness):
    raw = (
        b'{"model": "sim-small", "seed": 18446744073709551615, "x_custom": {"phone": '
        b'"123456789012345678901234567890", "low": -9223372036854775808, "big": 1e25}, '
        b'"messages": [{"role": "user", "content": "Hi"}]}'
    )
    response = await harness.client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "content-type": "application/json"}
    )

    assert response.status_code == 200, response.text
    [published] = harness.requests
    assert published.data.body["seed"] == 18446744073709551615
    assert published.data.body["x_custom"]["phone"] == "123456789012345678901234567890"
    assert published.data.body["x_custom"]["low"] == -9223372036854775808
    assert published.data.body["x_custom"]["big"] == 1e25  # a float as sent: accepted


async def test_a_restarted_upstream_stream_is_never_spliced_into_the_first(harness):
    async def restarted(request):
        first, second = chunk(request, 0, "Hel"), chunk(request, 1, "lo")
        rerun = chunk(request, 2, "Different answer", run="run-2")
        return [first, second, rerun, completed_reply(request, "Hello")]

    harness.respond[0] = restarted
    async with harness.client.stream(
        "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    ) as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert "Different answer" not in "".join(lines)
    assert orjson.loads(lines[-1][6:])["error"]["code"] == "stream_interrupted"
