"""The client's provider headers (`FORWARDED_HEADERS`) reach the upstream byte for byte,
or not at all: a value HTTP cannot carry as sent (a character beyond printable ASCII,
which the client's framework decoded from Latin-1) is refused with a 400 naming the
header, in the client's API format, for every forwarded header and every deployment
alike; Python's own exception text never reaches the client."""

from __future__ import annotations

import pytest

from switchyard.common.events import FORWARDED_HEADERS, ChatFailed, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import RecordingUpstream, Scripted, chat_request
from switchyard.inference.upstream import create_upstream

from .conftest import anthropic_message

CHAT = ClientAPI.OPENAI_CHAT_COMPLETIONS
MESSAGES = ClientAPI.ANTHROPIC_MESSAGES
RESPONSES = ClientAPI.OPENAI_RESPONSES


def deployment(recorder: RecordingUpstream, provider: str, **options: object) -> Deployment:
    root = recorder.root if provider == "anthropic" else f"{recorder.root}/v1"
    return Deployment(
        name=f"up-{provider}",
        provider=provider,
        model="upstream-model",
        base_url=root,
        max_retries=0,
        timeout_s=5,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("header", sorted(FORWARDED_HEADERS))
@pytest.mark.parametrize(
    ("api", "provider", "error_type"),
    [
        (CHAT, "openai", "invalid_request_error"),
        (CHAT, "anthropic", "invalid_request_error"),
        (RESPONSES, "openai", "invalid_request_error"),
        (MESSAGES, "anthropic", "invalid_request_error"),
        (MESSAGES, "openai", "invalid_request_error"),
    ],
)
async def test_a_forwarded_header_beyond_ascii_is_refused_naming_it(
    recorder, serve, header, api, provider, error_type
) -> None:
    recorder.script(Scripted(status=500, json={"error": {"message": "never called"}}))
    options = {"responses_api": True} if api is RESPONSES else {}
    harness = await serve(deployment(recorder, provider, **options))

    reply = await harness.handle(chat_request("m", api=api, headers={header: "beta-\xe9"}))

    assert isinstance(reply, ChatFailed)
    error = reply.data.error
    assert (error.status, error.type, error.param) == (400, error_type, header)
    assert f"'{header}'" in error.message
    assert "codec" not in error.message
    assert not recorder.requests  # nothing went upstream, double-encoded or otherwise


async def test_a_printable_ascii_header_still_goes_upstream(recorder, serve) -> None:
    recorder.script(Scripted(json={"id": "x", "choices": [], "usage": None}))
    harness = await serve(deployment(recorder, "openai"))

    await harness.handle(chat_request("m", headers={"openai-beta": "assistants=v2"}))

    assert recorder.last.headers["openai-beta"] == "assistants=v2"


@pytest.mark.parametrize("refusal", [ValueError, TypeError])
def test_an_sdk_refusing_the_arguments_never_shows_its_exception_text(recorder, refusal) -> None:
    upstream = create_upstream(deployment(recorder, "openai"))
    failure = upstream._failure(refusal("'ascii' codec can't encode character '\\xe9'"))  # type: ignore[attr-defined]
    assert isinstance(failure, ProviderError)
    assert failure.status == 400
    assert "codec" not in failure.message


@pytest.mark.parametrize("api", [CHAT, RESPONSES, ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS])
async def test_a_client_of_another_api_reaches_an_anthropic_deployment_with_its_betas(
    recorder, serve, api
) -> None:
    """A Chat Completions or Responses client may ask an Anthropic model for a beta (a
    longer context window): the translated request carries it, and only it (the version is
    the upstream client's, for the body the translation builds; `openai-beta` is not
    Anthropic's)."""
    native = anthropic_message(model="upstream-model")
    counting = api is ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS
    recorder.script(Scripted(json={"input_tokens": 10} if counting else native))
    harness = await serve(deployment(recorder, "anthropic"))
    headers = {
        "anthropic-beta": "context-1m-2025-08-07",
        "anthropic-version": "1999-01-01",
        "openai-beta": "assistants=v2",
    }
    body = {"model": "m", "input": "Hello"} if api is not CHAT else None

    reply = await harness.handle(chat_request("m", api=api, body=body, headers=headers))

    assert not isinstance(reply, ChatFailed), reply
    sent = recorder.last.headers
    assert sent["anthropic-beta"] == "context-1m-2025-08-07"
    assert sent["anthropic-version"] != "1999-01-01" and "openai-beta" not in sent
