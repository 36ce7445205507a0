"""An Anthropic-format error's `details` (`error.details`, e.g. `{"error_code":
"thread_not_found"}`), which Anthropic's SDKs read to recover: an upstream's reaches the
client as sent, credentials redacted and size bounded; the translation to Chat
Completions refuses Anthropic's `thread` (a message thread, which only Anthropic holds)
with the details the SDKs recover from."""

from __future__ import annotations

import pytest

from switchyard.common.events import ChatFailed
from switchyard.common.routing import Deployment
from switchyard.inference.errors import MAX_DETAILS_BYTES, redacted_details
from switchyard.inference.testing import Scripted, chat_request

from .test_client_names import with_body
from .test_fidelity import breaker_threshold, harness  # noqa: F401 - the fixtures


async def test_an_anthropic_upstreams_error_details_reach_the_client(
    harness,  # noqa: F811
    recorder,
) -> None:
    """Anthropic's SDKs recover from some refusals by their `details` (a lost thread:
    `thread_not_found`): relayed as sent, credentials redacted."""
    error = {
        "type": "not_found_error",
        "message": "thread not found",
        "details": {
            "error_code": "thread_not_found",
            "note": "key sk-ant-api03-SECRETSECRETSECRET",
        },
    }
    recorder.script(Scripted(status=404, json={"type": "error", "error": error}))
    request = with_body(
        chat_request(model="claude", api="anthropic.messages"),
        thread={"type": "continue", "previous_message_id": "msg_1"},
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    details = reply.data.error.details
    assert details is not None and details["error_code"] == "thread_not_found"
    assert "SECRET" not in str(details)
    assert recorder.last.body["thread"] == {"type": "continue", "previous_message_id": "msg_1"}


async def test_a_thread_on_an_openai_deployment_is_refused_as_anthropics_sdks_recover_from(
    harness,  # noqa: F811
    recorder,
) -> None:
    request = with_body(
        chat_request(model="gpt", api="anthropic.messages"), thread={"type": "create"}
    )

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    error = reply.data.error
    assert (error.status, error.param) == (400, "thread")
    assert error.details == {"error_code": "thread_unsupported_request"}
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("thread", "param"),
    [
        (False, "thread"),
        ({}, "thread.type"),
        ({"type": "fork"}, "thread.type"),
        ({"type": "create", "previous_message_id": "msg_1"}, "thread.create.previous_message_id"),
        ({"type": "continue"}, "thread.continue.previous_message_id"),
        ({"type": "continue", "previous_message_id": 5}, "thread.continue.previous_message_id"),
    ],
)
async def test_a_malformed_thread_is_refused_as_a_malformed_field_not_as_unsupported(
    harness,  # noqa: F811
    recorder,
    thread,
    param,
) -> None:
    """Anthropic's SDKs drop `thread` and resend on `thread_unsupported_request`; a
    malformed thread is the client's mistake, named, and carries no such details."""
    request = with_body(chat_request(model="gpt", api="anthropic.messages"), thread=thread)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    error = reply.data.error
    assert (error.status, error.param, error.details) == (400, param, None)
    assert error.message.startswith(f"{param}: ")
    assert recorder.requests == []


def test_details_too_large_or_not_an_object_are_not_relayed() -> None:
    assert redacted_details({"error_code": "x" * MAX_DETAILS_BYTES}) is None
    assert redacted_details(["thread_not_found"]) is None
    assert redacted_details({"error_code": "thread_not_found"}) == {
        "error_code": "thread_not_found"
    }


async def test_a_thread_falling_back_to_an_openai_deployment_is_refused_with_the_details(
    recorder, serve
) -> None:
    """A model whose Anthropic deployment fails falls back to an OpenAI one, which cannot
    hold the thread: the client still gets the refusal its SDK recovers from."""
    recorder.script(
        Scripted(
            status=503,
            json={"type": "error", "error": {"type": "api_error", "message": "down"}},
        )
    )
    handler = await serve(
        Deployment(name="claude", provider="anthropic", model="up", base_url=recorder.root),
        Deployment(name="gpt", provider="openai", model="up", base_url=f"{recorder.root}/v1"),
    )
    request = with_body(
        chat_request(model="m", api="anthropic.messages"), thread={"type": "create"}
    )

    reply = await handler.handle(request)

    assert isinstance(reply, ChatFailed), reply
    assert reply.data.error.details == {"error_code": "thread_unsupported_request"}
    assert [recorded.path for recorded in recorder.requests][-1] == "/v1/messages"
