"""`POST /v1/messages/count_tokens` through the official `anthropic` SDK: published on the
bus like any model request (same credentials, scope and model access check), answered
with `{"input_tokens": N}`, and marked `exact` or `estimate`; bad input in Anthropic's
error format."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ClientAPI,
    TokenUsage,
)

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}", "anthropic-version": "2023-06-01"}
BODY = {"model": "sim-claude", "messages": [{"role": "user", "content": "Hello"}]}


def counted(request, tokens: int, *, estimated: bool) -> ChatCompleted:
    return ChatCompleted(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatCompletedData(
            api=request.data.api,
            response={"input_tokens": tokens},
            provider="fake",
            deployment="fake",
            upstream_api=None if estimated else ClientAPI.ANTHROPIC_COUNT_TOKENS,
            usage=TokenUsage(),
            latency_ms=1,
        ),
    )


def answer_counts(harness, tokens: int, *, estimated: bool) -> None:
    async def respond(request):
        return [counted(request, tokens, estimated=estimated)]

    harness.respond[0] = respond


def sdk(harness) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=harness.app)),
    )


async def test_anthropic_sdk_counts_tokens_through_the_bus(harness):
    answer_counts(harness, 12, estimated=False)
    result = await sdk(harness).messages.with_raw_response.count_tokens(
        model="sim-claude",
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert (await result.parse()).input_tokens == 12
    assert result.headers["x-switchyard-token-count"] == "exact"
    assert result.headers["x-request-id"]
    [published] = harness.requests
    assert published.data.api is ClientAPI.ANTHROPIC_COUNT_TOKENS
    assert published.data.stream is False
    assert published.data.body == {
        "model": "sim-claude",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
    }
    assert "anthropic-version" in published.data.headers


async def test_an_estimated_count_says_so_in_a_header(harness):
    answer_counts(harness, 30, estimated=True)
    response = await harness.client.post("/v1/messages/count_tokens", json=BODY, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 30}
    assert response.headers["x-switchyard-token-count"] == "estimate"


async def test_other_answers_carry_no_token_count_header(harness):
    body = {**BODY, "max_tokens": 5}
    response = await harness.client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 200
    assert "x-switchyard-token-count" not in response.headers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "sim-claude"}, "messages"),
        ({"model": "sim-claude", "messages": []}, "messages"),
        ({"model": "sim-claude", "messages": "hello"}, "messages"),
        # Messages parameters count_tokens does not take: refused whatever the deployment
        # (an Anthropic one refuses them itself; an estimate would ignore them).
        ({**BODY, "max_tokens": 5}, "max_tokens"),
        ({**BODY, "temperature": 0.2}, "temperature"),
        ({**BODY, "stream": True}, "stream"),
        ({**BODY, "model": "sim-small", "stop_sequences": ["x"]}, "stop_sequences"),
    ],
)
async def test_bad_count_requests_get_400_in_anthropics_format(harness, body, param):
    response = await harness.client.post("/v1/messages/count_tokens", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert harness.requests == []


async def test_count_request_that_is_not_json_gets_400_in_anthropics_format(harness):
    response = await harness.client.post(
        "/v1/messages/count_tokens",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_count_for_an_unknown_or_forbidden_model_gets_404(harness):
    with pytest.raises(anthropic.NotFoundError) as raised:
        await sdk(harness).messages.count_tokens(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.body["error"]["type"] == "not_found_error"
    token = harness.auth.token(allowed_models=["sim-small"])
    response = await harness.client.post(
        "/v1/messages/count_tokens",
        json=BODY,
        headers={"authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 404
    assert harness.requests == []


async def test_count_without_credentials_gets_401_in_anthropics_format(harness):
    response = await harness.client.post("/v1/messages/count_tokens", json=BODY)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_count_body_over_the_messages_limit_gets_413(harness):
    big = {**BODY, "system": "x" * (harness.settings.messages_max_body_bytes + 10)}
    response = await harness.client.post("/v1/messages/count_tokens", json=big, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["type"] == "error"
    # The messages limit (not the small default of other routes) applies below it.
    fits = {**BODY, "system": "x" * (harness.settings.max_body_bytes + 10)}
    answer_counts(harness, 1, estimated=True)
    ok = await harness.client.post("/v1/messages/count_tokens", json=fits, headers=AUTH)
    assert ok.status_code == 200


async def test_a_count_reserves_its_prompt_but_no_output_against_a_token_limit(harness):
    """A count generates nothing: a token limit far below the model's output cap (what a
    message without max_tokens reserves) still admits it."""
    from .test_governance import limited_auth

    limited_auth(harness, tpm_limit=200)
    answer_counts(harness, 3, estimated=False)
    count = await harness.client.post("/v1/messages/count_tokens", json=BODY, headers=AUTH)
    message = await harness.client.post(
        "/v1/messages", json={**BODY, "max_tokens": 4096}, headers=AUTH
    )

    assert count.status_code == 200, count.text
    assert message.status_code == 429 and message.json()["error"]["type"] == "rate_limit_error"
