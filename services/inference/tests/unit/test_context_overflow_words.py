"""An upstream's error reaches a client of the other API in its own API's words. A rate
limit: OpenAI's code `rate_limit_exceeded`. A request longer than the model's context
window: Anthropic's "prompt is too long: N tokens > M maximum" (which Claude
Code compacts the conversation on), OpenAI's 400 `context_length_exceeded` (which the
`openai` SDK's users and Codex act on). A client of the upstream's own API gets the
upstream's error unchanged, and no other error is reworded."""

from __future__ import annotations

import pytest

from switchyard.common.events import ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.upstream import status_error

OPENAI = Deployment(
    name="up", provider="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0
)
ANTHROPIC = Deployment(
    name="claude", provider="anthropic", model="m", base_url="http://127.0.0.1:9", max_retries=0
)
OPENAI_WORDS = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted "
    "in 130500 tokens. Please reduce the length of the messages."
)
VLLM_WORDS = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4000 in the messages, 1000 in the completion). Please reduce the length."
)


def openai_overflow(message: str = OPENAI_WORDS, code: str | None = "context_length_exceeded"):
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": code,
        }
    }
    return status_error(400, {}, body, "", OPENAI, "openai")


def vllm_overflow(message: str = VLLM_WORDS):
    """vLLM's answer: OpenAI's words, but its own error object (`code` the status)."""
    body = {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    return status_error(400, {}, body, "", OPENAI, "openai")


def anthropic_overflow(message: str = "prompt is too long: 210000 tokens > 200000 maximum"):
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return status_error(400, {}, body, "", ANTHROPIC, "anthropic")


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (OPENAI_WORDS, "prompt is too long: 130500 tokens > 128000 maximum"),
        (VLLM_WORDS, "prompt is too long: 5000 tokens > 4096 maximum"),
        ("Too many tokens.", "prompt is too long: Too many tokens."),
    ],
)
def test_an_openai_overflow_reaches_an_anthropic_client_in_anthropics_words(message, words):
    info = openai_overflow(message).to_error_info(ClientAPI.ANTHROPIC_MESSAGES)

    assert (info.status, info.type, info.message) == (400, "invalid_request_error", words)
    assert info.code is None and info.param is None


def test_vllms_overflow_without_openais_code_is_reworded_too():
    info = vllm_overflow().to_error_info(ClientAPI.ANTHROPIC_MESSAGES)
    assert info.message == "prompt is too long: 5000 tokens > 4096 maximum"


def test_anthropics_overflow_with_max_tokens_reaches_openai_clients_as_one():
    words = (
        "input length and `max_tokens` exceed context limit: 195000 + 8192 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )
    info = anthropic_overflow(words).to_error_info(ClientAPI.OPENAI_CHAT_COMPLETIONS)
    assert info.code == "context_length_exceeded"
    assert info.message.startswith(
        "This model's maximum context length is 200000 tokens. However, your messages "
        "resulted in 203192 tokens."
    )


@pytest.mark.parametrize(
    ("api", "param"),
    [(ClientAPI.OPENAI_CHAT_COMPLETIONS, "messages"), (ClientAPI.OPENAI_RESPONSES, "input")],
)
def test_an_anthropic_overflow_reaches_an_openai_client_as_context_length_exceeded(api, param):
    info = anthropic_overflow().to_error_info(api)

    assert (info.status, info.type, info.code, info.param) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        param,
    )
    assert info.message.startswith(
        "This model's maximum context length is 200000 tokens. However, your messages "
        "resulted in 210000 tokens."
    )
    bare = anthropic_overflow("prompt is too long").to_error_info(api)
    assert bare.code == "context_length_exceeded"
    assert "prompt is too long" in bare.message


def test_a_client_of_the_upstreams_own_api_gets_its_error_unchanged():
    assert openai_overflow().to_error_info(ClientAPI.OPENAI_CHAT_COMPLETIONS).message == (
        OPENAI_WORDS
    )
    words = "prompt is too long: 210000 tokens > 200000 maximum"
    assert anthropic_overflow().to_error_info(ClientAPI.ANTHROPIC_MESSAGES).message == words


def test_other_errors_are_not_reworded():
    other = openai_overflow("Invalid value for 'temperature'.", code="invalid_value")
    info = other.to_error_info(ClientAPI.ANTHROPIC_MESSAGES)
    assert info.message == "Invalid value for 'temperature'."
    assert info.code == "invalid_value"
    quoted = anthropic_overflow("messages.0: the prompt is too long for this tool")
    assert quoted.to_error_info(ClientAPI.OPENAI_CHAT_COMPLETIONS).code is None


def test_an_anthropic_rate_limit_reaches_an_openai_client_with_openais_code():
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}
    failure = status_error(429, {}, body, "", ANTHROPIC, "anthropic")

    for api in (ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.OPENAI_RESPONSES):
        info = failure.to_error_info(api)
        assert (info.status, info.code, info.message) == (429, "rate_limit_exceeded", "Slow down.")
    assert failure.to_error_info(ClientAPI.ANTHROPIC_MESSAGES).code is None
