"""OpenAI reasoning efforts towards an Anthropic deployment (Chat Completions and Responses
requests translated to Messages): the thinking sent upstream stays within the client's
output cap, is left off where Anthropic would refuse it, and what Anthropic refuses with
thinking on is refused before any upstream call, naming the client's parameter."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.inference.translate import (
    TranslationError,
    chat_request_to_messages,
    messages_request_to_chat,
)
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


# ----------------------------------------------------------------- a tool loop in progress

CHAT_TOOL_LOOP = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
]


def test_a_chat_tool_loop_continues_without_thinking() -> None:
    # A Chat Completions client never gets the thinking block the tool call came with, and
    # Anthropic refuses thinking for a turn whose first message does not open with it.
    sent = chat_request_to_messages(
        {"model": "m", "messages": CHAT_TOOL_LOOP, "reasoning_effort": "high"}
    )
    assert "thinking" not in sent
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"


def test_a_chat_prefill_is_sent_without_thinking() -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure:"}]
    sent = chat_request_to_messages({"model": "m", "messages": messages, "reasoning_effort": "low"})
    assert "thinking" not in sent


def test_a_new_user_message_after_a_tool_loop_thinks_again() -> None:
    messages = [
        *CHAT_TOOL_LOOP,
        {"role": "assistant", "content": "It is 18C."},
        {"role": "user", "content": "And in Oslo?"},
    ]
    sent = chat_request_to_messages({"model": "m", "messages": messages, "reasoning_effort": "low"})
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def responses_tool_loop(reasoning: dict[str, Any] | None) -> list[dict[str, Any]]:
    call = {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking."}],
        },
    ]
    if reasoning is not None:
        items.append(reasoning)
    return [*items, call, {"type": "function_call_output", "call_id": "call_1", "output": "18C"}]


def test_a_responses_tool_loop_with_the_signed_reasoning_keeps_thinking_first() -> None:
    reasoning = {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Look it up."}],
        "encrypted_content": "SIG-1",
    }
    sent = responses_request_to_messages(
        responses(input=responses_tool_loop(reasoning), reasoning={"effort": "medium"})
    )
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert [block["type"] for block in sent["messages"][1]["content"]] == [
        "thinking",
        "text",
        "tool_use",
    ]
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Look it up.",
        "signature": "SIG-1",
    }


def test_a_responses_tool_loop_without_reasoning_continues_without_thinking() -> None:
    sent = responses_request_to_messages(
        responses(input=responses_tool_loop(None), reasoning={"effort": "medium"})
    )
    assert "thinking" not in sent
    assert sent["messages"][1]["content"][0]["type"] == "text"


# ----------------------------------------------------- what Anthropic refuses with thinking

TOOLS_CHAT = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
TOOLS_RESPONSES = [{"type": "function", "name": "get_weather", "parameters": {}}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS_CHAT, "tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": TOOLS_CHAT,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            "tool_choice",
        ),
        ({"temperature": 0.2}, "temperature"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
    ],
)
def test_chat_thinking_with_what_anthropic_refuses_beside_it_is_refused(fields, param) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(chat(reasoning_effort="medium", **fields))
    assert caught.value.param == param
    assert caught.value.code == "unsupported_parameter"
    assert "reasoning_effort" in caught.value.message
    # Without reasoning the same request is translated.
    assert chat_request_to_messages(chat(**fields))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS_RESPONSES, "tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS_RESPONSES, "tool_choice": {"type": "function", "name": "get_weather"}},
            "tool_choice",
        ),
        ({"temperature": 0.7}, "temperature"),
        ({"top_p": 0.9}, "top_p"),
    ],
)
def test_responses_thinking_with_what_anthropic_refuses_beside_it_is_refused(fields, param) -> None:
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages(responses(reasoning={"effort": "low"}, **fields))
    assert caught.value.param == param
    assert "reasoning.effort" in caught.value.message


def test_what_anthropic_allows_beside_thinking_is_sent() -> None:
    sent = chat_request_to_messages(
        chat(
            reasoning_effort="low",
            temperature=1,
            top_p=0.95,
            tools=TOOLS_CHAT,
            tool_choice="auto",
        )
    )
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    # `temperature` 1 is the default, left out beside a `top_p` (`add_anthropic_sampling`).
    assert "temperature" not in sent
    assert (sent["top_p"], sent["tool_choice"]) == (0.95, {"type": "auto"})


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "tool_choice"),
        ({"temperature": 0.5}, "temperature"),
        ({"top_p": 0.8}, "top_p"),
    ],
)
def test_an_anthropic_client_gets_anthropics_refusal_of_thinking_beside_them(fields, path) -> None:
    body = {
        "model": "m",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        **fields,
    }
    assert messages_request_to_chat(body)  # without thinking it is translated
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat({**body, "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert caught.value.param == path
    assert caught.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("effort", "anthropic_effort"),
    [
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("xhigh", "xhigh"),
    ],
)
def test_adaptive_thinking_carries_the_effort_as_anthropics(effort, anthropic_effort) -> None:
    via_chat = chat_request_to_messages(
        chat(reasoning_effort=effort, max_tokens=300), thinking_type="adaptive"
    )
    via_responses = responses_request_to_messages(
        responses(reasoning={"effort": effort}, max_output_tokens=300), thinking_type="adaptive"
    )
    for sent in (via_chat, via_responses):
        assert sent["thinking"] == {"type": "adaptive"}
        assert sent["output_config"] == {"effort": anthropic_effort}
        # The model decides within the client's cap: no budget to fit, none left out.
        assert sent["max_tokens"] == 300


def test_adaptive_thinking_keeps_the_rules_of_thinking() -> None:
    assert "thinking" not in chat_request_to_messages(
        chat(reasoning_effort="none"), thinking_type="adaptive"
    )
    forced = chat(
        reasoning_effort="high",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="required",
    )
    with pytest.raises(TranslationError) as refused:
        chat_request_to_messages(forced, thinking_type="adaptive")
    assert refused.value.param == "tool_choice"
    # A turn in progress not opening with thinking goes without (Anthropic refuses it).
    prefill = chat(reasoning_effort="high")
    prefill["messages"].append({"role": "assistant", "content": "Sure,"})
    assert "thinking" not in chat_request_to_messages(prefill, thinking_type="adaptive")
