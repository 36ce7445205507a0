"""An upstream that answers its API's error object with status 200 (some OpenAI-compatible
servers and proxies do): the client gets a 502 quoting the upstream's message, never "an
invalid reply" that hides it; a reply of another wrong shape stays that."""

from __future__ import annotations

import pytest

from switchyard.common.events import ChatFailed
from switchyard.common.routing import Deployment
from switchyard.inference.testing import Scripted, chat_request


def deployment(recorder, vendor: str) -> Deployment:
    return Deployment(
        name=vendor,
        provider=vendor,
        model="up",
        base_url=f"{recorder.root}/v1" if vendor == "openai" else recorder.root,
        max_retries=0,
    )


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_an_error_answered_with_status_200_is_relayed_not_called_invalid(
    recorder, serve, vendor
):
    """Some servers and proxies answer an error object with status 200: the client gets a
    502 quoting the upstream's message, not "an invalid reply" that hides it."""
    error = {"type": "server_error", "message": "model llama-3 is loading, try again"}
    recorder.script(
        Scripted(json={"error": error} if vendor == "openai" else {"type": "error", "error": error})
    )
    harness = await serve(deployment(recorder, vendor))
    reply = await harness.handle(chat_request("m"))  # translated for the Anthropic one
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 502
    assert "model llama-3 is loading, try again" in reply.data.error.message


async def test_a_reply_of_another_shape_is_still_an_invalid_reply(recorder, serve) -> None:
    recorder.script(Scripted(json={"error": "not an object", "id": "x"}))
    harness = await serve(deployment(recorder, "openai"))
    reply = await harness.handle(chat_request("m"))
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.code == "upstream_invalid_reply"
