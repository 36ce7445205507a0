"""An Anthropic client sees one error `type` per HTTP status, whether the error came from
an upstream (of either protocol) or from Switchyard itself: the types of Anthropic's API
reference, "Errors" (400 `invalid_request_error` standing for every 4XX it does not list)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from switchyard.common.errorformat import error_type
from switchyard.common.events import ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError
from switchyard.inference.upstream import map_sdk_error, status_error, stream_error

DEPLOYMENT = Deployment(
    name="up", provider="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0
)

# The status, what an OpenAI-protocol upstream says for it, and the type Anthropic's
# documentation gives that status.
CASES = [
    (409, "conflict_error", "invalid_request_error"),
    (422, "invalid_request_error", "invalid_request_error"),
    (429, "rate_limit_error", "rate_limit_error"),
    (529, "overloaded", "overloaded_error"),
]


def upstream_failure(status: int, upstream_type: str) -> ProviderError:
    """What inference makes of an OpenAI-protocol upstream answering `status`."""
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    body = {"error": {"message": "no", "type": upstream_type, "param": None, "code": None}}
    response = httpx2.Response(status, json=body, request=request)
    exc = openai.APIStatusError("no", response=response, body=body)
    return map_sdk_error(exc, DEPLOYMENT, "openai")


@pytest.mark.parametrize(("status", "upstream_type", "anthropic_type"), CASES)
def test_an_anthropic_client_gets_the_same_type_from_an_upstream_and_from_the_gateway(
    status: int, upstream_type: str, anthropic_type: str
) -> None:
    relayed = upstream_failure(status, upstream_type).to_error_info(ClientAPI.ANTHROPIC_MESSAGES)
    own = ProviderError(status, None, "no").to_error_info(ClientAPI.ANTHROPIC_MESSAGES)

    assert relayed.status == own.status == status
    # The gateway answers its own errors on /v1/messages with `error_type("anthropic", ...)`.
    assert relayed.type == own.type == error_type("anthropic", status) == anthropic_type


def test_a_status_anthropic_does_not_list_is_an_invalid_request_for_a_4xx_only() -> None:
    assert error_type("anthropic", 418) == "invalid_request_error"
    assert error_type("anthropic", 507) == "api_error"
    assert error_type("openai", 418) == "invalid_request_error"


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("invalid_request_error", 400),
        ("request_too_large", 413),
        ("rate_limit_error", 429),
        ("overloaded_error", 529),
        ("timeout_error", 504),
        ("api_error", 500),
        ("made_up_error", 500),
    ],
)
def test_an_anthropic_stream_error_gets_the_status_its_type_stands_for(
    kind: str, status: int
) -> None:
    failure = stream_error(DEPLOYMENT, "anthropic", {"type": kind, "message": "no"})

    assert (failure.status, failure.type) == (status, kind)
    assert failure.retryable is (status >= 500 or status == 429)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("invalid_request_error", 400),
        ("rate_limit_error", 429),
        ("server_error", 500),
        ("timeout_error", 504),
        ("made_up_error", 500),
    ],
)
def test_an_openai_stream_error_gets_the_status_its_type_stands_for(kind: str, status: int) -> None:
    failure = stream_error(DEPLOYMENT, "openai", {"type": kind, "message": "no"})

    assert (failure.status, failure.type) == (status, kind)


@pytest.mark.parametrize("protocol", ["anthropic", "openai"])
@pytest.mark.parametrize(
    ("kind", "status"), [("authentication_error", 401), ("permission_error", 403)]
)
def test_a_stream_refusing_the_credentials_is_the_same_502_as_its_status(
    protocol: str, kind: str, status: int
) -> None:
    """Switchyard's key refused inside a stream is what it is answered with a status:
    nothing the client can fix (not the client's own 401 or 403), no SDK retry, and the
    next deployment is tried."""
    error = {
        "type": kind,
        "message": "no access",
        "details": {"error_code": "some_code", "organization": "org-Secret1"},
    }
    failure = stream_error(DEPLOYMENT, protocol, error)  # type: ignore[arg-type]
    answered = status_error(status, {}, {"error": error}, "", DEPLOYMENT, protocol)  # type: ignore[arg-type]

    for refused in (failure, answered):
        assert (refused.status, refused.code) == (502, "upstream_auth_failed")
        assert refused.should_retry is False
        assert (refused.retryable, refused.retry_same) == (True, False)
        # Anthropic's error code, which its SDKs read; nothing else of the account's.
        assert refused.details == {"error_code": "some_code"}
    assert "in its stream" in failure.message and f"HTTP {status}" in answered.message


@pytest.mark.parametrize(
    "message",
    [
        "Incorrect API key provided: sk-proj-****************************Ab1C.",
        "User: arn:aws:sts::123456789012:assumed-role/prod-llm-gateway/s is not authorized",
        "Permission denied on resource project acme-prod-ml (projects/acme-prod-ml).",
        "You are not a member of organization org-AbCdEf123456 (project proj_Abc123).",
    ],
)
@pytest.mark.parametrize("status", [401, 403])
def test_an_upstreams_refusal_of_the_key_tells_tenants_nothing_of_the_account(
    message: str, status: int
) -> None:
    """Provider accounts are the operator's, shared by tenants: the upstream's words
    (account ids, roles, projects, the end of a masked key) go to the log, not the
    client."""
    refused = status_error(status, {}, {"error": {"message": message}}, "", DEPLOYMENT, "openai")

    assert refused.code == "upstream_auth_failed"
    for secret in ("Ab1C", "123456789012", "prod-llm-gateway", "acme-prod-ml", "org-", "proj_"):
        assert secret not in refused.message


def test_a_responses_stream_refusing_the_key_is_the_same_502() -> None:
    error = {"type": "error", "code": "invalid_api_key", "message": "Incorrect API key"}
    failure = stream_error(DEPLOYMENT, "openai", error)

    assert (failure.status, failure.code, failure.should_retry) == (
        502,
        "upstream_auth_failed",
        False,
    )


def test_a_stream_error_keeps_its_details() -> None:
    """Anthropic's machine-readable part of an error inside a stream reaches the client,
    as it does from an error answered with a status (the SDKs recover by it)."""
    error = {
        "type": "invalid_request_error",
        "message": "user profile gone",
        "details": {"error_code": "user_profile_not_found"},
    }
    failure = stream_error(DEPLOYMENT, "anthropic", error)

    assert failure.status == 400
    assert failure.details == {"error_code": "user_profile_not_found"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # OpenAI's rate-limit errors, as its 429s carry them, sent inside a stream.
        ({"type": "requests", "code": "rate_limit_exceeded"}, 429),
        ({"type": "tokens", "code": "rate_limit_exceeded"}, 429),
        ({"type": "tokens"}, 429),
        ({"type": "insufficient_quota", "code": "insufficient_quota"}, 429),
        ({"type": None, "code": "rate_limit_exceeded"}, 429),
        ({"type": "invalid_request_error", "code": "context_length_exceeded"}, 400),
        ({"code": "made_up_code"}, 500),
    ],
)
def test_an_openai_stream_error_gets_the_status_its_code_stands_for(
    error: dict, status: int
) -> None:
    failure = stream_error(DEPLOYMENT, "openai", {**error, "message": "no"})

    assert failure.status == status
    assert failure.retryable is (status >= 500 or status == 429)
    assert failure.unhealthy is (status >= 500)


def test_openais_format_names_a_bad_key_and_a_server_failure_as_openai_does() -> None:
    assert error_type("openai", 401) == "invalid_request_error"
    assert error_type("openai", 500) == error_type("openai", 507) == "server_error"
    assert error_type("anthropic", 401) == "authentication_error"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # Switchyard's own: every deployment's circuit open.
        (
            ProviderError(503, None, "Every deployment is failing.", code="upstream_unavailable"),
            529,
        ),
        # An OpenAI-protocol upstream's 503.
        (ProviderError(503, "server_error", "down", vendor="openai"), 529),
        # An Anthropic upstream's own 503 is relayed as it was.
        (ProviderError(503, "api_error", "down", vendor="anthropic"), 503),
    ],
)
def test_an_anthropic_client_gets_overloaded_as_anthropic_sends_it(error, status) -> None:
    info = error.to_error_info(ClientAPI.ANTHROPIC_MESSAGES)

    assert info.status == status
    assert info.type == ("overloaded_error" if status == 529 else "api_error")
    assert error.to_error_info(ClientAPI.OPENAI_CHAT_COMPLETIONS).status == 503


def test_a_reply_refused_for_its_depth_is_not_called_too_large() -> None:
    from switchyard.common.bus.base import EventRejectedError, EventTooLargeError
    from switchyard.inference.errors import response_too_large

    deep = response_too_large(EventRejectedError("the event cannot be serialised: Recursion"))
    large = response_too_large(EventTooLargeError("over the topic's max.message.bytes"))

    assert (deep.status, deep.code) == (large.status, large.code) == (502, "response_too_large")
    assert "cannot carry it" in deep.message and "larger" not in deep.message
    assert "larger than Switchyard carries" in large.message


def test_a_failed_response_refusing_the_key_is_the_same_502() -> None:
    from switchyard.inference.adapters import response_failed

    failed = response_failed(
        {"status": "failed", "error": {"code": "invalid_api_key", "message": "Bad key sk-x"}}
    )

    assert (failed.status, failed.code, failed.should_retry) == (
        502,
        "upstream_auth_failed",
        False,
    )
    assert "sk-x" not in failed.message
