"""OpenAI <-> Anthropic translation: requests, responses and streams, checked against the
official SDKs' own types and stream accumulators (what a client of either SDK sees)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from switchyard.common.anthropic_request import (
    check_messages_request,
    check_system_message_placement,
)
from switchyard.inference.translate import (
    ChatChunksToMessageEvents,
    CompletionAccumulator,
    MessageAccumulator,
    MessageEventsToChatChunks,
    TranslationError,
    anthropic_tool_id,
    chat_completion_to_message,
    chat_request_to_messages,
    chat_usage_from_messages,
    image_media_type,
    message_to_chat_completion,
    messages_request_to_chat,
    messages_usage_from_chat,
)
from switchyard.inference.translate_responses import (
    responses_request_to_chat,
    responses_request_to_messages,
)
from switchyard.simulator import parameters as openai_rules

from .conftest import anthropic_message

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from anthropic.lib.streaming._messages import accumulate_event  # noqa: E402
from openai.lib.streaming.chat import ChatCompletionStreamState  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
}
# What OpenAI's strict mode takes: every object closed, every property required.
STRICT_WEATHER_SCHEMA = {**WEATHER_SCHEMA, "additionalProperties": False}
USER = [{"role": "user", "content": "x"}]
# An assistant turn calling tool `t1`, which a tool result in the next turn answers.
ASKED_T1 = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
}
STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)


# =========================================================================== requests


def test_anthropic_request_maps_system_sampling_stop_and_user() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "messages": [{"role": "user", "content": "Hi"}],
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"user_id": "u-42"},
        "stream": True,
    }

    result = messages_request_to_chat(body)

    assert result == {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "Hi"},
        ],
        "max_completion_tokens": 300,
        "stop": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "u-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_anthropic_string_system_and_images() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": "You are terse.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/cat.jpg"}},
                ],
            }
        ],
    }

    messages = messages_request_to_chat(body)["messages"]

    assert messages == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}},
            ],
        },
    ]


def test_anthropic_tool_use_and_results_become_tool_calls_and_tool_messages() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "tools": [
            {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"location": "Lyon"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "boom"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    }

    result = messages_request_to_chat(body)

    assert result["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_SCHEMA,
                "description": "Weather now",
            },
        }
    ]
    assert result["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert result["parallel_tool_calls"] is False
    assert result["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    # The result is a valid request for the OpenAI SDK's types.
    TypeAdapter(list[openai.types.chat.ChatCompletionMessageParam]).validate_python(
        result["messages"]
    )


@pytest.mark.parametrize(
    ("anthropic_choice", "openai_choice"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice_maps_both_ways(anthropic_choice, openai_choice) -> None:
    tools_a = [{"name": "f", "input_schema": {"type": "object"}}]
    tools_o = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "x"}]

    to_openai = messages_request_to_chat(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": messages,
            "tools": tools_a,
            "tool_choice": anthropic_choice,
        }
    )
    to_anthropic = chat_request_to_messages(
        {"model": "m", "messages": messages, "tools": tools_o, "tool_choice": openai_choice}
    )

    assert to_openai["tool_choice"] == openai_choice
    assert to_anthropic["tool_choice"] == anthropic_choice


def test_server_tools_and_unknown_blocks_are_refused_with_the_field() -> None:
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat(
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            }
        )
    assert caught.value.param == "tools.0"
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat(
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "container_upload"}]}],
            }
        )
    assert caught.value.param == "messages.0.content.0"


TOOL = {"name": "get_weather", "input_schema": WEATHER_SCHEMA}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_examples", [{"location": "Paris"}]),
        ("allowed_callers", ["code_execution_20250825"]),
        ("defer_loading", True),
        ("some_future_option", 1),
    ],
)
def test_tool_options_chat_completions_cannot_carry_are_refused_by_name(field, value) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat({**body, "tools": [{**TOOL, field: value}]})
    assert caught.value.param == f"tools.0.{field}"
    assert caught.value.code == "unsupported_parameter"


def test_a_server_tool_with_options_is_refused_as_a_server_tool() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat({**body, "tools": [tool]})
    assert caught.value.param == "tools.0"
    assert "server tools" in str(caught.value)


def test_tool_options_that_ask_for_nothing_are_translated() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    tool = {
        **TOOL,
        "type": "custom",
        "cache_control": {"type": "ephemeral"},
        "eager_input_streaming": True,
        "defer_loading": False,
        "input_examples": [],
        "allowed_callers": ["direct"],
    }
    translated = messages_request_to_chat({**body, "tools": [tool]})
    assert translated["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
    ]


def test_function_options_anthropic_tools_cannot_carry_are_refused_by_name() -> None:
    function = {"name": "get_weather", "parameters": WEATHER_SCHEMA, "defer_loading": True}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages({**body, "tools": [{"type": "function", "function": function}]})
    assert caught.value.param == "tools.[0].function.defer_loading"  # OpenAI's notation
    # Options at the values that ask for nothing (null, OpenAI's defaults): translated.
    for asks_nothing in (
        {"defer_loading": None},
        {"defer_loading": False, "allowed_callers": ["direct"], "output_schema": None},
    ):
        function = {"name": "get_weather", "parameters": WEATHER_SCHEMA, **asks_nothing}
        translated = chat_request_to_messages(
            {**body, "tools": [{"type": "function", "function": function}]}
        )
        assert translated["tools"] == [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]


def test_a_document_asking_for_citations_is_refused_not_stripped() -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
    }
    body = {"model": "m", "max_tokens": 5}
    content = [{**document, "citations": {"enabled": True}}, {"type": "text", "text": "Colour?"}]
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat({**body, "messages": [{"role": "user", "content": content}]})
    assert caught.value.param == "messages.0.content.0.citations"
    assert caught.value.code == "unsupported_parameter"
    # Not asking for them is translated as before.
    content[0] = {**document, "citations": {"enabled": False}}
    translated = messages_request_to_chat(
        {**body, "messages": [{"role": "user", "content": content}]}
    )
    assert "The grass is green." in json.dumps(translated["messages"])


def test_openai_request_hoists_system_merges_turns_and_defaults_max_tokens() -> None:
    body = {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Rule one."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Are you there?"}]},
            {"role": "assistant", "content": ""},  # empty turns are dropped
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "stop": "END",
        "temperature": 0.7,
        "top_p": 0.5,
        "user": "u-9",
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    result = chat_request_to_messages(body)

    assert result == {
        "model": "gpt-x",
        "system": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello"},
                    {"type": "text", "text": "Are you there?"},
                ],
            },
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "max_tokens": 4096,
        "stop_sequences": ["END"],
        "temperature": 0.7,
        "top_p": 0.5,
        "metadata": {"user_id": "u-9"},
        "stream": True,
    }


def test_openai_token_limits_become_max_tokens_and_both_at_once_are_refused() -> None:
    messages = [{"role": "user", "content": "x"}]
    assert (
        chat_request_to_messages({"model": "m", "messages": messages, "max_completion_tokens": 9})[
            "max_tokens"
        ]
        == 9
    )
    with pytest.raises(TranslationError) as refused:
        chat_request_to_messages(
            {"model": "m", "messages": messages, "max_tokens": 5, "max_completion_tokens": 9}
        )
    assert (refused.value.param, refused.value.code) == (
        "max_tokens",
        "invalid_parameter_combination",
    )
    assert (
        chat_request_to_messages({"model": "m", "messages": messages, "max_tokens": 5})[
            "max_tokens"
        ]
        == 5
    )
    assert (
        chat_request_to_messages({"model": "m", "messages": messages}, default_max_tokens=77)[
            "max_tokens"
        ]
        == 77
    )


def test_openai_tool_calls_and_results_become_tool_use_and_tool_result_blocks() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "21C"}],
            },
            {"role": "user", "content": "Thanks, which is warmer?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather now",
                    "parameters": STRICT_WEATHER_SCHEMA,
                    "strict": True,
                },
            }
        ],
        "parallel_tool_calls": False,
    }

    result = chat_request_to_messages(body)

    assert result["tools"] == [
        {
            "name": "get_weather",
            "input_schema": STRICT_WEATHER_SCHEMA,
            "description": "Weather now",
            "strict": True,
        }
    ]
    assert result["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert result["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"location": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "Thanks, which is warmer?"},
            ],
        },
    ]
    # A valid request for the Anthropic SDK's types.
    TypeAdapter(list[anthropic.types.MessageParam]).validate_python(result["messages"])
    TypeAdapter(list[anthropic.types.ToolParam]).validate_python(result["tools"])


def test_openai_images_become_base64_or_url_sources() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/dog.png", "detail": "low"},
                    },
                ],
            }
        ],
    }

    blocks = chat_request_to_messages(body)["messages"][0]["content"]

    assert blocks[1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/dog.png"}},
    ]


# The first bytes of an image of each of Anthropic's types.
IMAGE_HEADS = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00",
    "image/gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff",
    "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chat_image_source(url: str) -> dict[str, Any]:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ],
    }
    return chat_request_to_messages(body)["messages"][0]["content"][0]["source"]


def _responses_image_sources(url: str) -> list[dict[str, Any]]:
    """The sources of an image `url` in a user message and in a call's output."""
    image = {"type": "input_image", "image_url": url}
    body = {
        "model": "m",
        "tools": RESPONSES_TOOLS,
        "input": [
            {"role": "user", "content": [image]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [image]},
        ],
    }
    turns = responses_request_to_messages(body)["messages"]
    return [turns[0]["content"][0]["source"], turns[2]["content"][0]["content"][0]["source"]]


@pytest.mark.parametrize("actual", IMAGE_HEADS)
@pytest.mark.parametrize("declared", ["image/jpeg", "image/png", "application/octet-stream"])
def test_an_image_data_url_is_sent_with_the_type_of_its_bytes(declared, actual) -> None:
    """OpenAI reads an image whatever type its data URL declares; Anthropic refuses one
    whose bytes are not of its `media_type`: the bytes' type is sent."""
    data = _b64(IMAGE_HEADS[actual] + b"\x00" * 64)
    url = f"data:{declared};base64,{data}"
    expected = {"type": "base64", "media_type": actual, "data": data}

    assert _chat_image_source(url) == expected
    assert _responses_image_sources(url) == [expected, expected]


def test_an_image_data_url_of_bytes_of_no_known_type_keeps_its_declared_type() -> None:
    data = _b64(b"not an image header" * 4)

    assert _chat_image_source(f"data:image/webp;base64,{data}")["media_type"] == "image/webp"
    with pytest.raises(TranslationError) as refused:
        _chat_image_source(f"data:image/bmp;base64,{data}")
    assert refused.value.code == "invalid_value"
    assert "image/bmp" in refused.value.message


def test_an_image_type_is_read_from_the_first_bytes_only() -> None:
    # What follows them is not decoded again (a data URL's data is checked once, whole).
    assert image_media_type(_b64(IMAGE_HEADS["image/png"]) + "not base64 at all!") == "image/png"
    assert image_media_type(_b64(b"GIF8")) is None


@pytest.mark.parametrize("top_p", [1, 1.0])
def test_a_top_p_of_1_is_not_sent_to_anthropic(top_p) -> None:
    """1 is OpenAI's default, which asks for nothing; Claude Sonnet 4.5 and later refuse
    `temperature` and `top_p` both set. A `top_p` below 1 is still sent."""
    chat = {"model": "m", "messages": USER, "temperature": 0.5}
    responses = {"model": "m", "input": "x", "temperature": 0.5}

    for translated in (
        chat_request_to_messages({**chat, "top_p": top_p}),
        responses_request_to_messages({**responses, "top_p": top_p}),
    ):
        assert translated["temperature"] == 0.5
        assert "top_p" not in translated
    assert chat_request_to_messages({**chat, "top_p": 0.9})["top_p"] == 0.9
    assert responses_request_to_messages({**responses, "top_p": 0.9})["top_p"] == 0.9


def test_a_temperature_of_1_is_not_sent_beside_a_top_p() -> None:
    """1 is both APIs' default: beside a `top_p` below 1 only that is sent (the models
    taking one of the two refuse both). Alone, or beside no `top_p`, it is sent."""
    for translated in (
        chat_request_to_messages({"model": "m", "messages": USER, "temperature": 1, "top_p": 0.5}),
        responses_request_to_messages({"model": "m", "input": "x", "temperature": 1, "top_p": 0.5}),
    ):
        assert "temperature" not in translated and translated["top_p"] == 0.5
    alone = chat_request_to_messages({"model": "m", "messages": USER, "temperature": 1})
    assert alone["temperature"] == 1 and "top_p" not in alone


def test_a_system_message_ending_the_request_after_an_assistant_one_asks_for_a_reply() -> None:
    """Taken out to `system`, it would leave the assistant message last, which Anthropic
    continues (a prefill); OpenAI writes a new reply. It is the user's last turn instead,
    with or without `mid_conversation_system_messages` (Anthropic takes a system message
    only right after a user one)."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "system", "content": "Now summarize in French."},
    ]
    items = [{**message, "type": "message"} for message in messages]
    for kept in (False, True):
        via_chat = chat_request_to_messages(
            {"model": "m", "messages": messages, "reasoning_effort": "high"},
            mid_conversation_system_messages=kept,
        )
        via_responses = responses_request_to_messages(
            {"model": "m", "input": items}, mid_conversation_system_messages=kept
        )
        for sent in (via_chat, via_responses):
            assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]
            assert "Now summarize in French." in json.dumps(sent["messages"][-1])
            assert "system" not in sent
        assert via_chat["thinking"]["type"] == "enabled"  # a new turn: thinking stays on


def test_openai_json_schema_response_format_becomes_output_config() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": WEATHER_SCHEMA},
        },
    }
    assert chat_request_to_messages(body)["output_config"] == {
        "format": {
            "type": "json_schema",
            "schema": {**WEATHER_SCHEMA, "additionalProperties": False},
        }
    }


def _with_format(api: str, fields: dict) -> dict:
    """A request of `api` (chat, responses) asking for a json_schema format with `fields`."""
    if api == "chat":
        return {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", **fields}},
        }
    return {
        "model": "m",
        "input": "x",
        "text": {"format": {"type": "json_schema", "name": "w", **fields}},
    }


FORMAT_TRANSLATIONS = [
    pytest.param("chat", chat_request_to_messages, "response_format.json_schema", id="chat"),
    pytest.param("responses", responses_request_to_messages, "text.format", id="responses"),
]


@pytest.mark.parametrize(("api", "translate", "path"), FORMAT_TRANSLATIONS)
def test_a_formats_description_reaches_anthropic_in_its_schema(api, translate, path) -> None:
    """OpenAI gives the model the format's description; Anthropic's format has no field
    for it, so it leads the schema's own description, which the model reads."""
    described = {"description": "Answer in French.", "schema": WEATHER_SCHEMA}
    schema = translate(_with_format(api, described))["output_config"]["format"]["schema"]
    assert schema["description"] == "Answer in French."
    own = {**WEATHER_SCHEMA, "description": "The weather."}
    both = translate(_with_format(api, {**described, "schema": own}))
    assert both["output_config"]["format"]["schema"]["description"] == (
        "Answer in French.\n\nThe weather."
    )


@pytest.mark.parametrize(("api", "translate", "path"), FORMAT_TRANSLATIONS)
def test_a_schema_the_description_cannot_join_is_sent_as_written(api, translate, path) -> None:
    referenced = {"$ref": "#/$defs/w", "$defs": {"w": WEATHER_SCHEMA}}
    bad_own = {**WEATHER_SCHEMA, "description": 5}  # Anthropic refuses it, as before
    for schema in (referenced, bad_own):
        sent = translate(_with_format(api, {"description": "D.", "schema": schema}))
        assert sent["output_config"]["format"]["schema"].get("description") == schema.get(
            "description"
        )


@pytest.mark.parametrize(("api", "translate", "path"), FORMAT_TRANSLATIONS)
def test_a_format_field_the_translation_would_drop_is_refused(api, translate, path) -> None:
    for fields, param in (
        ({"description": 5, "schema": WEATHER_SCHEMA}, f"{path}.description"),
        ({"examples": [], "schema": WEATHER_SCHEMA}, f"{path}.examples"),
        *([({"type": "json_schema", "schema": WEATHER_SCHEMA}, f"{path}.type")] * (api == "chat")),
    ):
        with pytest.raises(TranslationError) as refused:
            translate(_with_format(api, fields))
        assert refused.value.param == param


def test_a_non_strict_schema_has_its_objects_closed_for_anthropic() -> None:
    # Anthropic refuses an object schema without `additionalProperties: false`, which
    # OpenAI's non-strict mode allows; an explicit value is the client's and is kept, and
    # so is an object declaring no properties.
    address = {"type": "object", "properties": {"city": {"type": "string"}}}
    tags = {"type": "object", "additionalProperties": {"type": "string"}}
    schema = {
        "type": "object",
        "properties": {
            "home": address,
            "trips": {"type": "array", "items": {"$ref": "#/$defs/trip"}},
            "tags": tags,
            "either": {"anyOf": [{"type": "null"}, {"type": ["object", "null"], "properties": {}}]},
            "free": {"type": "object"},
            "both": {"allOf": [address]},
        },
        "$defs": {"trip": {"type": "object", "properties": {"to": address}}},
    }
    body = {
        "model": "m",
        "messages": USER,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": schema, "strict": False},
        },
    }

    sent = chat_request_to_messages(body)["output_config"]["format"]["schema"]

    closed = {**address, "additionalProperties": False}
    assert sent == {
        "type": "object",
        "properties": {
            "home": closed,
            "trips": {"type": "array", "items": {"$ref": "#/$defs/trip"}},
            "tags": tags,
            "either": {
                "anyOf": [
                    {"type": "null"},
                    {"type": ["object", "null"], "properties": {}, "additionalProperties": False},
                ]
            },
            # A free-form map is not narrowed to `{}` (Anthropic refuses it in its words),
            # nor is a branch of `allOf` closed (that would change what the whole takes).
            "free": {"type": "object"},
            "both": {"allOf": [address]},
        },
        "$defs": {
            "trip": {"type": "object", "properties": {"to": closed}, "additionalProperties": False}
        },
        "additionalProperties": False,
    }
    assert "additionalProperties" not in address  # the client's body is not changed


def test_json_mode_without_the_word_json_is_refused_as_openai_refuses_it() -> None:
    body = {"model": "m", "messages": USER, "response_format": {"type": "json_object"}}

    with pytest.raises(TranslationError) as refused:
        chat_request_to_messages(body)

    assert refused.value.param == "messages"
    assert refused.value.code != "unsupported_parameter"  # the client's API refuses it too
    assert "must contain the word 'json'" in refused.value.message


def test_json_mode_is_sent_to_anthropic_without_a_format() -> None:
    # Anthropic has no schema-less JSON mode: `{"type": "object"}` is refused there (open),
    # and closed it allows only `{}`.
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_object"},
    }

    result = chat_request_to_messages(body)

    assert "output_config" not in result
    assert result["messages"] == [{"role": "user", "content": "Answer in JSON."}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
            "logprobs",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            "top_logprobs",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 7}, "seed"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}},
            "logit_bias",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1.6},
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5},
            "presence_penalty",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ],
            },
            "messages.[0].content.[0]",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "Tell me a joke"},
                    {"role": "assistant", "content": None, "audio": {"id": "audio_1"}},
                    {"role": "user", "content": "Explain it"},
                ],
            },
            "messages.[1].audio",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "custom", "custom": {"name": "c"}}],
            },
            "tools.[0]",
        ),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
        ({"model": "m", "messages": "nope"}, "messages"),
    ],
)
def test_untranslatable_openai_requests_are_refused_with_the_field(body, param) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(body)
    assert caught.value.param == param


def test_requests_survive_a_round_trip_through_the_other_api() -> None:
    original = {
        "model": "m",
        "max_tokens": 50,
        "system": "Sys.",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"location": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "3C"}],
            },
        ],
        "tools": [{"name": "w", "input_schema": WEATHER_SCHEMA}],
        "stop_sequences": ["X"],
        "temperature": 0.2,
    }

    back = chat_request_to_messages(messages_request_to_chat(original))

    assert back == {**original, "tools": [{"name": "w", "input_schema": WEATHER_SCHEMA}]}


# =========================================================================== responses


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_anthropic_response_becomes_a_valid_chat_completion(stop_reason, finish_reason) -> None:
    message = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "...", "signature": "s"},
            {"type": "text", "text": "Checking. "},
            {"type": "tool_use", "id": "toolu_9", "name": "w", "input": {"location": "Oslo"}},
        ],
        stop_reason=stop_reason,
        usage={"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 5},
    )
    anthropic.types.Message.model_validate(message)  # the input is a real Anthropic message

    completion = message_to_chat_completion(message, "public-claude")

    parsed = openai.types.chat.ChatCompletion.model_validate(completion)
    assert parsed.model == "public-claude"
    assert parsed.choices[0].finish_reason == finish_reason
    assert parsed.choices[0].message.content == "Checking. "
    call = parsed.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_9",
        "w",
        {"location": "Oslo"},
    )
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (15, 3)
    assert parsed.usage.total_tokens == 18
    assert parsed.usage.prompt_tokens_details.cached_tokens == 5


def test_anthropic_tool_only_response_has_null_content() -> None:
    message = anthropic_message(
        content=[{"type": "tool_use", "id": "t", "name": "w", "input": {}}], stop_reason="tool_use"
    )
    completion = message_to_chat_completion(message, "m")
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    # A reply with tool calls that stopped at its end (Gemini's "stop") stopped to use them.
    [("stop", "tool_use"), ("length", "max_tokens"), ("tool_calls", "tool_use")],
)
def test_openai_completion_becomes_a_valid_anthropic_message(finish_reason, stop_reason) -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"location": "Rome"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 4,
            "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }
    openai.types.chat.ChatCompletion.model_validate(completion)

    message = chat_completion_to_message(completion, "public-gpt")

    parsed = anthropic.types.Message.model_validate(message)
    assert (parsed.model, parsed.stop_reason, parsed.role) == (
        "public-gpt",
        stop_reason,
        "assistant",
    )
    assert parsed.content[0].type == "text" and parsed.content[0].text == "Sure."
    assert parsed.content[1].type == "tool_use"
    assert (parsed.content[1].id, parsed.content[1].input) == ("call_1", {"location": "Rome"})
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (10, 4)
    assert parsed.usage.cache_read_input_tokens == 2


def test_openai_refusal_becomes_a_refusal_message() -> None:
    completion = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    message = chat_completion_to_message(completion, "m")
    assert message["stop_reason"] == "refusal"
    assert message["content"] == [{"type": "text", "text": "I can't."}]


# =========================================================================== streams


def openai_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra) -> dict:
    chunk = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return {**chunk, **extra}


OPENAI_TOOL_STREAM = [
    openai_chunk({"role": "assistant", "content": ""}),
    openai_chunk({"content": "Let me "}),
    openai_chunk({"content": "check."}),
    openai_chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "w", "arguments": ""},
                }
            ]
        }
    ),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"locat'}}]}),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ion":"Oslo"}'}}]}),
    openai_chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"location":"Rome"}'},
                }
            ]
        }
    ),
    openai_chunk({}, "tool_calls"),
    openai_chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}),
]


def tool_call(index: int, arguments: str, call_id: str | None = None) -> dict:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = "w"
    return openai_chunk({"tool_calls": [call]})


def block_deltas_between_start_and_stop(events: list[dict]) -> None:
    """Every delta of a block comes after its start and before its stop."""
    open_blocks: set[int] = set()
    for event in events:
        if event["type"] == "content_block_start":
            open_blocks.add(event["index"])
        elif event["type"] == "content_block_delta":
            assert event["index"] in open_blocks, event
        elif event["type"] == "content_block_stop":
            open_blocks.remove(event["index"])


@pytest.mark.parametrize(
    "chunks",
    [
        [  # the second call starts while the first's arguments are unfinished
            tool_call(0, "", "call_a"),
            tool_call(0, '{"location":'),
            tool_call(1, '{"locat', "call_b"),
            tool_call(0, ' "Oslo"}'),
            tool_call(1, 'ion": "Rome"}'),
        ],
        [  # the first call's whole arguments, then whitespace after the second started
            tool_call(0, '{"location": "Oslo"}', "call_a"),
            tool_call(1, '{"location":', "call_b"),
            tool_call(0, "\n"),
            tool_call(1, ' "Rome"}'),
            tool_call(0, "  "),
        ],
        [  # whitespace for the first call while the second is held, then after release
            tool_call(0, '{"location":', "call_a"),
            tool_call(1, '{"location": "Rome"}', "call_b"),
            tool_call(0, ' "Oslo"}'),
            tool_call(0, "\n "),
        ],
        [  # three calls, all interleaved, the last one finishing first
            tool_call(0, '{"location":', "call_a"),
            tool_call(1, '{"location":', "call_b"),
            tool_call(2, '{"location": "Bern"}', "call_c"),
            tool_call(1, ' "Rome"}'),
            tool_call(0, ' "Oslo"}'),
        ],
    ],
    ids=["two", "whitespace after a whole call", "whitespace after a held release", "three"],
)
def test_interleaved_parallel_tool_calls_become_whole_blocks_one_after_another(chunks) -> None:
    converter = ChatChunksToMessageEvents("m")
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.feed(openai_chunk({}, "tool_calls"))
    events += converter.finish()

    block_deltas_between_start_and_stop(events)
    snapshot, buffers = None, {}
    inputs_at_stop = []
    for event in events:
        STREAM_EVENT.validate_python(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
        if event["type"] == "content_block_stop":  # where a client takes the call as made
            inputs_at_stop.append(snapshot.content[event["index"]].input)
    assert [block.id for block in snapshot.content] == ["call_a", "call_b", "call_c"][
        : len(snapshot.content)
    ]
    expected = [{"location": "Oslo"}, {"location": "Rome"}, {"location": "Bern"}]
    assert inputs_at_stop == [block.input for block in snapshot.content]
    assert inputs_at_stop == expected[: len(inputs_at_stop)]


def completion_with_a_call(arguments: str, finish_reason: str) -> dict[str, Any]:
    """A `chat.completion` whose one choice calls tool `w` (id `call_1`) with `arguments`."""
    call = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": arguments}}
    return {
        "id": "chatcmpl-t",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": "Paris", "unit": "cel', {"city": "Paris"}),
        ('{"city": "Paris", "days": [1, 2', {"city": "Paris", "days": [1, 2]}),
        ('{"city": "Par', {}),
    ],
)
def test_arguments_cut_off_read_the_same_in_a_reply_as_in_its_stream(arguments, expected):
    """A call cut off by the token limit: the JSON reply's `input` is what the anthropic
    SDK makes of the same arguments streamed (jiter's partial mode), not `{}`."""
    message = chat_completion_to_message(completion_with_a_call(arguments, "length"), "m")
    assert message["stop_reason"] == "max_tokens"
    [block] = message["content"]
    assert block["input"] == expected

    converter = ChatChunksToMessageEvents("m")
    chunks = [tool_call(0, arguments, "call_1"), openai_chunk({}, "length")]
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()
    snapshot, buffers = None, {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None and snapshot.content[0].input == expected


def test_a_lone_surrogate_in_a_calls_arguments_keeps_the_arguments() -> None:
    """Half an emoji (`\\ud83d` escaped in the arguments' JSON) made them unreadable, so
    the call's `input` became `{}`, losing every argument, in a reply and in a stream."""
    arguments = '{"note": "x\\ud83d y", "n": 1}'
    expected = {"note": "x\ufffd y", "n": 1}
    completion = completion_with_a_call(arguments, "tool_calls")
    [block] = chat_completion_to_message(completion, "m")["content"]
    assert block["input"] == expected

    accumulator = MessageAccumulator()
    start = {"type": "message", "role": "assistant", "content": [], "usage": {}}
    for event in (
        {"type": "message_start", "message": start},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": arguments},
        },
        {"type": "content_block_stop", "index": 0},
    ):
        accumulator.add(event)
    assert accumulator.response()["content"][0]["input"] == expected


def test_only_jsons_whitespace_after_a_whole_call_is_dropped() -> None:
    """A piece after a call's whole arguments that is more than JSON's whitespace (here a
    no-break space, which JSON does not allow there) still reaches its block: dropping it
    would turn a malformed call into another call."""
    converter = ChatChunksToMessageEvents("m")
    converter.feed(tool_call(0, '{"location": "Oslo"}', "call_a"))
    converter.feed(tool_call(1, '{"loc', "call_b"))
    assert converter.feed(tool_call(0, " \t\r\n")) == []
    late = converter.feed(tool_call(0, "\u00a0"))
    assert [(event["type"], event["index"]) for event in late] == [("content_block_delta", 0)]


def test_a_call_after_a_finished_one_streams_at_once() -> None:
    converter = ChatChunksToMessageEvents("m")
    converter.feed(tool_call(0, '{"location": "Oslo"}', "call_a"))
    events = converter.feed(tool_call(1, '{"loc', "call_b"))

    assert [event["type"] for event in events] == [
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]


def test_openai_stream_becomes_the_anthropic_event_sequence() -> None:
    converter = ChatChunksToMessageEvents("public-model")
    events = [event for chunk in OPENAI_TOOL_STREAM for event in converter.feed(chunk)]
    events += converter.finish()

    assert [event["type"] for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # What the Anthropic SDK makes of this stream:
    snapshot, buffers = None, {}
    for event in events:
        STREAM_EVENT.validate_python(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot.model == "public-model"
    assert snapshot.stop_reason == "tool_use"
    assert snapshot.content[0].text == "Let me check."
    assert [(block.id, block.input) for block in snapshot.content[1:]] == [
        ("call_a", {"location": "Oslo"}),
        ("call_b", {"location": "Rome"}),
    ]
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (11, 7)


def test_upstream_usage_including_input_and_cache_reads_reaches_message_delta() -> None:
    converter = ChatChunksToMessageEvents("m")
    events = converter.feed(openai_chunk({"content": "Hi"}, "length"))
    events += converter.feed(
        openai_chunk(
            None,
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 40},
            },
        )
    )
    events += converter.finish()

    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 40,
            "output_tokens": 1,
        },
    }
    assert converter.finish() == [] and converter.feed(openai_chunk({"content": "x"})) == []


def test_empty_openai_stream_still_gives_a_complete_anthropic_stream() -> None:
    events = ChatChunksToMessageEvents("m").finish()
    assert [event["type"] for event in events] == ["message_start", "message_delta", "message_stop"]


ANTHROPIC_TOOL_STREAM = [
    {
        "type": "message_start",
        "message": {
            **anthropic_message(content=[], stop_reason=None),
            "usage": {"input_tokens": 20, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "On it"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_x", "name": "w", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"location":'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ' "Oslo"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
]


@pytest.mark.parametrize("include_usage", [True, False])
def test_anthropic_stream_becomes_openai_chunks(include_usage: bool) -> None:
    for event in ANTHROPIC_TOOL_STREAM:
        if event["type"] != "ping":  # pings are not in the SDK's event union
            STREAM_EVENT.validate_python(event)  # the input is a real Anthropic stream
    converter = MessageEventsToChatChunks("public-claude", include_usage=include_usage)

    chunks = [chunk for event in ANTHROPIC_TOOL_STREAM for chunk in converter.feed(event)]

    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(chunk))
    completion = state.get_final_completion()
    choice = completion.choices[0]
    assert completion.model == "public-claude" and completion.id == "chatcmpl-1"
    assert choice.message.content == "On it."
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_x",
        "w",
        {"location": "Oslo"},
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert completion.usage.prompt_tokens == 20 and completion.usage.completion_tokens == 9
    else:
        assert completion.usage is None


def test_a_streamed_call_without_input_has_the_arguments_of_an_empty_object() -> None:
    # Anthropic streams a call of a tool without parameters as `input: {}` and an empty
    # `partial_json` (or none); non-streamed, its arguments are "{}", and streamed too.
    events = [
        {"type": "message_start", "message": {"id": "msg_n", "usage": {"input_tokens": 3}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_n", "name": "now", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_m", "name": "w", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        {"type": "message_stop"},
    ]
    converter = MessageEventsToChatChunks("m")
    state = ChatCompletionStreamState()
    for event in events:
        for chunk in converter.feed(event):
            state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(chunk))
    calls = state.get_final_completion().choices[0].message.tool_calls
    assert [call.function.arguments for call in calls] == ["{}", '{"a": 1}']


def _tool_block(index: int) -> list[dict]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
        },
        {"type": "content_block_stop", "index": index},
    ]


THINKING_BLOCK = [
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "s"},
    },
    {"type": "content_block_stop", "index": 0},
]
TEXT_BLOCK = [
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
]


@pytest.mark.parametrize(
    ("blocks", "first_delta"),
    [
        (_tool_block(0), {"role": "assistant", "content": None, "tool_calls": "..."}),
        (
            THINKING_BLOCK + _tool_block(1),
            {"role": "assistant", "content": None, "tool_calls": "..."},
        ),
        (TEXT_BLOCK, {"role": "assistant", "content": ""}),
        (THINKING_BLOCK + TEXT_BLOCK, {"role": "assistant", "content": ""}),
    ],
    ids=["tool-only", "thinking-then-tool", "text", "thinking-then-text"],
)
def test_the_first_chunk_opens_what_the_reply_starts_with(blocks, first_delta) -> None:
    """As OpenAI's streams do: `content: ""` before text, `content: null` with the first
    tool call (an empty string would open a text part that never comes)."""
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3}}}
    end = [{"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}]
    converter = MessageEventsToChatChunks("m")
    chunks = [chunk for event in [start, *blocks, *end] for chunk in converter.feed(event)]

    first = chunks[0]["choices"][0]["delta"]
    assert {key: ("..." if key == "tool_calls" else value) for key, value in first.items()} == (
        first_delta
    )
    assert sum("role" in chunk["choices"][0]["delta"] for chunk in chunks) == 1
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(chunk))
    message = state.get_final_completion().choices[0].message
    if "tool_calls" in first_delta:
        assert message.content is None
        assert message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    else:
        assert message.content == "Hi" and not message.tool_calls


def test_accumulator_assembles_every_choice_and_tool_call() -> None:
    accumulator = CompletionAccumulator()
    for chunk in OPENAI_TOOL_STREAM:
        accumulator.add(chunk)
    second_choice = openai_chunk({"content": "other"}, "stop")
    second_choice["choices"][0]["index"] = 1
    accumulator.add(second_choice)

    completion = accumulator.response()

    parsed = openai.types.chat.ChatCompletion.model_validate(completion)
    first, second = parsed.choices
    assert first.message.content == "Let me check." and first.finish_reason == "tool_calls"
    assert [call.function.arguments for call in first.message.tool_calls] == [
        '{"location":"Oslo"}',
        '{"location":"Rome"}',
    ]
    assert second.message.content == "other"
    assert parsed.usage.total_tokens == 18
    assert accumulator.deltas == 6


# Azure OpenAI's first chunk: no id, no model, no choices, its content filter's verdict.
AZURE_PROLOGUE = {
    "id": "",
    "object": "",
    "created": 0,
    "model": "",
    "choices": [],
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
}


def test_azure_s_first_chunk_gives_neither_message_nor_completion_an_empty_id() -> None:
    chunks = [AZURE_PROLOGUE, *OPENAI_TOOL_STREAM]
    converter = ChatChunksToMessageEvents("m")
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()
    accumulator = CompletionAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)

    starts = [event for event in events if event["type"] == "message_start"]
    assert [start["message"]["id"] for start in starts] == ["msg_s"]
    completion = accumulator.response()
    assert (completion["id"], completion["model"], completion["created"]) == (
        "chatcmpl-s",
        "gpt-x",
        1,
    )


def test_a_translated_reply_has_its_client_api_s_id_form() -> None:
    """An Anthropic client gets `msg_...` ids, an OpenAI client `chatcmpl-...` ones; the
    upstream's id stays readable in it."""
    events = ChatChunksToMessageEvents("m").feed(openai_chunk({"content": "x"}))
    assert events[0]["message"]["id"] == "msg_s"
    completion = {
        "id": "chatcmpl-abc",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
    }
    assert chat_completion_to_message(completion, "m")["id"] == "msg_abc"
    assert message_to_chat_completion(anthropic_message(), "m")["id"] == "chatcmpl-1"
    assert chat_completion_to_message({"choices": []}, "m")["id"].startswith("msg_")


def test_stream_translations_compose_back_to_the_original_reply() -> None:
    """OpenAI chunks -> Anthropic events -> OpenAI chunks keeps text, calls and stop."""
    to_anthropic = ChatChunksToMessageEvents("m")
    events = [e for chunk in OPENAI_TOOL_STREAM for e in to_anthropic.feed(chunk)]
    events += to_anthropic.finish()
    back = MessageEventsToChatChunks("m", include_usage=True)
    accumulator = CompletionAccumulator()
    for event in events:
        for chunk in back.feed(event):
            accumulator.add(chunk)

    completion = accumulator.response()
    message = completion["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert [call["function"]["arguments"] for call in message["tool_calls"]] == [
        '{"location":"Oslo"}',
        '{"location":"Rome"}',
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["prompt_tokens"] == 11


# =========================================================================== v2 mappings


def test_an_anthropic_system_message_keeps_its_place_towards_chat_completions() -> None:
    anthropic_body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "system", "content": [{"type": "text", "text": "Plan mode."}]},
            {"role": "user", "content": "c"},
        ],
    }
    to_openai = messages_request_to_chat(anthropic_body)["messages"]
    assert to_openai[2] == {"role": "system", "content": "Plan mode."}


CACHE = {"type": "ephemeral"}


def _openai_call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


# Chat Completions messages with system and developer messages after the conversation
# started: after a user message and last, after a tool result and before an assistant
# message, between an assistant and a user message.
LATER_SYSTEM_MESSAGES = [
    {"role": "system", "content": "Rules."},
    {"role": "user", "content": "a"},
    {"role": "developer", "content": "After a user message, before a user message."},
    {"role": "user", "content": "b"},
    {"role": "assistant", "tool_calls": [_openai_call("c1")]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {
        "role": "system",
        "content": [{"type": "text", "text": "After a tool result.", "cache_control": CACHE}],
    },
    {"role": "assistant", "content": "Sunny."},
    {"role": "developer", "content": "After an assistant message."},
    {"role": "user", "content": "c"},
    {"role": "system", "content": "Last."},
]


def test_later_system_messages_go_to_the_top_level_system_by_default() -> None:
    """Only some models take `role: "system"` messages (Claude Opus 4.8 and later, on
    Anthropic's API): by default every later system or developer message is appended to
    the top-level `system`, which every model takes, a block of its own as the leading
    ones are, its `cache_control` kept; the turns around one are merged."""
    body = {"model": "m", "messages": LATER_SYSTEM_MESSAGES}

    result = chat_request_to_messages(body)

    check_messages_request(result)
    assert result["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "After a user message, before a user message."},
        {"type": "text", "text": "After a tool result.", "cache_control": CACHE},
        {"type": "text", "text": "After an assistant message."},
        {"type": "text", "text": "Last."},
    ]
    assert [turn["role"] for turn in result["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert result["messages"][0]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert result["messages"][3:] == [
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "c"},
    ]


def test_a_later_system_message_alone_makes_the_system_a_string() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "c"},
        ],
    }

    result = chat_request_to_messages(body)

    assert result["system"] == "Be brief."
    assert result["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]


def test_later_system_messages_stay_in_place_where_anthropic_allows_them() -> None:
    """With `mid_conversation_system_messages` (a model that takes `role: "system"`), a
    later system message stays one right after a user turn when it is last or an
    assistant turn follows it (Anthropic's placement rules); elsewhere it goes to the
    top-level `system`."""
    body = {"model": "m", "messages": LATER_SYSTEM_MESSAGES}

    result = chat_request_to_messages(body, mid_conversation_system_messages=True)

    check_messages_request(result)
    check_system_message_placement(result)
    assert result["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "After a user message, before a user message."},
        {"type": "text", "text": "After an assistant message."},
    ]
    assert [turn["role"] for turn in result["messages"]] == [
        "user",
        "assistant",
        "user",
        "system",
        "assistant",
        "user",
        "system",
    ]
    assert result["messages"][3] == {
        "role": "system",
        "content": [{"type": "text", "text": "After a tool result.", "cache_control": CACHE}],
    }
    assert result["messages"][5:] == [
        {"role": "user", "content": "c"},
        {"role": "system", "content": "Last."},
    ]


def test_consecutive_later_system_messages_are_one_system_turn() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "One."},
            {"role": "developer", "content": "Two."},
        ],
    }

    result = chat_request_to_messages(body, mid_conversation_system_messages=True)

    check_system_message_placement(result)
    assert "system" not in result
    assert result["messages"][1] == {
        "role": "system",
        "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
    }


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, "medium"),
        ({"type": "enabled", "budget_tokens": 32000}, "high"),
        ({"type": "adaptive"}, "medium"),
        ({"type": "disabled"}, None),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking, effort) -> None:
    body = {"model": "m", "max_tokens": 64000, "messages": USER, "thinking": thinking}
    assert messages_request_to_chat(body).get("reasoning_effort") == effort


def test_reasoning_effort_becomes_a_thinking_budget_within_max_tokens() -> None:
    result = chat_request_to_messages(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "reasoning_effort": "high",
            "max_tokens": 30000,
        }
    )
    assert result["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert result["max_tokens"] == 30000  # the client's cap counts reasoning tokens too


def test_output_config_format_and_effort_become_response_format_and_reasoning_effort() -> None:
    closed = {**WEATHER_SCHEMA, "additionalProperties": False}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": USER,
        "output_config": {
            "format": {"type": "json_schema", "schema": closed},
            "effort": "max",
        },
    }
    result = messages_request_to_chat(body)
    assert result["response_format"]["json_schema"]["schema"] == closed
    # Anthropic enforces every format; OpenAI's strict mode takes this one (every object
    # closed, every property required).
    assert result["response_format"]["json_schema"]["strict"] is True
    assert result["reasoning_effort"] == "xhigh"
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat({**body, "output_config": {"task_budget": 3}})
    assert caught.value.param == "output_config.task_budget"


@pytest.mark.parametrize(
    "schema",
    [
        WEATHER_SCHEMA,
        {
            "type": "object",
            "properties": {"home": {"type": "object", "properties": {}}},
            "required": ["home"],
            "additionalProperties": False,
        },
    ],
)
def test_an_output_format_anthropic_refuses_is_refused_in_its_words(schema) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": USER,
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }

    with pytest.raises(TranslationError) as refused:
        messages_request_to_chat(body)

    assert refused.value.message == (
        "output_config.format.schema: For 'object' type, 'additionalProperties' must be "
        "explicitly set to false"
    )
    assert refused.value.code != "unsupported_parameter"


def test_a_schema_openai_strict_mode_refuses_is_sent_non_strict() -> None:
    # An optional property, which Anthropic allows and OpenAI's strict mode refuses.
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tool = {"name": "f", "input_schema": schema, "strict": True}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": USER,
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
        "tools": [tool],
    }

    result = messages_request_to_chat(body)

    assert result["response_format"]["json_schema"] == {
        "name": "output",
        "schema": schema,
        "strict": False,
    }
    assert result["tools"][0]["function"]["strict"] is False
    closed = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    strict_tool = messages_request_to_chat({**body, "tools": [{**tool, "input_schema": closed}]})
    assert strict_tool["tools"][0]["function"]["strict"] is True


def test_tool_result_images_follow_the_tool_message_in_a_user_message() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/shot.png"}}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            *USER,
            ASKED_T1,
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "screenshot:"}, image],
                    },
                    {"type": "text", "text": "What do you see?"},
                ],
            },
        ],
    }
    assert messages_request_to_chat(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/shot.png"}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("content", "sent"),
    [
        ("boom", "Error: boom"),
        ([{"type": "text", "text": "boom"}], "Error: boom"),
        (
            [{"type": "text", "text": "step 1 failed"}, {"type": "text", "text": "step 2 skipped"}],
            [
                {"type": "text", "text": "Error: step 1 failed"},
                {"type": "text", "text": "step 2 skipped"},
            ],
        ),
        ([], "Error"),
    ],
)
def test_a_failed_tool_result_is_marked_whatever_its_content(content, sent) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            *USER,
            ASKED_T1,
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": content,
                    }
                ],
            },
        ],
    }
    assert messages_request_to_chat(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": sent}
    ]


def test_documents_map_to_files_and_text() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "a.pdf",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0x",
                        },
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Plain."},
                    },
                ],
            }
        ],
    }
    assert messages_request_to_chat(body)["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
        },
        {"type": "text", "text": "Plain."},
    ]


def test_several_assistant_text_blocks_stay_apart_both_ways() -> None:
    texts = ["First paragraph.", "Second paragraph."]
    anthropic_body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "Write two paragraphs."},
            {"role": "assistant", "content": [{"type": "text", "text": text} for text in texts]},
            {"role": "user", "content": "Thanks."},
        ],
    }
    sent = messages_request_to_chat(anthropic_body)["messages"][1]
    assert sent == {"role": "assistant", "content": [{"type": "text", "text": t} for t in texts]}

    openai_body = {"model": "m", "messages": [m for m in anthropic_body["messages"]]}
    openai_body["messages"][1] = sent
    assert chat_request_to_messages(openai_body)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": text} for text in texts],
    }


def test_a_documents_title_context_and_text_blocks_reach_chat_completions() -> None:
    content_source = {
        "type": "content",
        "content": [{"type": "text", "text": "c1"}, {"type": "text", "text": "c2"}],
    }
    pdf_source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "Notes",
                        "context": "Meeting of 3 May",
                        "source": content_source,
                    },
                    {"type": "document", "context": "The contract", "source": pdf_source},
                ],
            }
        ],
    }
    assert messages_request_to_chat(body)["messages"][0]["content"] == [
        {"type": "text", "text": "Notes\n\nMeeting of 3 May\n\nc1\n\nc2"},
        {"type": "text", "text": "The contract"},
        {
            "type": "file",
            "file": {
                "filename": "document.pdf",
                "file_data": "data:application/pdf;base64,JVBERi0x",
            },
        },
    ]


def test_cache_usage_maps_both_ways_and_is_never_counted_twice() -> None:
    anthropic_usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 50,
        "cache_read_input_tokens": 100,
        "output_tokens": 7,
        "output_tokens_details": {"thinking_tokens": 3},
    }
    openai_usage = chat_usage_from_messages(anthropic_usage)
    assert openai_usage == {
        "prompt_tokens": 160,
        "completion_tokens": 7,
        "total_tokens": 167,
        "prompt_tokens_details": {
            "cached_tokens": 100,
            "cache_write_tokens": 50,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 3,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    back = messages_usage_from_chat(openai_usage)
    # OpenAI's `cache_write_tokens` are the cache writes: every count comes back.
    assert {k: back[k] for k in anthropic_usage if k != "output_tokens_details"} == {
        k: v for k, v in anthropic_usage.items() if k != "output_tokens_details"
    }


def test_usage_without_thinking_still_has_openais_details() -> None:
    """OpenAI always sends both details objects; LangChain read `{}` as the output's
    details of a translated reply without thinking."""
    usage = chat_usage_from_messages({"input_tokens": 4, "output_tokens": 2})
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "audio_tokens": 0,
    }


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ({"stop_reason": "END"}, ("stop_sequence", "END")),  # vLLM
        ({"matched_stop": "END"}, ("stop_sequence", "END")),  # SGLang
        ({"matched_stop": 151645}, ("end_turn", None)),  # SGLang: the end-of-text token
        ({"stop_reason": None}, ("end_turn", None)),
    ],
    ids=["vllm", "sglang", "token-id", "none"],
)
def test_a_stop_sequence_reported_by_an_openai_compatible_server_is_kept(
    reported, expected
) -> None:
    completion = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a"},
                "finish_reason": "stop",
                **reported,
            }
        ]
    }
    message = chat_completion_to_message(completion, "m")
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_message_accumulator_assembles_thinking_tools_stop_and_usage() -> None:
    events = [
        {
            "type": "message_start",
            "message": {
                **anthropic_message(content=[], stop_reason=None),
                "usage": {"input_tokens": 5, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hm"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "S1"},
        },
        {"type": "content_block_stop", "index": 0},
        *ANTHROPIC_TOOL_STREAM[5:],
    ]
    events[5] = {**events[5], "index": 1}
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.add(event)
    message = accumulator.response()
    parsed = anthropic.types.Message.model_validate(message)
    assert parsed.content[0].thinking == "Hm" and parsed.content[0].signature == "S1"
    assert parsed.content[1].input == {"location": "Oslo"}
    assert parsed.stop_reason == "tool_use" and parsed.usage.output_tokens == 9


def test_message_accumulator_joins_pieces_as_they_stand_at_every_read() -> None:
    # Pieces are kept and joined when read: a read in the middle of the stream shows the
    # text so far, later deltas go on from it, and nulls and a block's own start count.
    accumulator = MessageAccumulator()
    accumulator.add({"type": "message_start", "message": anthropic_message(content=[])})
    accumulator.add(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": "Be", "citations": None},
        }
    )
    for piece in ("gin", None, " and"):
        accumulator.add(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
        )
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    accumulator.add(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": citation},
        }
    )
    middle = accumulator.response()
    assert middle["content"][0]["text"] == "Begin and"
    assert middle["content"][0]["citations"] == [citation]
    for n in range(1000):
        accumulator.add(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f" {n}"},
            }
        )
    accumulator.add({"type": "content_block_stop", "index": 0})
    final = accumulator.response()["content"][0]
    assert final["text"] == "Begin and" + "".join(f" {n}" for n in range(1000))
    assert final["citations"] == [citation]
    assert middle["content"][0]["text"] == "Begin and"  # an earlier read is not changed
    assert accumulator.deltas == 1004


def test_message_accumulator_keeps_a_cut_tool_input_and_message_delta_members() -> None:
    # A tool input cut off by the token limit keeps what it holds whole, as the anthropic
    # SDK reads it; `message_delta`'s members beside `delta` and `usage` reach the message.
    accumulator = MessageAccumulator()
    accumulator.add({"type": "message_start", "message": anthropic_message(content=[])})
    accumulator.add(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}},
        }
    )
    for piece in ('{"city": "Paris", "unit', '": "cel'):
        accumulator.add(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
        )
    accumulator.add({"type": "content_block_stop", "index": 0})
    edits = {"applied_edits": [{"type": "clear_tool_uses_20250919", "cleared_tool_uses": 2}]}
    accumulator.add(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 7},
            "context_management": edits,
            "input_transformations": [{"type": "a_future_transformation"}],
        }
    )

    message = accumulator.response()
    assert message["content"][0]["input"] == {"city": "Paris"}
    assert message["context_management"] == edits
    assert message["input_transformations"] == [{"type": "a_future_transformation"}]
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 7
    assert "delta" not in message and message["type"] == "message"


def test_a_block_started_again_at_its_index_replaces_its_pieces() -> None:
    accumulator = MessageAccumulator()
    accumulator.add({"type": "message_start", "message": anthropic_message(content=[])})
    for start, piece in (("old-start+", "old"), ("new-start+", "new")):
        accumulator.add(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": start},
            }
        )
        accumulator.add(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
        )
    assert accumulator.response()["content"][0]["text"] == "new-start+new"


def test_a_streamed_refusal_stops_for_refusal_as_a_whole_reply_does() -> None:
    converter = ChatChunksToMessageEvents("m")
    events = converter.feed(openai_chunk({"role": "assistant", "refusal": "I can't"}))
    events += converter.feed(openai_chunk({"refusal": " help with that."}, "stop"))
    events += converter.finish()
    whole = chat_completion_to_message(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "refusal": "I can't"},
                    "finish_reason": "stop",
                }
            ]
        },
        "m",
    )

    assert events[-2]["delta"]["stop_reason"] == whole["stop_reason"] == "refusal"


def test_a_held_call_does_not_make_every_argument_piece_parse_the_whole_arguments(monkeypatch):
    """While a call is held, the open call's arguments are parsed only when a piece could
    end them (a closing brace or bracket), not with every piece: a long call streamed in
    small pieces would otherwise cost time growing with the square of its length."""
    from switchyard.inference import translate

    parsed: list[int] = []
    real_loads = translate.orjson.loads

    class CountingOrjson:
        JSONDecodeError = translate.orjson.JSONDecodeError

        @staticmethod
        def loads(text):
            parsed.append(len(text))
            return real_loads(text)

        dumps = staticmethod(translate.orjson.dumps)

    monkeypatch.setattr(translate, "orjson", CountingOrjson)
    converter = ChatChunksToMessageEvents("m")
    converter.feed(tool_call(0, '{"location": "', "call_a"))
    converter.feed(tool_call(1, "{}", "call_b"))
    for _ in range(1000):
        converter.feed(tool_call(0, "abcdefghij"))
    events = converter.feed(tool_call(0, '"}'))

    assert len(parsed) <= 4
    assert [event["type"] for event in events][-3:] == [
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", '"text"', "null", "7"])
def test_tool_call_arguments_that_are_not_an_object_are_refused_not_replaced(arguments) -> None:
    # OpenAI's APIs take any string as a call's arguments (a model's truncated JSON, sent
    # back in the conversation); Anthropic's `input` is an object, and `{}` in its place
    # would change the conversation without a word.
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    }
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(chat)
    assert caught.value.param == "messages.[1].tool_calls.[0].function.arguments"
    assert caught.value.code == "unsupported_parameter"

    responses = {
        "model": "m",
        "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    }
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages(responses)
    assert caught.value.param == "input[1].arguments"
    assert caught.value.code == "unsupported_parameter"


@pytest.mark.parametrize(("arguments", "expected"), [("", {}), (None, {}), ('{"a": 1}', {"a": 1})])
def test_tool_call_arguments_that_are_an_object_or_nothing_are_translated(
    arguments, expected
) -> None:
    function = {"name": "get", **({} if arguments is None else {"arguments": arguments})}
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": function}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    }
    assert chat_request_to_messages(chat)["messages"][1]["content"][0]["input"] == expected


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "type", "invalid_value"),
        ({"type": "text"}, "text", "missing_required_parameter"),
        ({"type": "text", "text": 3}, "text", "invalid_type"),
        ({"type": "refusal"}, "refusal", "missing_required_parameter"),
    ],
)
def test_an_assistant_part_chat_completions_refuses_is_refused_not_dropped(
    part, param, code
) -> None:
    # Assistant parts are text or refusal in Chat Completions; another part, or one
    # without its text, was left out of the turn sent to Anthropic.
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}, part]},
            {"role": "user", "content": "and?"},
        ],
    }
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(chat)
    assert caught.value.code == code
    assert caught.value.param == f"messages.[1].content.[1].{param}"


def test_assistant_text_and_refusal_parts_each_become_a_text_block() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}]
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": parts},
            {"role": "user", "content": "and?"},
        ],
    }
    blocks = chat_request_to_messages(chat)["messages"][1]["content"]
    assert blocks == [{"type": "text", "text": "a"}, {"type": "text", "text": "no"}]


def test_an_assistant_messages_refusal_goes_back_as_what_it_said() -> None:
    """A reply's message appended to the conversation as it came (`content` null, the
    refusal in `refusal`) keeps its turn: before, the assistant turn vanished and the two
    user turns around it merged."""
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            {"role": "user", "content": "and?"},
        ],
    }
    messages = chat_request_to_messages(chat)["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] in (
        "I can't help with that.",
        [{"type": "text", "text": "I can't help with that."}],
    )
    with pytest.raises(TranslationError) as refused:
        chat_request_to_messages(
            {**chat, "messages": [{**chat["messages"][1], "refusal": 7}, chat["messages"][2]]}
        )
    assert refused.value.param == "messages.[0].refusal"


def test_a_prefill_is_refused_for_a_chat_completions_deployment() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "Colours as JSON"},
            {"role": "assistant", "content": '{"colors": ['},
        ],
    }
    with pytest.raises(TranslationError) as refused:
        messages_request_to_chat(body)
    assert refused.value.param == "messages.1"
    assert str(refused.value).startswith("messages.1: a final assistant message (a prefill)")


@pytest.mark.parametrize("content", ["", []], ids=["empty-string", "no-blocks"])
def test_an_empty_final_assistant_message_is_no_prefill(content) -> None:
    # Anthropic takes it (only as the final message) and continues nothing: the model
    # answers as if it were not sent, so the Chat request leaves it out.
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": content},
        ],
    }
    check_messages_request(body)
    assert messages_request_to_chat(body)["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": None}],
        [{"type": "text"}],
        [{"type": "text", "text": 5}],
    ],
)
@pytest.mark.parametrize("role", ["user", "assistant"])
def test_an_anthropic_text_block_without_a_string_text_is_refused(content, role) -> None:
    messages = [{"role": "user", "content": "hi"}] if role == "assistant" else []
    messages += [{"role": role, "content": content}]
    if role == "assistant":
        messages.append({"role": "user", "content": "go on"})
    with pytest.raises(TranslationError) as refused:
        messages_request_to_chat({"model": "m", "max_tokens": 5, "messages": messages})
    assert (
        refused.value.param
        == f"messages.{len(messages) - 2 if role == 'assistant' else 0}.content.0.text.text"
    )


def test_null_members_of_an_anthropic_reply_read_as_absent() -> None:
    """`"text": null` or `"citations": null` (the SDKs' types allow null) in a reply or a
    stream: the stream accumulator (every pass-through stream goes through it) and the
    translation to Chat Completions read them as empty, never fail on them."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": None}, {"type": "text", "text": "Hi."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    assert message_to_chat_completion(message, "m")["choices"][0]["message"]["content"] == "Hi."
    citation = {
        "type": "char_location",
        "cited_text": "x",
        "document_index": 0,
        "document_title": None,
        "start_char_index": 0,
        "end_char_index": 1,
    }
    accumulator = MessageAccumulator()
    for event in [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": None, "citations": None},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": citation},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": None}},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "thinking", "thinking": None, "signature": None},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "signature_delta", "signature": "S"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_stop", "index": 1},
    ]:
        accumulator.add(event)
    blocks = accumulator.response()["content"]
    assert blocks[0]["text"] == "Hi" and blocks[0]["citations"] == [citation]
    assert blocks[1]["signature"] == "S"


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 0}, "n", "integer_below_min_value"),
        ({"n": 129}, "n", "integer_above_max_value"),
        ({"n": "2"}, "n", "invalid_type"),
        ({"n": True}, "n", "invalid_type"),
        ({"logprobs": "yes"}, "logprobs", "invalid_type"),
        ({"store": 1}, "store", "invalid_type"),
        ({"presence_penalty": 5}, "presence_penalty", "decimal_above_max_value"),
        ({"frequency_penalty": -2.5}, "frequency_penalty", "decimal_below_min_value"),
        ({"presence_penalty": "0"}, "presence_penalty", "invalid_type"),
        ({"service_tier": "fastest"}, "service_tier", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.[0].content.[0].text",
            "missing_required_parameter",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "text"}]}]},
            "messages.[0].content.[0].text",
            "missing_required_parameter",
        ),
    ],
)
def test_values_openai_refuses_are_refused_in_its_words_not_as_untranslatable(
    extra, param, code
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(body)
    assert (caught.value.param, caught.value.code) == (param, code)


@pytest.mark.parametrize(
    "extra",
    [{"n": 2}, {"logprobs": True}, {"presence_penalty": 1.5}, {"service_tier": "flex"}],
)
def test_valid_values_messages_cannot_express_stay_unsupported(extra) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(body)
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == next(iter(extra))


def test_a_responses_text_part_without_text_is_refused_in_openais_words() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages(body)
    assert caught.value.code == "missing_required_parameter"
    assert caught.value.param == "input[0].content[0].text"
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages({**body, "input": "hi", "service_tier": "fastest"})
    assert (caught.value.param, caught.value.code) == ("service_tier", "invalid_value")


# A reply in OpenAI's deprecated functions API, as some servers still give it.
LEGACY_CALL = {"name": "get_weather", "arguments": '{"location": "Oslo"}'}


def test_a_legacy_function_call_reply_becomes_a_tool_use_block() -> None:
    completion = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "function_call": LEGACY_CALL},
                "finish_reason": "function_call",
            }
        ],
    }

    message = chat_completion_to_message(completion, "m")

    [block] = message["content"]
    assert (block["type"], block["name"], block["input"]) == (
        "tool_use",
        "get_weather",
        {"location": "Oslo"},
    )
    assert block["id"] and message["stop_reason"] == "tool_use"


def test_a_streamed_legacy_function_call_becomes_a_tool_use_block() -> None:
    converter = ChatChunksToMessageEvents("m")
    chunks = [
        openai_chunk({"role": "assistant", "function_call": {"name": "get_weather"}}),
        openai_chunk({"function_call": {"arguments": '{"location":'}}),
        openai_chunk({"function_call": {"arguments": ' "Oslo"}'}}),
        openai_chunk({}, "function_call"),
    ]
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()

    snapshot, buffers = None, {}
    for event in events:
        STREAM_EVENT.validate_python(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    [block] = snapshot.content
    assert (block.type, block.name, block.input) == (
        "tool_use",
        "get_weather",
        {"location": "Oslo"},
    )
    assert snapshot.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("final", "sent"),
    [
        ("It is ", "It is"),
        ([{"type": "text", "text": "Line\n"}], "Line"),
    ],
)
def test_a_final_assistant_message_is_sent_to_anthropic_without_trailing_whitespace(
    final: Any, sent: str
) -> None:
    # Anthropic continues a final assistant turn and refuses one ending in whitespace.
    user = {"role": "user", "content": "Weather?"}
    chat = chat_request_to_messages(
        {"model": "m", "messages": [user, {"role": "assistant", "content": final}]}
    )
    responses = responses_request_to_messages(
        {"model": "m", "input": [user, {"role": "assistant", "content": final}]}
    )

    for request in (chat, responses):
        last = request["messages"][-1]
        assert last["role"] == "assistant"
        text = last["content"] if isinstance(last["content"], str) else last["content"][-1]["text"]
        assert text == sent


def test_a_final_assistant_message_of_only_whitespace_is_not_sent() -> None:
    user = {"role": "user", "content": "Weather?"}
    request = chat_request_to_messages(
        {"model": "m", "messages": [user, {"role": "assistant", "content": "  "}]}
    )

    assert [turn["role"] for turn in request["messages"]] == ["user"]


# --------------------------------------------------------------------------- OpenAI -> Anthropic,
# judged as Anthropic judges it

WEATHER_FUNCTION = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


def _chat_call(call_id: str, content: str | None = None) -> list[dict[str, Any]]:
    """An assistant turn calling get_weather with `call_id` (beside `content`), and its
    tool message."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    return [
        {"role": "assistant", "content": content, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]


@pytest.mark.parametrize(
    "messages",
    [
        # The "\n\n" a model writes before its tool calls, sent back as it came.
        [{"role": "user", "content": "weather?"}, *_chat_call("call_1", "\n\n")],
        # Ids some servers give their calls, outside Anthropic's pattern.
        [{"role": "user", "content": "weather?"}, *_chat_call("functions.get_weather:0")],
        [
            {"role": "user", "content": "weather?"},
            *_chat_call("call.1"),
            *_chat_call("call:1"),  # apart from the first once mapped
            {"role": "user", "content": "thanks"},
        ],
        # Whitespace turns and parts, which OpenAI takes.
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "\n"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "\n"}, {"type": "text", "text": "go"}],
            },
        ],
        [{"role": "user", "content": " "}, {"role": "user", "content": "hi"}],
    ],
)
def test_a_valid_openai_conversation_becomes_a_request_anthropic_takes(messages) -> None:
    result = chat_request_to_messages(
        {"model": "m", "messages": messages, "tools": [WEATHER_FUNCTION]}
    )
    check_messages_request(result)
    ids = [
        (block.get("id") or block.get("tool_use_id"))
        for turn in result["messages"]
        if isinstance(turn["content"], list)
        for block in turn["content"]
        if block["type"] in ("tool_use", "tool_result")
    ]
    # Every call is answered by the result of the same id, and distinct ids stay distinct.
    assert len(set(ids)) * 2 == len(ids)


def test_a_responses_conversation_with_foreign_call_ids_and_whitespace_is_taken() -> None:
    body = {
        "model": "m",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {}}],
        "input": [
            {"role": "user", "content": "weather?"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "\n"}],
            },
            {"type": "function_call", "call_id": "fc:1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "fc:1", "output": "sunny"},
        ],
    }
    result = responses_request_to_messages(body)
    check_messages_request(result)
    [call] = [b for b in result["messages"][1]["content"] if b["type"] == "tool_use"]
    assert call["id"] == anthropic_tool_id("fc:1") != "fc:1"


def test_a_tool_id_anthropic_takes_is_kept() -> None:
    assert anthropic_tool_id("call_Ab-9") == "call_Ab-9"
    assert anthropic_tool_id("a.b") != anthropic_tool_id("a:b")


def test_a_developer_item_between_a_call_and_its_output_follows_the_output() -> None:
    """Anthropic needs a tool use's result in the very next turn: a developer item that
    came between them is sent right after the result, never between (where a model
    taking system messages gets it as one), or in the top-level `system`."""
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {}}],
        "input": [
            {"role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"role": "developer", "content": "Tool results follow."},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    }
    placed = responses_request_to_messages(body, mid_conversation_system_messages=True)
    check_messages_request(placed)
    check_system_message_placement(placed)
    assert [turn["role"] for turn in placed["messages"]] == ["user", "assistant", "user", "system"]
    assert placed["messages"][3]["content"] == "Tool results follow."
    assert placed["system"] == "Be brief."

    result = responses_request_to_messages(body)
    check_messages_request(result)
    assert [turn["role"] for turn in result["messages"]] == ["user", "assistant", "user"]
    assert result["system"] == "Be brief.\n\nTool results follow."


# Responses input with system and developer items after the conversation started: after
# a user message and before one, two in a row after a function call's output and before
# an assistant message, after an assistant message, last.
LATER_SYSTEM_ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": "a"},
    {"role": "developer", "content": "Before a user message."},
    {"role": "user", "content": [{"type": "input_text", "text": "b"}]},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    {"role": "system", "content": "After an output."},
    {"role": "developer", "content": [{"type": "input_text", "text": "And another."}]},
    {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
    {"role": "developer", "content": "After an assistant message."},
    {"role": "user", "content": "c"},
    {"role": "system", "content": "Last."},
]


def test_later_system_items_go_to_the_top_level_system_by_default() -> None:
    body = {"model": "m", "instructions": "Rules.", "input": LATER_SYSTEM_ITEMS}

    result = responses_request_to_messages(body)

    check_messages_request(result)
    assert result["system"] == (
        "Rules.\n\nBefore a user message.\n\nAfter an output.\n\nAnd another.\n\n"
        "After an assistant message.\n\nLast."
    )
    assert [turn["role"] for turn in result["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert result["messages"][0]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


def test_later_system_items_stay_in_place_where_anthropic_allows_them() -> None:
    body = {"model": "m", "instructions": "Rules.", "input": LATER_SYSTEM_ITEMS}

    result = responses_request_to_messages(body, mid_conversation_system_messages=True)

    check_messages_request(result)
    check_system_message_placement(result)
    assert result["system"] == ("Rules.\n\nBefore a user message.\n\nAfter an assistant message.")
    assert [turn["role"] for turn in result["messages"]] == [
        "user",
        "assistant",
        "user",
        "system",
        "assistant",
        "user",
        "system",
    ]
    assert result["messages"][3]["content"] == "After an output.\n\nAnd another."
    assert result["messages"][6]["content"] == "Last."


def _fc(call_id: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{}"}


def _fco(call_id: str, output: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {}}]
IMAGE_PART = {"type": "input_image", "image_url": "https://example.com/x.png"}


@pytest.mark.parametrize(
    "items",
    [
        # A developer, user or assistant item between a call and its output.
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            {"role": "developer", "content": "n"},
            _fco("c1"),
        ],
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            {"role": "user", "content": "and?"},
            _fco("c1"),
        ],
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "wait"}],
            },
            _fco("c1"),
        ],
        # ... between two outputs of parallel calls.
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            _fc("c2"),
            _fco("c1"),
            {"role": "developer", "content": "n"},
            _fco("c2"),
        ],
        # A call id used again in a later turn, as some servers number each turn's calls.
        [{"role": "user", "content": "hi"}, _fc("f:0"), _fco("f:0"), _fc("f:0"), _fco("f:0")],
        # Whitespace: a system item mid-conversation, a text part of a tool's output.
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            _fco("c1", [{"type": "input_text", "text": " "}]),
            {"role": "system", "content": " "},
            {"role": "user", "content": "go on"},
        ],
        # An image and a file a tool returned, beside its text.
        [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            _fc("c2"),
            _fco("c1", [{"type": "input_text", "text": "shot:"}, IMAGE_PART]),
            _fco("c2", [{"type": "input_file", "file_data": "data:application/pdf;base64,JVBE"}]),
        ],
    ],
)
def test_a_valid_responses_input_becomes_a_request_each_api_takes(items) -> None:
    body = {"model": "m", "input": items, "tools": RESPONSES_TOOLS}
    check_messages_request(responses_request_to_messages(body))
    chat = responses_request_to_chat(body)
    openai_rules.check("/v1/chat/completions", chat)


def test_a_tools_image_follows_the_turns_tool_messages_in_a_user_message() -> None:
    body = {
        "model": "m",
        "tools": RESPONSES_TOOLS,
        "input": [
            {"role": "user", "content": "hi"},
            _fc("c1"),
            _fc("c2"),
            _fco("c1", [{"type": "input_text", "text": "shot:"}, IMAGE_PART]),
            _fco("c2"),
        ],
    }
    messages = responses_request_to_chat(body)["messages"]
    assert [message["role"] for message in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]
    assert messages[2]["content"] == "shot:"
    assert messages[4]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    ]


def test_a_call_id_used_again_gets_an_id_of_its_own_with_its_result() -> None:
    body = {
        "model": "m",
        "tools": [WEATHER_FUNCTION],
        "messages": [
            {"role": "user", "content": "hi"},
            *_chat_call("functions.f:0"),
            *_chat_call("functions.f:0"),
        ],
    }
    turns = chat_request_to_messages(body)["messages"]
    check_messages_request({"model": "m", "max_tokens": 5, "messages": turns})
    first, second = turns[1]["content"][0]["id"], turns[3]["content"][0]["id"]
    assert second == f"{first}_2"
    assert turns[4]["content"][0]["tool_use_id"] == second


TOOLS_CHAT = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
TOOLS_RESPONSES = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
TOOL_CHOICE_TRANSLATIONS = {
    "chat->messages": lambda choice: chat_request_to_messages(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS_CHAT}
        | {"tool_choice": choice}
    ),
    "responses->chat": lambda choice: responses_request_to_chat(
        {"model": "m", "input": "hi", "tools": TOOLS_RESPONSES, "tool_choice": choice}
    ),
    "responses->messages": lambda choice: responses_request_to_messages(
        {"model": "m", "input": "hi", "tools": TOOLS_RESPONSES, "tool_choice": choice}
    ),
}


@pytest.mark.parametrize("path", list(TOOL_CHOICE_TRANSLATIONS))
@pytest.mark.parametrize(
    ("choice", "code"),
    [
        ("sometimes", "invalid_value"),
        (5, "invalid_type"),
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "unsupported_parameter"),
    ],
    ids=["unknown-mode", "number", "allowed-tools"],
)
def test_a_tool_choice_no_translation_takes_is_refused_with_openai_s_code(
    path: str, choice: Any, code: str
) -> None:
    with pytest.raises(TranslationError) as caught:
        TOOL_CHOICE_TRANSLATIONS[path](choice)
    assert (caught.value.param, caught.value.code) == ("tool_choice", code)


def test_a_refused_value_is_quoted_as_json_not_as_python() -> None:
    """The message quoted `'logprobs' = True`: the client sent `true`."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(body)
    assert "'logprobs' = true cannot be sent" in caught.value.message


def test_error_messages_quote_values_in_json_spelling() -> None:
    from switchyard.common.errors import json_value

    assert [json_value(v) for v in (True, None, 2, 1.5, {"a": [1]}, "auto")] == [
        "true",
        "null",
        "2",
        "1.5",
        '{"a":[1]}',
        "'auto'",
    ]
    assert json_value("x" * 100) == repr("x" * 64 + "...")
    assert json_value(list(range(100)), limit=10) == "[0,1,2,3,4..."


OPTIONAL_NICK = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "nick": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}


def test_a_strict_schema_openai_refuses_is_refused_in_its_words_for_a_claude_model() -> None:
    """Anthropic takes optional properties in a strict schema; OpenAI's strict mode does not,
    and a client on OpenAI's API learned of it only on OpenAI-protocol models."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages(
            {
                **chat,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "person", "schema": OPTIONAL_NICK, "strict": True},
                },
            }
        )
    assert (caught.value.param, caught.value.code) == ("response_format", None)
    assert caught.value.message == (
        "Invalid schema for response_format 'person': In context=(), 'required' is required "
        "to be supplied and to be an array including every key in properties. Missing 'nick'."
    )
    tool = {"name": "lookup", "parameters": OPTIONAL_NICK, "strict": True}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_messages({**chat, "tools": [{"type": "function", "function": tool}]})
    assert (caught.value.param, caught.value.code) == (
        "tools.[0].function.parameters",  # Chat Completions' notation
        "invalid_function_parameters",
    )
    assert "Invalid schema for function 'lookup'" in caught.value.message
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages(
            {"model": "m", "input": "x", "tools": [{"type": "function", **tool}]}
        )
    assert caught.value.param == "tools[0].parameters"
    strict_format = {"type": "json_schema", "name": "person", "schema": OPTIONAL_NICK}
    with pytest.raises(TranslationError) as caught:
        responses_request_to_messages(
            {"model": "m", "input": "x", "text": {"format": {**strict_format, "strict": True}}}
        )
    assert (caught.value.param, caught.value.code) == ("text.format.schema", "invalid_json_schema")
    assert caught.value.message.startswith("Invalid schema for response_format 'person'")
    # Not strict: OpenAI takes it, and so does the translation.
    relaxed = {**tool, "strict": False}
    chat_request_to_messages({**chat, "tools": [{"type": "function", "function": relaxed}]})
