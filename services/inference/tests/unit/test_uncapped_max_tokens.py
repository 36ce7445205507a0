"""The `max_tokens` the translations send an Anthropic-protocol deployment for an OpenAI
client's request without an output cap never exceeds `Deployment.uncapped_max_tokens`,
which the gateway reserves budgets and token limits by: the two must not drift apart."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.routing import THINKING_BUDGET_BY_EFFORT, Deployment
from switchyard.inference.translate import chat_request_to_messages
from switchyard.inference.translate_responses import responses_request_to_messages

EFFORTS = [None, "none", *THINKING_BUDGET_BY_EFFORT]


def claude(**options: Any) -> Deployment:
    return Deployment(
        name="c", provider="anthropic", model="m", base_url="http://127.0.0.1:9", **options
    )


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("default_max_tokens", [None, 512, 64_000])
@pytest.mark.parametrize("thinking_type", [None, "enabled", "adaptive"])
@pytest.mark.parametrize("inference_default", [4096, 1000])
def test_the_translations_send_at_most_what_the_gateway_reserves(
    effort: str | None,
    default_max_tokens: int | None,
    thinking_type: str | None,
    inference_default: int,
) -> None:
    deployment = claude(default_max_tokens=default_max_tokens, thinking_type=thinking_type)
    reserved = deployment.uncapped_max_tokens(effort, inference_default)
    options: dict[str, Any] = {
        "default_max_tokens": deployment.default_max_tokens or inference_default,
        "thinking_type": deployment.thinking_type or "enabled",
    }
    chat: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    responses: dict[str, Any] = {"model": "m", "input": "hi"}
    if effort is not None:
        chat["reasoning_effort"] = effort
        responses["reasoning"] = {"effort": effort}

    sent = [
        chat_request_to_messages(chat, **options)["max_tokens"],
        responses_request_to_messages(responses, **options)["max_tokens"],
    ]

    assert reserved is not None and all(tokens <= reserved for tokens in sent), (sent, reserved)
    # Exactly what is sent, with thinking on as asked: the reservation is not padded.
    assert sent == [reserved, reserved]


def test_no_cap_is_sent_to_openais_protocol() -> None:
    gpt = Deployment(name="g", provider="openai", model="m", base_url="http://127.0.0.1:9/v1")
    assert gpt.uncapped_max_tokens("xhigh") is None
