"""The structured-output schema rules of the two providers (`switchyard.common.output_schema`)
and OpenAI's JSON-mode prompt check."""

from __future__ import annotations

import pytest

from switchyard.common.output_schema import (
    close_objects,
    mentions_json,
    open_object,
    strict_violation,
)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ([{"role": "user", "content": "Answer in JSON."}], True),
        ([{"role": "user", "content": [{"type": "text", "text": "a json object"}]}], True),
        (["Json, please"], True),
        # Image data, names and tool arguments are not the prompt's words.
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,json"}}
                    ],
                }
            ],
            False,
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "json", "arguments": '{"json": 1}'}}],
                },
            ],
            False,
        ),
        ([{"role": "user", "content": "Hi"}], False),
    ],
)
def test_mentions_json_reads_only_the_prompts_text(prompt, expected) -> None:
    assert mentions_json(prompt) is expected


def test_instructions_count_as_the_prompt() -> None:
    assert mentions_json("Hi", "Reply in JSON")
    assert not mentions_json("Hi", None)


def test_close_objects_closes_declared_shapes_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "object"},
            "any": {"allOf": [{"type": "object", "properties": {}}]},
        },
    }

    closed = close_objects(schema)

    assert closed["additionalProperties"] is False
    assert closed["properties"]["free"] == {"type": "object"}
    assert closed["properties"]["any"] == {"allOf": [{"type": "object", "properties": {}}]}
    assert "additionalProperties" not in schema  # the caller's schema is not changed


def test_open_objects_and_strict_violations_are_found_at_any_depth() -> None:
    inner = {"type": "object", "properties": {"a": {"type": "string"}}, "required": []}
    schema = {
        "type": "object",
        "properties": {"list": {"type": "array", "items": inner}},
        "required": ["list"],
        "additionalProperties": False,
    }

    assert open_object(schema) is inner
    assert strict_violation(schema) == (
        "'additionalProperties' is required to be supplied and to be false."
    )
    closed_inner = {**inner, "additionalProperties": False}
    schema["properties"]["list"]["items"] = closed_inner
    assert open_object(schema) is None
    assert "Missing 'a'" in (strict_violation(schema) or "")
