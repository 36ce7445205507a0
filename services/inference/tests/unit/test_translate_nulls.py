"""A null where Anthropic refuses one (`temperature: null`: "temperature: Input should be
a valid number") is refused by the translation for an OpenAI-protocol deployment too, in
the same words: the same body is judged alike on every model."""

from __future__ import annotations

import pytest

from switchyard.common.anthropic_request import AnthropicRequestError, check_messages_request
from switchyard.inference.translate import TranslationError, messages_request_to_chat

BODY = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    "field",
    [
        "temperature",
        "top_p",
        "top_k",
        "output_config",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "stop_sequences",
    ],
)
def test_a_null_anthropic_refuses_is_refused_in_its_words(field):
    body = {**BODY, field: None}
    with pytest.raises(AnthropicRequestError) as anthropic:
        check_messages_request(body)

    with pytest.raises(TranslationError) as translated:
        messages_request_to_chat(body)

    assert str(translated.value) == str(anthropic.value)
    assert str(translated.value).startswith(f"{field}: ")


def test_a_body_without_nulls_is_translated():
    assert messages_request_to_chat({**BODY, "temperature": 0.5})["temperature"] == 0.5
