"""An upstream that echoes the key it was sent in its error's `type`, `code` or `param`
(not only its `message`) gets that key to no one: not to the client (in JSON or in a
stream, in any API, from either protocol), not to history (the terminal event), not to the
logs, and not into a Prometheus label, whose values for an upstream's code come from a
bounded set (`other` for a code Switchyard does not know)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import structlog
from prometheus_client import REGISTRY, generate_latest

from switchyard.common.events import ChatFailed, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import RecordingUpstream, Scripted, chat_request

# A key in no provider's format: only the deployment's own secrets can find it.
KEY = "ECHOED-KEY-0123456789abcdef"
CHAT = ClientAPI.OPENAI_CHAT_COMPLETIONS
MESSAGES = ClientAPI.ANTHROPIC_MESSAGES
RESPONSES = ClientAPI.OPENAI_RESPONSES
EMBEDDINGS = ClientAPI.OPENAI_EMBEDDINGS


def echoing_error(kind: str = "invalid_request_error") -> dict[str, Any]:
    """The error object of an upstream echoing its bearer token in every field."""
    return {"message": f"bad {KEY}", "type": f"{kind}_{KEY}", "param": KEY, "code": f"k_{KEY}"}


def openai_deployment(recorder: RecordingUpstream, **options: Any) -> Deployment:
    return Deployment(
        name="echo-openai",
        provider="openai",
        model="upstream-echo",
        base_url=f"{recorder.root}/v1",
        api_key_env="ECHO_TEST_KEY",
        max_retries=0,
        timeout_s=5,
        **options,
    )


def anthropic_deployment(recorder: RecordingUpstream) -> Deployment:
    return Deployment(
        name="echo-anthropic",
        provider="anthropic",
        model="upstream-echo",
        base_url=recorder.root,
        api_key_env="ECHO_TEST_KEY",
        max_retries=0,
        timeout_s=5,
    )


def response_failed() -> tuple[str, dict[str, Any]]:
    error = {"code": f"k_{KEY}", "message": f"bad {KEY}"}
    response = {"id": "resp_1", "object": "response", "status": "failed", "error": error}
    return ("response.failed", {"type": "response.failed", "response": response})


# (name, client API, deployment protocol, streamed, the upstream's reply)
CASES = [
    ("chat 400", CHAT, "openai", False, Scripted(status=400, json={"error": echoing_error()})),
    ("chat 429", CHAT, "openai", False, Scripted(status=429, json={"error": echoing_error()})),
    ("chat 500", CHAT, "openai", False, Scripted(status=500, json={"error": echoing_error()})),
    (
        "chat stream error",
        CHAT,
        "openai",
        True,
        Scripted(events=[(None, {"error": echoing_error("server_error")})]),
    ),
    (
        "embeddings 400",
        EMBEDDINGS,
        "openai",
        False,
        Scripted(status=400, json={"error": echoing_error()}),
    ),
    (
        "responses 400",
        RESPONSES,
        "responses",
        False,
        Scripted(status=400, json={"error": echoing_error()}),
    ),
    ("responses failed", RESPONSES, "responses", True, Scripted(events=[response_failed()])),
    (
        "messages 400",
        MESSAGES,
        "anthropic",
        False,
        Scripted(status=400, json={"type": "error", "error": echoing_error()}),
    ),
    (
        "messages stream error",
        MESSAGES,
        "anthropic",
        True,
        Scripted(events=[("error", {"type": "error", "error": echoing_error("overloaded_error")})]),
    ),
    (
        "chat to anthropic 429",
        CHAT,
        "anthropic",
        False,
        Scripted(status=429, json={"type": "error", "error": echoing_error()}),
    ),
]


@pytest.mark.parametrize(
    ("api", "protocol", "stream", "scripted"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_key_echoed_in_any_error_field_reaches_no_client_log_or_metric(
    recorder, serve, monkeypatch, caplog, api, protocol, stream, scripted
) -> None:
    monkeypatch.setenv("ECHO_TEST_KEY", KEY)
    recorder.script(scripted)
    if protocol == "anthropic":
        deployment = anthropic_deployment(recorder)
    else:
        deployment = openai_deployment(recorder, responses_api=protocol == "responses")
    harness = await serve(deployment)
    request = chat_request("m", api=api, stream=stream)
    caplog.set_level("DEBUG")

    with structlog.testing.capture_logs() as logs:
        reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    assert recorder.last.headers  # the call was made: the error is the upstream's
    relayed = orjson.dumps(reply.model_dump(mode="json")).decode()
    streamed = orjson.dumps(
        [event.model_dump(mode="json") for event in harness.stream_of(request.request_id)]
    ).decode()
    assert KEY not in relayed
    assert KEY not in streamed
    assert KEY not in repr(logs) + caplog.text
    assert KEY not in generate_latest(REGISTRY).decode()
    assert "[redacted]" in relayed  # the rest of what the upstream said is kept


def test_an_upstreams_unknown_code_is_other_in_metrics_and_a_known_one_is_itself() -> None:
    def upstream(code: str | None, kind: str | None = None) -> ProviderError:
        return ProviderError(
            400, "invalid_request_error", "no", code=code, vendor="openai", kind=kind
        )

    assert upstream(f"k_{KEY}").metric_code == "other"
    assert upstream(f"k_{KEY}").code_label == "other"
    assert upstream("context_length_exceeded").metric_code == "context_length_exceeded"
    assert upstream(None, "upstream_error").metric_code == "upstream_error"
    assert upstream(None).code_label == ""
    # Switchyard's own codes are its own, a bounded set already.
    assert ProviderError(504, None, "late", code="upstream_timeout").metric_code == (
        "upstream_timeout"
    )


def test_redact_removes_a_secret_from_every_field_an_upstream_wrote() -> None:
    error = ProviderError(
        400, f"t_{KEY}", f"bad {KEY}", code=f"k_{KEY}", param=KEY, vendor="openai"
    ).redact([KEY])
    assert (error.type, error.message, error.code, error.param) == (
        "t_[redacted]",
        "bad [redacted]",
        "k_[redacted]",
        "[redacted]",
    )
    assert KEY not in str(error)
