"""An upstream's refusal of a translated request names the client's own fields: a
Messages client capped with `max_tokens` is told about `max_tokens`, not the
`max_completion_tokens` its request became; a `param` naming a field the translation
made (and the client never sent) is dropped."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.events import ChatFailed, ClientAPI
from switchyard.inference.client_names import in_client_terms
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import Scripted, chat_request

from .test_fidelity import breaker_threshold, harness  # noqa: F401 - the fixtures

RESPONSES = "openai.responses"


def openai_refusal(param: str, message: str) -> Scripted:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return Scripted(status=400, json={"error": error})


def anthropic_refusal(message: str) -> Scripted:
    error = {"type": "invalid_request_error", "message": message}
    return Scripted(status=400, json={"type": "error", "error": error})


def with_body(request, **fields: Any):
    body = {**request.data.body, **fields}
    return request.model_copy(update={"data": request.data.model_copy(update={"body": body})})


@pytest.mark.parametrize(
    ("model", "api", "fields", "scripted", "param", "words", "not_words"),
    [
        (
            "gpt",
            "anthropic.messages",
            {"max_tokens": 10_000_000},
            openai_refusal(
                "max_completion_tokens",
                "max_completion_tokens is too large: 10000000. This model supports at most "
                "16384 completion tokens.",
            ),
            "max_tokens",
            "max_tokens is too large",
            "max_completion_tokens",
        ),
        (
            "gpt",
            RESPONSES,
            {"max_output_tokens": 10_000_000},
            openai_refusal("max_completion_tokens", "Invalid 'max_completion_tokens': too large."),
            "max_output_tokens",
            "Invalid 'max_output_tokens'",
            "max_completion_tokens",
        ),
        (
            "gpt",
            RESPONSES,
            {},
            openai_refusal("messages[1].content", "Invalid 'messages[1].content': empty."),
            None,  # messages are not the client's input items one for one
            "Invalid 'messages[1].content': empty.",
            "input",
        ),
        (
            "claude",
            "openai.chat_completions",
            {"max_completion_tokens": 10_000_000},
            anthropic_refusal("max_tokens: 10000000 > 64000, the most for this model"),
            None,
            "max_completion_tokens: 10000000 > 64000",
            "max_tokens:",
        ),
        (
            "claude",
            "openai.chat_completions",
            {"max_tokens": 10_000_000},
            anthropic_refusal("max_tokens: 10000000 > 64000, the most for this model"),
            None,
            "max_tokens: 10000000 > 64000",
            "max_completion_tokens",
        ),
        (
            "gpt",
            "anthropic.messages",
            {},
            openai_refusal("messages[0].role", "Invalid 'messages[0].role'."),
            None,
            "messages[0].role",
            "max_completion_tokens",
        ),
    ],
    ids=[
        "messages-to-chat",
        "responses-to-chat",
        "responses-to-chat-messages",
        "chat-max-completion-tokens-to-messages",
        "chat-max-tokens-to-messages",
        "param-the-client-never-sent",
    ],
)
async def test_a_translated_requests_refusal_names_the_clients_fields(
    harness,  # noqa: F811
    recorder,
    model,
    api,
    fields,
    scripted,
    param,
    words,
    not_words,
) -> None:
    recorder.script(scripted)
    body = {"model": model, "input": "hi"} if api == RESPONSES else None
    request = with_body(chat_request(model=model, api=api, body=body), **fields)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    error = reply.data.error
    assert error.status == 400
    assert words in error.message
    assert not_words not in error.message
    assert error.param == param
    assert len(recorder.requests) == 1


def test_a_param_below_a_renamed_field_keeps_its_path() -> None:
    error = ProviderError(
        400,
        "invalid_request_error",
        "Invalid 'response_format.json_schema.schema'.",
        param="response_format.json_schema.schema",
        vendor="openai",
    )
    in_client_terms(
        error, ClientAPI.OPENAI_RESPONSES, ClientAPI.OPENAI_CHAT_COMPLETIONS, {"input": "x"}
    )
    assert error.param == "text.format.json_schema.schema"
    assert error.message == "Invalid 'text.format.json_schema.schema'."
    assert str(error) == error.message


def test_a_messages_clients_effort_is_named_as_it_sent_it() -> None:
    body = {"output_config": {"effort": "max"}, "thinking": {"type": "adaptive"}}
    error = ProviderError(
        400,
        "invalid_request_error",
        "Unsupported value: 'reasoning_effort' xhigh.",
        param="reasoning_effort",
        vendor="openai",
    )
    in_client_terms(error, ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.OPENAI_CHAT_COMPLETIONS, body)
    assert error.message == "Unsupported value: 'output_config.effort' xhigh."
