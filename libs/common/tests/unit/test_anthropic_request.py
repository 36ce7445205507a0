"""`anthropic_request` judges a Messages or count_tokens request as the Anthropic API does:
every content block's fields wherever the block sits (a message, `system`, a tool result, a
document's content), and the rules across fields. Pure functions: no network."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.anthropic_request import (
    AnthropicRequestError,
    check_count_tokens_request,
    check_messages_request,
    check_system_message_placement,
)

USER = {"role": "user", "content": "Hi"}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
ASKED = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
}


def body_with(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 16, "messages": list(messages), **extra}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def answered(*blocks: Any, **fields: Any) -> list[dict[str, Any]]:
    """A conversation whose last turn answers `toolu_1` with a tool result of `blocks`."""
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": list(blocks), **fields}
    return [USER, ASKED, user(result)]


def refusal(body: dict[str, Any]) -> str:
    with pytest.raises(AnthropicRequestError) as refused:
        check_messages_request(body)
    return str(refused.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A source that is not an object, in each place a block with a source can sit.
        (
            body_with(user({"type": "document", "source": "abc"})),
            "messages.0.content.0.document.source: Input should be an object",
        ),
        (
            body_with(user({"type": "image", "source": "abc"})),
            "messages.0.content.0.image.source: Input should be an object",
        ),
        (
            body_with(*answered({"type": "document", "source": "abc"})),
            "messages.2.content.0.tool_result.content.0.document.source: Input should be an object",
        ),
        (
            body_with(USER, system=[{"type": "document", "source": "abc"}]),
            "system.0.type: Input should be 'text'",
        ),
        (
            body_with(
                user(
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [{"type": "image", "source": 5}]},
                    }
                )
            ),
            "messages.0.content.0.document.source.content.content.0.image.source: Input should "
            "be an object",
        ),
        # Fields of the wrong type inside blocks.
        (
            body_with(*answered({"type": "text", "text": "ok"}, is_error="false")),
            "messages.2.content.0.tool_result.is_error: Input should be a valid boolean",
        ),
        (
            body_with(
                USER,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "x"}],
                },
                user({"type": "tool_result", "tool_use_id": "toolu_1"}),
            ),
            "messages.1.content.0.tool_use.input: Input should be an object",
        ),
        (
            body_with(user({"type": "image", "source": {**PNG, "media_type": "image/bmp"}})),
            "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
            "'image/png', 'image/gif' or 'image/webp'",
        ),
        (
            body_with(user({"type": "text", "text": "hi", "cache_control": {"type": "forever"}})),
            "messages.0.content.0.text.cache_control.type: Input should be 'ephemeral'",
        ),
        (
            body_with(user({"type": "thinking", "thinking": "hm"})),
            "messages.0.content.0.thinking.signature: Field required",
        ),
        (
            body_with(user({"type": "sound"})),
            "messages.0.content.0: Input tag 'sound' found using 'type' does not match any of "
            "the expected tags: ",
        ),
        (body_with({"role": "user", "content": 5}), "messages.0.content: Input should be a valid"),
        # Parameters.
        (
            body_with(USER, tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
            "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
        ),
        (body_with(USER, metadata={"user_id": 5}), "metadata.user_id: Input should be a valid"),
        (
            body_with(USER, metadata={"user_id": "u" * 257}),
            "metadata.user_id: String should have at most 256 characters",
        ),
        (
            body_with(USER, thinking={"type": "enabled", "budget_tokens": 2048, "budget": 1}),
            "thinking.enabled.budget: Extra inputs are not permitted",
        ),
        # Rules across fields.
        (
            body_with({"role": "user", "content": ""}),
            "messages.0: all messages must have non-empty content except for the optional "
            "final assistant message",
        ),
        (body_with(user()), "messages.0: all messages must have non-empty content"),
        (body_with(user({"type": "text", "text": ""})), "messages: text content blocks must be"),
        (
            body_with(user({"type": "text", "text": " \n"})),
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            body_with(
                USER, tools=[{"name": "f", "input_schema": {}}, {"name": "f", "input_schema": {}}]
            ),
            "tools: Tool names must be unique.",
        ),
        (body_with(USER, tool_choice={"type": "any"}), "tool_choice: tool_choice may only be"),
        (body_with(USER, tools=[{"name": "f"}]), "tools.0.input_schema: Field required"),
        (
            body_with(
                USER,
                tools=[{"name": "f", "input_schema": {}}],
                tool_choice={"type": "tool", "name": "g"},
            ),
            "tool_choice.name: Tool 'g' not found in provided tools",
        ),
        (
            body_with(
                USER,
                ASKED,
                user({"type": "tool_result", "tool_use_id": "toolu_1"}),
                ASKED,
                user({"type": "tool_result", "tool_use_id": "toolu_1"}),
            ),
            "messages.3.content.0: `tool_use` ids must be unique",
        ),
        (
            body_with(USER, ASKED, USER),
            "messages.2: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_1.",
        ),
        (
            body_with(user({"type": "tool_result", "tool_use_id": "toolu_9"})),
            "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
            "toolu_9.",
        ),
    ],
)
def test_a_request_anthropic_refuses_is_refused_with_its_path_and_sentence(
    body: dict[str, Any], message: str
) -> None:
    assert refusal(body).startswith(message)


@pytest.mark.parametrize(
    "body",
    [
        body_with(USER),
        body_with(*answered({"type": "text", "text": "18C"}, is_error=False)),
        body_with(*answered()),
        body_with(USER, {"role": "assistant", "content": ""}),  # an empty prefill
        body_with(
            user(
                {"type": "image", "source": PNG, "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "d"},
                },
                {"type": "document", "source": {"type": "content", "content": "text"}},
                {
                    "type": "document",
                    "source": {"type": "file", "file_id": "file_1"},
                    "title": None,
                },
                {
                    "type": "search_result",
                    "source": "https://x",
                    "title": "X",
                    "content": [{"type": "text", "text": "found"}],
                },
                {"type": "text", "text": "What are these?", "x_newer_field": 1},
            )
        ),
        body_with(USER, system=[{"type": "text", "text": "Be brief.", "cache_control": None}]),
        body_with(USER, tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        body_with(USER, tool_choice={"type": "auto"}),
        body_with(USER, metadata={"user_id": None}),
        # Values the `anthropic` SDK's types allow.
        body_with(USER, output_config={"effort": "xhigh"}),
        body_with(USER, thinking={"type": "adaptive", "display": None}),
        body_with(*answered({"type": "tool_reference", "tool_name": "f"})),
        body_with(*answered({"type": "browser_state", "tabs": []})),
        body_with(
            user(
                {
                    "type": "search_result",
                    "source": "s",
                    "title": "t",
                    "content": [{"type": "text", "text": "x"}],
                    "citations": None,
                }
            )
        ),
    ],
)
def test_a_request_anthropic_takes_is_taken(body: dict[str, Any]) -> None:
    check_messages_request(body)


def test_count_tokens_takes_no_max_tokens_and_judges_the_same_contents() -> None:
    check_count_tokens_request({"model": "m", "messages": [USER]})
    with pytest.raises(AnthropicRequestError) as refused:
        check_count_tokens_request(
            {"model": "m", "messages": [user({"type": "document", "source": "abc"})]}
        )
    assert refused.value.path == "messages.0.content.0.document.source"
    assert refused.value.reason == "Input should be an object"


SYSTEM = {"role": "system", "content": "Be brief."}
ASSISTANT = {"role": "assistant", "content": "Hello."}


def test_system_messages_are_placed_by_anthropics_rules() -> None:
    """Right after a user message, and last or followed by an assistant message; the
    rules across fields take a system message anywhere (a translation to Chat
    Completions sends it where it is)."""
    for placed in ([USER, SYSTEM], [USER, SYSTEM, ASSISTANT, USER, SYSTEM]):
        check_system_message_placement(body_with(*placed))
    for misplaced, index in (
        ([SYSTEM, USER], 0),
        ([USER, ASSISTANT, SYSTEM, USER], 2),
        ([USER, SYSTEM, USER], 1),
        ([USER, ASSISTANT, SYSTEM], 2),
    ):
        body = body_with(*misplaced)
        check_messages_request(body)
        with pytest.raises(AnthropicRequestError) as refused:
            check_system_message_placement(body)
        assert refused.value.path == f"messages.{index}"
