"""A field the deployment's API lacks is refused only when it asks for something: `null`
(what the official SDKs send for a parameter given as `None`), an empty value where that
means none (`logit_bias: {}`, `mcp_servers: []`) or the API's documented default ask for
nothing, are accepted and are not sent."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.inference.translate import (
    TranslationError,
    chat_request_to_messages,
    messages_request_to_chat,
)
from switchyard.inference.translate_responses import (
    responses_request_to_chat,
    responses_request_to_messages,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": "m", "input": "hi"}

CHAT_UNSET = {
    "seed": None,
    "logit_bias": {},
    "top_logprobs": None,
    "functions": None,
    "function_call": None,
    "audio": None,
    "prediction": None,
    "web_search_options": None,
    "modalities": ["text"],
    "verbosity": "medium",
}
MESSAGES_UNSET = {
    "service_tier": "auto",
    "container": None,
    "mcp_servers": [],
    "inference_geo": None,
}
RESPONSES_UNSET = {
    "prompt": None,
    "conversation": None,
    "context_management": None,
    "seed": None,
}


@pytest.mark.parametrize(("name", "value"), CHAT_UNSET.items())
def test_chat_to_messages_accepts_a_field_without_equivalent_that_asks_for_nothing(
    name: str, value: Any
) -> None:
    translated = chat_request_to_messages({**CHAT, name: value})
    assert name not in translated
    assert translated["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("name", "value"), MESSAGES_UNSET.items())
def test_messages_to_chat_accepts_a_field_without_equivalent_that_asks_for_nothing(
    name: str, value: Any
) -> None:
    translated = messages_request_to_chat({**MESSAGES, name: value})
    assert name not in translated
    assert translated["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("name", "value"), RESPONSES_UNSET.items())
@pytest.mark.parametrize("translate", [responses_request_to_chat, responses_request_to_messages])
def test_responses_translations_accept_a_field_without_equivalent_that_asks_for_nothing(
    translate: Any, name: str, value: Any
) -> None:
    assert name not in translate({**RESPONSES, name: value})


@pytest.mark.parametrize(
    ("translate", "body", "name", "value"),
    [
        (chat_request_to_messages, CHAT, "seed", 7),
        (chat_request_to_messages, CHAT, "logit_bias", {"50256": -100}),
        (chat_request_to_messages, CHAT, "modalities", ["text", "audio"]),
        (chat_request_to_messages, CHAT, "verbosity", "low"),
        (chat_request_to_messages, CHAT, "top_logprobs", 2),
        # An empty object is not always "none": it turns OpenAI's web search on.
        (chat_request_to_messages, CHAT, "web_search_options", {}),
        (messages_request_to_chat, MESSAGES, "service_tier", "standard_only"),
        (messages_request_to_chat, MESSAGES, "top_k", 5),
        (messages_request_to_chat, MESSAGES, "mcp_servers", [{"type": "url", "url": "x"}]),
        (responses_request_to_messages, RESPONSES, "prompt", {"id": "pmpt_1"}),
        (responses_request_to_chat, RESPONSES, "conversation", "conv_1"),
    ],
)
def test_the_same_fields_asking_for_something_are_still_refused_by_name(
    translate: Any, body: dict[str, Any], name: str, value: Any
) -> None:
    with pytest.raises(TranslationError) as caught:
        translate({**body, name: value})
    assert caught.value.param == name
    assert caught.value.code == "unsupported_parameter"
