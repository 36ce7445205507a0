"""An empty array where OpenAI's Chat Completions takes one of at least one item (`tools`,
an assistant message's `tool_calls`) is refused in OpenAI's words whatever the model: by
the translation for an Anthropic deployment, and by the simulator standing in for OpenAI,
as OpenAI itself answers ("Invalid 'tools': empty array. Expected an array with minimum
length 1, but got an empty array instead.", code `empty_array`)."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.inference.translate import TranslationError, chat_request_to_messages
from switchyard.simulator.parameters import BadRequest, check

USER = {"role": "user", "content": "Hi"}
BODIES: list[tuple[dict[str, Any], str]] = [
    ({"model": "m", "messages": [USER], "tools": []}, "tools"),
    (
        {
            "model": "m",
            "messages": [
                USER,
                {"role": "assistant", "content": "Hello.", "tool_calls": []},
                USER,
            ],
        },
        "messages.[1].tool_calls",
    ),
]


@pytest.mark.parametrize(("body", "param"), BODIES, ids=["tools", "tool_calls"])
def test_the_translation_refuses_it_as_openai_does(body, param):
    with pytest.raises(TranslationError) as refused:
        chat_request_to_messages(body)

    assert refused.value.param == param
    assert refused.value.code == "empty_array"
    assert str(refused.value) == (
        f"Invalid '{param.replace('.[', '[')}': empty array. Expected an array with minimum "
        "length 1, but got an empty array instead."
    )


@pytest.mark.parametrize(("body", "param"), BODIES, ids=["tools", "tool_calls"])
def test_the_simulator_refuses_it_as_openai_does(body, param):
    with pytest.raises(BadRequest) as refused:
        check("/v1/chat/completions", body)
    written = param.replace(".[", "[")
    assert str(refused.value).startswith(f"Invalid '{written}': empty array.")
    assert refused.value.code == "empty_array"
