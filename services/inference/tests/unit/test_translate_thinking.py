"""OpenAI reasoning efforts towards an Anthropic deployment (Chat Completions and Responses
requests translated to Messages): the thinking sent upstream stays within the client's
output cap, is left off where Anthropic would refuse it, and what Anthropic refuses with
thinking on is refused before any upstream call, naming the client's parameter."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.inference.translate import chat_request_to_messages
from switchyard.inference.translate_responses import responses_request_to_messages


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}


def responses(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "x", **fields}


# ----------------------------------------------------------------- the client's output cap


@pytest.mark.parametrize(
    ("body", "max_tokens", "budget"),
    [
        (chat(reasoning_effort="high", max_completion_tokens=20000), 20000, 16384),
        (chat(reasoning_effort="high", max_completion_tokens=8000), 8000, 8000 - 1024),
        (chat(reasoning_effort="medium", max_tokens=3000), 3000, 3000 - 1024),
        (chat(reasoning_effort="low", max_completion_tokens=2048), 2048, 1024),
    ],
)
def test_chat_thinking_fits_inside_the_clients_cap(body, max_tokens, budget) -> None:
    sent = chat_request_to_messages(body)
    assert sent["max_tokens"] == max_tokens
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}


@pytest.mark.parametrize(
    ("body", "max_tokens", "budget"),
    [
        (responses(reasoning={"effort": "high"}, max_output_tokens=20000), 20000, 16384),
        (responses(reasoning={"effort": "high"}, max_output_tokens=5000), 5000, 5000 - 1024),
    ],
)
def test_responses_thinking_fits_inside_the_clients_cap(body, max_tokens, budget) -> None:
    sent = responses_request_to_messages(body)
    assert sent["max_tokens"] == max_tokens
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(
            lambda: chat_request_to_messages(
                chat(reasoning_effort="high", max_completion_tokens=1000)
            ),
            id="chat",
        ),
        pytest.param(
            lambda: responses_request_to_messages(
                responses(reasoning={"effort": "high"}, max_output_tokens=2000)
            ),
            id="responses",
        ),
    ],
)
def test_a_cap_too_small_for_thinking_is_kept_and_thinking_left_off(sent) -> None:
    body = sent()
    assert body["max_tokens"] in (1000, 2000)
    assert "thinking" not in body


def test_without_a_cap_max_tokens_is_raised_above_the_budget() -> None:
    sent = chat_request_to_messages(chat(reasoning_effort="high"), default_max_tokens=4096)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert sent["max_tokens"] == 16384 + 4096
    sent = responses_request_to_messages(
        responses(reasoning={"effort": "medium"}), default_max_tokens=4096
    )
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["max_tokens"] == 4096 + 4096
