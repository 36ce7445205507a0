"""Refusals of translated requests, as the client sees them: in the words of the API it
called, naming its own field (`param` set for OpenAI's APIs, the path opening the message
for Anthropic's), never a field the translation renamed it to, and never calling a field
the client sent missing. Each request is refused before any upstream call.

Three models: `claude` (an Anthropic-protocol deployment), `gpt` (OpenAI-protocol, Chat
Completions only), reached by clients of the other APIs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchyard.common.events import ChatFailed, ClientAPI, ErrorInfo
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import Harness, RecordingUpstream, chat_request

TOPICS = Topics(prefix="translate-errors")
CHAT = ClientAPI.OPENAI_CHAT_COMPLETIONS
MESSAGES = ClientAPI.ANTHROPIC_MESSAGES
RESPONSES = ClientAPI.OPENAI_RESPONSES
USER = [{"role": "user", "content": "x"}]
F_TOOL = {"name": "f", "input_schema": {"type": "object"}}
# An assistant turn calling tool `toolu_1`, and a user turn answering it.
ASKED = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
}


def answer(**fields: Any) -> dict[str, Any]:
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok", **fields}
    return {"role": "user", "content": [result]}


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def routing(recorder: RecordingUpstream) -> RoutingTable:
    common = {"max_retries": 0, "timeout_s": 5}
    deployments = {
        "claude": Deployment(
            name="anthropic",
            provider="anthropic",
            model="upstream-claude",
            base_url=recorder.root,
            **common,
        ),
        "gpt": Deployment(
            name="vllm",
            provider="openai",
            model="upstream-gpt",
            base_url=f"{recorder.root}/v1",
            **common,
        ),
    }
    return RoutingTable(
        models={
            name: ModelRoute(name=name, deployments=[deployment])
            for name, deployment in deployments.items()
        }
    )


@pytest.fixture
async def harness(recorder) -> AsyncIterator[Harness]:
    providers = ProviderPool()
    result = await Harness.start(
        TOPICS,
        routing=routing(recorder),
        providers=providers,
        backoff=Backoff(0.01, 0.02),
        deployments=DeploymentStates(BreakerPolicy(failure_threshold=5, cooldown_s=60)),
    )
    yield result
    await result.stop()
    await providers.aclose()


async def refusal(
    harness: Harness, recorder: RecordingUpstream, model: str, api: ClientAPI, body: dict
) -> ErrorInfo:
    """The error the client gets for `body`, checking it is a 400 invalid_request_error
    answered without calling the deployment."""
    reply = await harness.handle(chat_request(model, api=api, body={"model": model, **body}))
    assert isinstance(reply, ChatFailed)
    error = reply.data.error
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert recorder.requests == []
    return error


# --------------------------------------------------------------------------- Responses


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_a_responses_request_without_input_is_refused_naming_input(
    harness, recorder, model
) -> None:
    error = await refusal(harness, recorder, model, RESPONSES, {})
    assert error.message == "Missing required parameter: 'input'."
    assert (error.param, error.code) == ("input", "missing_required_parameter")


@pytest.mark.parametrize("model", ["claude", "gpt"])
@pytest.mark.parametrize(
    ("value", "code", "message"),
    [
        # OpenAI's Responses API takes at least 16, and says so for every integer below
        # it, 0 and negatives included; the translated limits have no such floor.
        (
            -1,
            "integer_below_min_value",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            "but got -1 instead.",
        ),
        (
            0,
            "integer_below_min_value",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            "but got 0 instead.",
        ),
        (
            15,
            "integer_below_min_value",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            "but got 15 instead.",
        ),
        (
            "many",
            "invalid_type",
            "Invalid type for 'max_output_tokens': expected an integer, but got a string instead.",
        ),
    ],
)
async def test_an_invalid_max_output_tokens_is_refused_under_its_own_name(
    harness, recorder, model, value, code, message
) -> None:
    body = {"input": "x", "max_output_tokens": value}
    error = await refusal(harness, recorder, model, RESPONSES, body)
    assert (error.message, error.param, error.code) == (message, "max_output_tokens", code)


@pytest.mark.parametrize("model", ["claude", "gpt"])
@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"tools": "x"}, "tools", "invalid_type"),
        ({"tools": ["x"]}, "tools[0]", "invalid_type"),
        ({"tools": [{"name": "f"}]}, "tools[0].type", "missing_required_parameter"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
        (
            {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function"}},
            "tool_choice.name",
            "missing_required_parameter",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "w"}}},
            "text.format.schema",
            "missing_required_parameter",
        ),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
        # OpenAI requires a json_schema format's name; a translation has no use for it,
        # and never makes one up.
        (
            {"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "text.format.name",
            "missing_required_parameter",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": 7, "schema": {}}}},
            "text.format.name",
            "invalid_type",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}},
            "text.format.name",
            "invalid_value",
        ),
        ({"input": []}, "input", "empty_array"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"include": [{}]}, "include[0]", "invalid_type"),
        ({"include": "x"}, "include", "invalid_type"),
        (
            {"text": {"format": {"type": "json_schema", "name": "w", "schema": "s"}}},
            "text.format.schema",
            "invalid_type",
        ),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": "s"}]},
            "tools[0].parameters",
            "invalid_type",
        ),
        (
            {"tools": [{"type": "function", "name": "get weather"}]},
            "tools[0].name",
            "invalid_value",
        ),
    ],
)
async def test_invalid_responses_fields_are_refused_naming_the_clients_field(
    harness, recorder, model, extra, param, code
) -> None:
    error = await refusal(harness, recorder, model, RESPONSES, {"input": "x", **extra})
    assert (error.param, error.code) == (param, code)
    assert f"'{param}'" in error.message or f"'{param.split('.')[0]}'" in error.message


async def test_a_responses_input_with_nothing_anthropic_can_send_names_input(
    harness, recorder
) -> None:
    error = await refusal(harness, recorder, "claude", RESPONSES, {"input": ""})
    assert (error.param, error.code) == ("input", "unsupported_parameter")
    assert "'input'" in error.message and "messages" not in error.message


async def test_a_responses_tool_choice_naming_no_tool_is_refused(harness, recorder) -> None:
    body = {
        "input": "x",
        "tools": [{"type": "function", "name": "f"}],
        "tool_choice": {"type": "function", "name": "g"},
    }
    error = await refusal(harness, recorder, "claude", RESPONSES, body)
    assert (error.param, error.code) == ("tool_choice.name", "invalid_value")
    assert "'g'" in error.message


async def test_a_responses_tool_choice_requiring_a_tool_needs_tools(harness, recorder) -> None:
    body = {"input": "x", "tool_choice": "required"}
    error = await refusal(harness, recorder, "claude", RESPONSES, body)
    assert (error.param, error.code) == ("tool_choice", "invalid_value")
    assert "'tools'" in error.message


# --------------------------------------------------------------------------- Chat Completions


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_an_invalid_chat_token_limit_is_refused_not_reported_missing(
    harness, recorder, name
) -> None:
    body = {"messages": USER, name: -1}
    error = await refusal(harness, recorder, "claude", CHAT, body)
    assert error.message == (
        f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got -1 instead."
    )
    assert (error.param, error.code) == (name, "integer_below_min_value")


@pytest.mark.parametrize(
    ("extra", "param", "code", "named"),
    [
        (
            {"messages": [{"role": "user"}]},
            "messages.[0].content",
            "missing_required_parameter",
            "messages[0].content",
        ),
        (
            {"messages": [{"content": "x"}]},
            "messages.[0].role",
            "missing_required_parameter",
            "messages[0].role",
        ),
        (
            {"messages": [*USER, {"role": "tool", "content": "3C"}]},
            "messages.[1].tool_call_id",
            "missing_required_parameter",
            "messages[1].tool_call_id",
        ),
        (
            {
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c1", "type": "function", "function": {}}],
                    },
                ]
            },
            "messages.[1].tool_calls.[0].function.name",
            "missing_required_parameter",
            "messages[1].tool_calls[0].function.name",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.[0].content.[0].image_url.url",
            "missing_required_parameter",
            "messages[0].content[0].image_url.url",
        ),
        ({"tools": "x"}, "tools", "invalid_type", "tools"),
        (
            {"tools": [{"type": "function", "function": {}}]},
            "tools.[0].function.name",
            "missing_required_parameter",
            "tools[0].function.name",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {}}},
            "tool_choice.function.name",
            "missing_required_parameter",
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value", "tools"),
        ({"stop": 5}, "stop", "invalid_type", "stop"),
        ({"temperature": "hot"}, "temperature", "invalid_type", "temperature"),
        ({"top_p": 2}, "top_p", "decimal_above_max_value", "top_p"),
        ({"user": 7}, "user", "invalid_type", "user"),
        ({"response_format": "json"}, "response_format", "invalid_type", "response_format"),
        (
            {"response_format": {"type": "yaml"}},
            "response_format.type",
            "invalid_value",
            "yaml",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x" * 65}}},
            "response_format.json_schema.name",
            "invalid_value",
            "64 characters",
        ),
        (
            {"messages": [{"role": "system", "content": "Rules."}]},
            "messages",
            "unsupported_parameter",
            "messages",
        ),
        # Anthropic refuses stop sequences of only whitespace; dropped, the reply would
        # stop elsewhere.
        ({"stop": " "}, "stop", "unsupported_parameter", "whitespace"),
        ({"stop": ["END", "\n"]}, "stop.[1]", "unsupported_parameter", "whitespace"),
        ({"stop": [""]}, "stop.[0]", "unsupported_parameter", "whitespace"),
        (
            {"max_tokens": 5, "max_completion_tokens": 6},
            "max_tokens",
            "invalid_parameter_combination",
            "at the same time",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": "s"},
                }
            },
            "response_format.json_schema.schema",
            "invalid_type",
            "expected an object",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "s"}}]},
            "tools.[0].function.parameters",
            "invalid_type",
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
            "tools.[0].function.name",
            "invalid_value",
            "does not match pattern",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f" * 65}}]},
            "tools.[0].function.name",
            "string_above_max_length",
            "maximum length 64",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
            "tools.[0].function.description",
            "invalid_type",
            "tools[0].function.description",
        ),
        (
            {"tools": [TOOL], "parallel_tool_calls": "yes"},
            "parallel_tool_calls",
            "invalid_type",
            "a boolean",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
            "invalid_value",
            "'g'",
        ),
        ({"reasoning_effort": ["low"]}, "reasoning_effort", "invalid_type", "a string"),
        ({"reasoning_effort": {"a": 1}}, "reasoning_effort", "invalid_type", "an object"),
    ],
)
async def test_invalid_chat_fields_are_refused_naming_the_clients_field(
    harness, recorder, extra, param, code, named
) -> None:
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": USER, **extra})
    assert (error.param, error.code) == (param, code)
    assert named in error.message


# --------------------------------------------------------------------------- Messages


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_tokens": -5}, "max_tokens: Input should be greater than or equal to 0"),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        ({"messages": [{"content": "x"}]}, "messages.0.role: Field required"),
        ({"tools": "x"}, "tools: Input should be a valid array"),
        ({"tools": ["x"]}, "tools.0: Input should be an object"),
        ({"tools": [{"input_schema": {"type": "object"}}]}, "tools.0.name: Field required"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema: Field required"),
        ({"tool_choice": "auto"}, "tool_choice: Input should be an object"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.tool.name: Field required"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid array"),
        ({"temperature": 1.5}, "temperature: range: 0..1"),
        ({"thinking": {"type": "enabled"}}, "thinking.enabled.budget_tokens: Field required"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": -5}},
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1023}},
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "3C"}]}]},
            "messages.0.content.0.tool_result.tool_use_id: Field required",
        ),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]},
                ]
            },
            "messages.1.content.0.tool_use.id: Field required",
        ),
        # What Anthropic refuses and OpenAI would take: refused as Anthropic refuses it.
        ({"stop_sequences": ["END", " "]}, "stop_sequences.1: each stop sequence must contain"),
        ({"stop_sequences": ["\n"]}, "stop_sequences.0: each stop sequence must contain"),
        ({"tools": [{"name": "get weather"}]}, "tools.0.name: String should match pattern"),
        ({"tools": [{"name": "f", "input_schema": "s"}]}, "tools.0.input_schema: Input should"),
        ({"tools": [{"name": "f", "description": 5}]}, "tools.0.description: Input should"),
        (
            {"tools": [F_TOOL], "tool_choice": {"type": "tool", "name": "g"}},
            "tool_choice.name: Tool 'g' not found in provided tools",
        ),
        # Content blocks and parameters of the wrong shape, named as the client sent them.
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": "a"}]}]},
            "messages.0.content.0.document.source: Input should be an object",
        ),
        (
            {"messages": [*USER, ASKED, answer(is_error="false")]},
            "messages.2.content.0.tool_result.is_error: Input should be a valid boolean",
        ),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{**ASKED["content"][0], "input": "x"}]},
                    answer(),
                ]
            },
            "messages.1.content.0.tool_use.input: Input should be an object",
        ),
        (
            {
                "tools": [{"name": "f"}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": 1},
            },
            "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
        ),
        ({"metadata": {"user_id": 5}}, "metadata.user_id: Input should be a valid string"),
        ({"metadata": {"user_id": "u" * 257}}, "metadata.user_id: String should have at most 256"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1024, "x": 1}, "max_tokens": 4096},
            "thinking.enabled.x: Extra inputs are not permitted",
        ),
        ({"tools": [F_TOOL, F_TOOL]}, "tools: Tool names must be unique."),
        ({"tools": [{"name": "f", "strict": "yes"}]}, "tools.0.strict: Input should be a valid"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": "s"}}},
            "output_config.format.schema: Input should be an object",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice: tool_choice may only be specified"),
        (
            {"tool_choice": {"type": "tool", "name": "f"}},
            "tool_choice: tool_choice may only be specified",
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0: all messages must have"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages: text content blocks must be non-empty",
        ),
        ({"messages": [*USER, ASKED, *USER]}, "messages.2: `tool_use` ids were found without"),
        ({"messages": [answer()]}, "messages.0.content.0: unexpected `tool_use_id` found"),
        # What Anthropic takes and OpenAI's Chat Completions cannot.
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences: 5 stop sequences"),
        ({"tools": [{**F_TOOL, "name": "f" * 65}]}, "tools.0.name: a name of 65 characters"),
    ],
)
async def test_invalid_messages_fields_are_refused_in_anthropics_words(
    harness, recorder, extra, message
) -> None:
    body = {"max_tokens": 10, "messages": USER, **extra}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.message.startswith(message)
    # Never the Chat Completions field it would have been sent as.
    for other in ("max_completion_tokens", "function", "stop'", "tool_call"):
        assert other not in error.message


async def test_max_tokens_zero_is_refused_as_what_chat_completions_cannot_do(
    harness, recorder
) -> None:
    """`max_tokens: 0` pre-warms Anthropic's prompt cache: valid in the client's API, so
    `unsupported_parameter` (another deployment may take it), never "invalid"."""
    error = await refusal(harness, recorder, "gpt", MESSAGES, {"max_tokens": 0, "messages": USER})
    assert error.message.startswith("max_tokens: `max_tokens: 0` (pre-warming")
    assert error.code == "unsupported_parameter"


async def test_server_tools_are_refused_naming_the_tool(harness, recorder) -> None:
    body = {
        "max_tokens": 10,
        "messages": USER,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.message.startswith("tools.0: server tools ('web_search_20250305')")
    assert error.code == "unsupported_parameter"  # another deployment may take it


async def test_valid_token_limits_still_reach_the_deployment(harness, recorder) -> None:
    """The checks refuse only what the client's API refuses: a valid limit is sent on,
    renamed."""
    await harness.handle(
        chat_request(
            "claude", api=CHAT, body={"model": "claude", "messages": USER, "max_tokens": 7}
        )
    )
    assert recorder.last.body["max_tokens"] == 7
    body: dict[str, Any] = {"model": "gpt", "max_tokens": 9, "messages": USER}
    await harness.handle(chat_request("gpt", api=MESSAGES, body=body))
    assert recorder.last.body["max_completion_tokens"] == 9


# --------------------------------------------------------------- wrong-typed text fields

COUNT_TOKENS = ClientAPI.ANTHROPIC_COUNT_TOKENS


@pytest.mark.parametrize(
    ("model", "api", "body", "param"),
    [
        # Accepted before and sent as empty text (or as the number): the model read
        # something other than what the client wrote.
        (
            "claude",
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages.[0].content.[0].text",
        ),
        (
            "claude",
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            "input[0].content[0].text",
        ),
        (
            "gpt",
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            "input[0].content[0].text",
        ),
        (
            "gpt",
            RESPONSES,
            {
                "input": [
                    {"role": "assistant", "content": [{"type": "output_text", "text": ["x"]}]},
                    {"role": "user", "content": "x"},
                ]
            },
            "input[0].content[0].text",
        ),
    ],
)
async def test_a_text_part_that_is_not_a_string_is_refused_naming_it(
    harness, recorder, model, api, body, param
) -> None:
    error = await refusal(harness, recorder, model, api, body)
    assert (error.param, error.code) == (param, "invalid_type")


@pytest.mark.parametrize(
    ("model", "api", "body", "param"),
    [
        # A number where text belongs, in every position a translation reads text from.
        (
            "gpt",
            MESSAGES,
            {"max_tokens": 5, "messages": USER, "system": [{"type": "text", "text": 5}]},
            "system.0.text",
        ),
        (
            "gpt",
            COUNT_TOKENS,
            {"messages": USER, "system": [{"type": "text", "text": 5}]},
            "system.0.text",
        ),
        (
            "gpt",
            MESSAGES,
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": 5},
                            }
                        ],
                    }
                ],
            },
            "messages.0.content.0.document.source.text.data",
        ),
        (
            "claude",
            RESPONSES,
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_data": 5}]}]},
            None,
        ),
        (
            "claude",
            RESPONSES,
            {
                "input": [
                    {"role": "system", "content": [{"type": "input_text", "text": 5}]},
                    {"role": "user", "content": "x"},
                ]
            },
            None,
        ),
    ],
)
async def test_a_wrong_typed_text_field_is_a_400_never_a_500(
    harness, recorder, model, api, body, param
) -> None:
    error = await refusal(harness, recorder, model, api, body)
    if param is not None:
        assert error.param == param
    else:
        assert error.code == "invalid_type"


# --------------------------------------------------------------------------- inline data


def _image(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("data:image/png;base64,!!!notbase64", "not valid base64"),
        ("data:image/png;base64,iVBOR", "not valid base64"),  # not padded to 4
        ("data:image/png;base64", "needs a comma"),
        ("data:image/png;base64,", "holds no data"),
        ("data:im age/png;base64,iVBO", "media type"),
        ("javascript:alert(1)", "http(s) URL or a data URL"),
        ("ftp://example.com/cat.png", "http(s) URL or a data URL"),
    ],
)
async def test_a_malformed_image_url_is_refused_naming_it(harness, recorder, url, reason) -> None:
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": [_image(url)]})
    assert (error.param, error.code) == (
        "messages.[0].content.[0].image_url.url",
        "invalid_value",
    )
    assert reason in error.message


async def test_inline_data_reaches_the_deployment_decoded_and_unwrapped(harness, recorder) -> None:
    """Data not marked base64 is percent-decoded before it is encoded; base64 wrapped in
    lines (as some encoders write it) is sent without the line breaks."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png,hello%20world"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO\nRw0K"}},
            ],
        }
    ]
    await harness.handle(
        chat_request("claude", api=CHAT, body={"model": "claude", "messages": messages})
    )
    sources = [block["source"] for block in recorder.last.body["messages"][0]["content"]]
    assert sources == [
        {"type": "base64", "media_type": "image/png", "data": "aGVsbG8gd29ybGQ="},
        {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
    ]


@pytest.mark.parametrize("kind", ["image", "document"])
@pytest.mark.parametrize(
    ("data", "reason"), [("!!!", "invalid base64 data"), (None, "Field required")]
)
async def test_an_anthropic_base64_source_that_is_not_base64_is_refused_in_its_words(
    harness, recorder, kind, data, reason
) -> None:
    source = {"type": "base64", "media_type": "image/png" if kind == "image" else "application/pdf"}
    if data is not None:
        source["data"] = data
    block = {"type": kind, "source": source}
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": [block]}]}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    source_type = "image.source.base64" if kind == "image" else "document.source.base64"
    assert error.message == f"messages.0.content.0.{source_type}.data: {reason}"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "input_image", "image_url": "ftp://example.com/x.png"},
            "input[0].content[0].image_url",
        ),
        (
            {"type": "input_image", "image_url": "data:image/png;base64,%%%"},
            "input[0].content[0].image_url",
        ),
        ({"type": "input_file", "file_data": "not base64!"}, "input[0].content[0].file_data"),
        (
            {"type": "input_file", "file_data": "data:application/pdf;base64,@@"},
            "input[0].content[0].file_data",
        ),
    ],
)
async def test_a_malformed_responses_image_or_file_is_refused_naming_it(
    harness, recorder, part, param
) -> None:
    body = {"input": [{"role": "user", "content": [part]}]}
    error = await refusal(harness, recorder, "claude", RESPONSES, body)
    assert (error.param, error.code) == (param, "invalid_value")


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64,AAAA",
        "data:application/pdf;base64,AAAA",
        "data:;base64,AAAA",
        "data:image/svg+xml;base64,AAAA",
    ],
)
async def test_an_image_of_a_type_anthropic_does_not_take_is_refused(harness, recorder, url):
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": [_image(url)]})
    assert (error.param, error.code) == ("messages.[0].content.[0].image_url.url", "invalid_value")
    assert "image/png" in error.message


async def test_the_base64_marker_and_media_type_are_read_in_any_case(harness, recorder) -> None:
    """RFC 2397 and RFC 2045 tokens are case-insensitive: `;BASE64` is base64, not text
    to encode a second time."""
    url = "data:IMAGE/PNG;BASE64,iVBORw0KGgo="
    await harness.handle(
        chat_request("claude", api=CHAT, body={"model": "claude", "messages": [_image(url)]})
    )
    [block] = recorder.last.body["messages"][0]["content"]
    assert block["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize(
    ("file", "param", "code"),
    [
        ("x", "messages.[0].content.[0].file", "invalid_type"),
        ({"file_data": 123}, "messages.[0].content.[0].file.file_data", "invalid_type"),
        ({"file_data": "!!!!"}, "messages.[0].content.[0].file.file_data", "invalid_value"),
        (
            {"file_data": "data:image/png;base64,AAAA"},
            "messages.[0].content.[0].file.file_data",
            "invalid_value",
        ),
    ],
)
async def test_a_malformed_chat_file_is_refused_naming_it(harness, recorder, file, param, code):
    messages = [{"role": "user", "content": [{"type": "file", "file": file}]}]
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": messages})
    assert (error.param, error.code) == (param, code)


async def test_a_text_file_reaches_anthropic_as_a_text_document(harness, recorder) -> None:
    file = {"file_data": "data:text/plain;base64,aMOpbGxv", "filename": "notes.txt"}
    messages = [{"role": "user", "content": [{"type": "file", "file": file}]}]
    await harness.handle(
        chat_request("claude", api=CHAT, body={"model": "claude", "messages": messages})
    )
    [block] = recorder.last.body["messages"][0]["content"]
    assert block == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "héllo"},
        "title": "notes.txt",
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"type": "base64", "media_type": 123, "data": "AAAA"},
            "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
            "'image/png', 'image/gif' or 'image/webp'",
        ),
        (
            {"type": "base64", "media_type": "text/plain", "data": "AAAA"},
            "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
            "'image/png', 'image/gif' or 'image/webp'",
        ),
        (
            {"type": "url", "url": "file:///etc/passwd"},
            "messages.0.content.0.image.source.url.url: Input should be an http(s) URL",
        ),
        (
            {"type": "url", "url": 123},
            "messages.0.content.0.image.source.url.url: Input should be a valid string",
        ),
    ],
)
async def test_an_anthropic_image_source_is_checked_before_it_is_sent(
    harness, recorder, source, message
) -> None:
    body = {
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}],
    }
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.message == message


async def test_an_anthropic_pdf_of_another_type_is_refused(harness, recorder) -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    body = {
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "document", "source": source}]}],
    }
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert (
        error.message == "messages.0.content.0.document.source.base64.media_type: Input should be "
        "'application/pdf'"
    )


async def test_a_thinking_budget_above_max_tokens_is_sent_with_interleaved_thinking(
    harness, recorder
) -> None:
    """Anthropic takes a budget above max_tokens with interleaved thinking (a beta
    header), and refuses it without, in its own words."""
    body = {
        "model": "gpt",
        "max_tokens": 2000,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
    }
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.param == "max_tokens"
    assert error.message.startswith(
        "max_tokens: must be greater than thinking.budget_tokens unless interleaved thinking"
    )

    beta = {"anthropic-beta": "claude-code-20250219, interleaved-thinking-2025-05-14"}
    await harness.handle(chat_request("gpt", api=MESSAGES, body=body, headers=beta))
    assert recorder.last.body["reasoning_effort"] == "low"


async def test_a_responses_image_may_ask_for_its_original_detail(harness, recorder) -> None:
    part = {"type": "input_image", "image_url": "https://x/cat.png", "detail": "original"}
    body = {"model": "claude", "input": [{"role": "user", "content": [part]}]}
    await harness.handle(chat_request("claude", api=RESPONSES, body=body))
    [block] = recorder.last.body["messages"][0]["content"]
    assert block == {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"type": "input_file", "file_data": 123}, "input[0].content[0].file_data", "invalid_type"),
        ({"type": "input_file", "file_url": 123}, "input[0].content[0].file_url", "invalid_type"),
        (
            {"type": "input_file", "file_url": "file:///etc/passwd"},
            "input[0].content[0].file_url",
            "invalid_value",
        ),
        (
            {"type": "input_image", "image_url": "data:text/html;base64,AAAA"},
            "input[0].content[0].image_url",
            "invalid_value",
        ),
    ],
)
async def test_a_responses_file_or_image_of_the_wrong_kind_is_refused(
    harness, recorder, part, param, code
) -> None:
    body = {"input": [{"role": "user", "content": [part]}]}
    error = await refusal(harness, recorder, "claude", RESPONSES, body)
    assert (error.param, error.code) == (param, code)


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        (
            {"type": "file", "file": {"file_data": "data:text/plain,hi", "filename": 123}},
            "messages.[0].content.[0].file.filename",
            "invalid_type",
        ),
        (
            {"type": "image_url", "image_url": "https://x/cat.png"},
            "messages.[0].content.[0].image_url",
            "invalid_type",
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "bogus"}},
            "messages.[0].content.[0].image_url.detail",
            "invalid_value",
        ),
    ],
)
async def test_a_chat_parts_other_fields_are_checked_too(harness, recorder, part, param, code):
    messages = [{"role": "user", "content": [part]}]
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": messages})
    assert (error.param, error.code) == (param, code)


async def test_a_data_url_scheme_is_read_in_any_case(harness, recorder) -> None:
    url = "DATA:image/png;base64,iVBORw0KGgo="
    await harness.handle(
        chat_request("claude", api=CHAT, body={"model": "claude", "messages": [_image(url)]})
    )
    [block] = recorder.last.body["messages"][0]["content"]
    assert block["source"]["type"] == "base64"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {
                "type": "document",
                "title": 5,
                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            },
            "messages.0.content.0.document.title: Input should be a valid string",
        ),
        (
            {"type": "document", "source": {"type": "text", "data": "x"}},
            "messages.0.content.0.document.source.text.media_type: Field required",
        ),
        (
            {"type": "document", "source": {"type": "content", "content": 5}},
            "messages.0.content.0.document.source.content.content: Input should be a valid array",
        ),
        (
            {"type": "document", "source": {"type": "content"}},
            "messages.0.content.0.document.source.content.content: Field required",
        ),
        (
            {
                "type": "document",
                "source": {
                    "type": "content",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "!!"},
                        }
                    ],
                },
            },
            "messages.0.content.0.source.content.0: 'image' blocks in a document's content "
            "cannot be sent to this model; only text blocks can.",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": 5}},
            "messages.0.content.0.image.source.base64.data: Input should be a valid string",
        ),
    ],
)
async def test_an_anthropic_documents_fields_are_checked_before_it_is_sent(
    harness, recorder, block, message
) -> None:
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": [block]}]}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.message == message


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        (
            {"type": "input_file", "file_data": "JVBERi0x", "filename": 7},
            "input[0].content[0].filename",
            "invalid_type",
        ),
        (
            {"type": "input_image", "image_url": "https://x/cat.png", "detail": "bogus"},
            "input[0].content[0].detail",
            "invalid_value",
        ),
    ],
)
async def test_a_responses_parts_other_fields_are_checked_too(harness, recorder, part, param, code):
    body = {"input": [{"role": "user", "content": [part]}]}
    error = await refusal(harness, recorder, "claude", RESPONSES, body)
    assert (error.param, error.code) == (param, code)


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_a_truncation_responses_does_not_take_is_refused_as_responses_refuses_it(
    harness, recorder, model
) -> None:
    body = {"input": "x", "truncation": "bogus"}
    error = await refusal(harness, recorder, model, RESPONSES, body)
    assert (error.param, error.code) == ("truncation", "invalid_value")
    assert "'bogus'" in error.message and "'auto' and 'disabled'" in error.message


async def test_more_stop_strings_than_openai_takes_are_refused_to_a_chat_client(
    harness, recorder
) -> None:
    five = ["a", "b", "c", "d", "e"]
    # OpenAI's own limit, which Anthropic would not enforce. (The other way, an OpenAI-
    # compatible server may take more than four `stop_sequences`: they are sent on.)
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": USER, "stop": five})
    assert error.message == (
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
        "array with length 5 instead."
    )
    assert (error.param, error.code) == ("stop", "array_above_max_length")


async def test_thinking_between_tools_is_refused_as_not_expressible_not_as_invalid(
    harness, recorder
) -> None:
    body = {"max_tokens": 16, "messages": USER, "thinking": {"type": "between_tools"}}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert (error.param, error.code) == ("thinking.type", "unsupported_parameter")


# ------------------------------------------------------------------ calls and their answers


def _called(call_id: str = "call_1", name: str = "f") -> dict[str, Any]:
    function = {"name": name, "arguments": "{}"}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


def _tool(call_id: str = "call_1") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "ok"}


@pytest.mark.parametrize(
    ("messages", "param", "named"),
    [
        ([*USER, _called()], "messages.[1].role", "did not have response messages: call_1"),
        ([*USER, _called(), *USER], "messages.[1].role", "did not have response messages"),
        ([*USER, _tool()], "messages.[1].role", "must be a response to a preceeding message"),
        ([*USER, _called(), _tool("call_9")], "messages.[2].tool_call_id", "'call_9' not found"),
        ([*USER, _called(name="")], "messages.[1].tool_calls.[0].function.name", "empty string"),
    ],
)
async def test_chat_tool_messages_that_do_not_answer_their_calls_are_refused_in_openais_words(
    harness, recorder, messages, param, named
) -> None:
    """OpenAI refuses these; translated, Anthropic would refuse them naming its own
    fields (`messages.2: tool_use ids were found without tool_result blocks`)."""
    error = await refusal(harness, recorder, "claude", CHAT, {"messages": messages})
    assert error.param == param
    assert named in error.message


def _call(call_id: Any = "call_1", **fields: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}", **fields}


def _output(call_id: Any = "call_1", output: Any = "ok") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


@pytest.mark.parametrize("model", ["claude", "gpt"])
@pytest.mark.parametrize(
    ("items", "param", "code", "named"),
    [
        ([*USER, _call()], "input", "invalid_value", "No tool output found for function call"),
        ([*USER, _output()], "input", "invalid_value", "No tool call found for function call"),
        ([*USER, _call(5), _output(5)], "input[1].call_id", "invalid_type", "a string"),
        (
            [*USER, _call(arguments=None), _output()],
            "input[1].arguments",
            "missing_required_parameter",
            "arguments",
        ),
        ([*USER, _call(name=""), _output()], "input[1].name", "empty_string", "empty string"),
        ([*USER, _call(), _output(output=[5])], "input[2].output[0]", "invalid_type", "an object"),
    ],
)
async def test_responses_calls_and_outputs_that_do_not_pair_are_refused_in_openais_words(
    harness, recorder, model, items, param, code, named
) -> None:
    error = await refusal(harness, recorder, model, RESPONSES, {"input": items})
    assert (error.param, error.code) == (param, code)
    assert named in error.message


# ------------------------------------------- tool choices and tool history across the APIs
# What one API takes without tools and the other refuses: Chat Completions refuses
# `tool_choice` and `parallel_tool_calls` without `tools`; Anthropic refuses `tool_use` and
# `tool_result` blocks in a request that defines no tools.

NO_TOOLS: list[dict[str, Any]] = [{}, {"tools": []}]


@pytest.mark.parametrize("tools", NO_TOOLS)
@pytest.mark.parametrize(
    "choice",
    [
        {"type": "auto"},
        {"type": "none"},
        {"type": "auto", "disable_parallel_tool_use": True},
        {"type": "none", "disable_parallel_tool_use": True},
    ],
)
async def test_an_anthropic_tool_choice_without_tools_reaches_chat_completions_as_nothing(
    harness, recorder, tools, choice
) -> None:
    body = {"model": "gpt", "max_tokens": 9, "messages": USER, "tool_choice": choice, **tools}
    await harness.handle(chat_request("gpt", api=MESSAGES, body=body))
    sent = recorder.last.body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent), sent


@pytest.mark.parametrize("tools", NO_TOOLS)
@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "f"}])
async def test_an_anthropic_tool_choice_needing_a_tool_without_tools_is_refused(
    harness, recorder, tools, choice
) -> None:
    body = {"max_tokens": 9, "messages": USER, "tool_choice": choice, **tools}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    # Anthropic's own words.
    assert error.message == "tool_choice: tool_choice may only be specified while providing tools."


@pytest.mark.parametrize("tools", NO_TOOLS)
@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "auto"},
        {"tool_choice": "none"},
        {"parallel_tool_calls": True},
        {"parallel_tool_calls": False},
        {"tool_choice": "auto", "parallel_tool_calls": False},
    ],
)
async def test_a_responses_tool_choice_without_tools_reaches_chat_completions_as_nothing(
    harness, recorder, tools, fields
) -> None:
    body = {"model": "gpt", "input": "x", **fields, **tools}
    await harness.handle(chat_request("gpt", api=RESPONSES, body=body))
    sent = recorder.last.body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent), sent


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "name": "f"}], ids=["required", "named"]
)
async def test_a_responses_tool_choice_needing_a_tool_is_refused_for_chat_completions(
    harness, recorder, choice
) -> None:
    error = await refusal(
        harness, recorder, "gpt", RESPONSES, {"input": "x", "tool_choice": choice}
    )
    assert (error.param, error.code) == ("tool_choice", "invalid_value")
    assert "'tools'" in error.message


async def test_responses_tools_and_choices_still_reach_chat_completions() -> None:
    """With tools, the choice and `parallel_tool_calls` go on as the client sent them."""
    from switchyard.inference.translate_responses import responses_request_to_chat

    sent = responses_request_to_chat(
        {
            "model": "gpt",
            "input": "x",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["f"]


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A Chat Completions assistant message's tool call."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CHAT_TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            function_call("call_1", "get_weather", '{"city": "Paris"}'),
            function_call("call_2", "get_time", "{}"),
            function_call("call_3", "get_weather", '{"city": "Lyon"}'),
        ],
    },
    *(
        {"role": "tool", "tool_call_id": call_id, "content": content}
        for call_id, content in (("call_1", "18C"), ("call_2", "noon"), ("call_3", "20C"))
    ),
    {"role": "user", "content": "Summarise."},
]
RESPONSES_TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
    {"role": "user", "content": "Summarise."},
]


def history_tools(sent: dict[str, Any]) -> list[str]:
    """The tools offered with `sent`, checking each is a history tool the model may not
    call."""
    from switchyard.inference.translate import HISTORY_TOOL_DESCRIPTION

    assert sent["tool_choice"] == {"type": "none"}
    for tool in sent["tools"]:
        assert tool["input_schema"] == {"type": "object"}
        assert tool["description"] == HISTORY_TOOL_DESCRIPTION
    return [tool["name"] for tool in sent["tools"]]


async def test_a_chat_tool_history_without_tools_reaches_anthropic_with_its_tools(
    harness, recorder
) -> None:
    body = {"model": "claude", "messages": CHAT_TOOL_HISTORY}
    await harness.handle(chat_request("claude", api=CHAT, body=body))
    sent = recorder.last.body
    assert history_tools(sent) == ["get_weather", "get_time"]
    kinds = [
        block["type"]
        for turn in sent["messages"]
        if isinstance(turn["content"], list)
        for block in turn["content"]
    ]
    assert (kinds.count("tool_use"), kinds.count("tool_result")) == (3, 3)


async def test_a_responses_tool_history_without_tools_reaches_anthropic_with_its_tools(
    harness, recorder
) -> None:
    body = {"model": "claude", "input": RESPONSES_TOOL_HISTORY}
    await harness.handle(chat_request("claude", api=RESPONSES, body=body))
    assert history_tools(recorder.last.body) == ["get_weather"]


async def test_a_tool_history_with_tools_reaches_anthropic_with_the_clients_tools_only(
    harness, recorder
) -> None:
    body = {
        "model": "claude",
        "messages": CHAT_TOOL_HISTORY,
        "tools": [TOOL],
        "tool_choice": "auto",
    }
    await harness.handle(chat_request("claude", api=CHAT, body=body))
    sent = recorder.last.body
    assert [tool["name"] for tool in sent["tools"]] == ["f"]
    assert sent["tool_choice"] == {"type": "auto"}
    plain = {"model": "claude", "messages": USER}
    await harness.handle(chat_request("claude", api=CHAT, body=plain))
    assert "tools" not in recorder.last.body and "tool_choice" not in recorder.last.body


async def test_a_large_request_is_translated_off_the_event_loop(harness, recorder, monkeypatch):
    """Translating walks every message: a request of thousands is built in a worker
    thread (one of 300,000 took over a second of the event loop), a small one where it
    is; both reach the deployment whole."""
    import threading

    from switchyard.inference import attempts
    from switchyard.inference.attempts import LARGE_REQUEST_ITEMS

    threads: list[str] = []
    real = attempts.Attempts._prepare

    def recorded(self, run, deployment):
        threads.append(threading.current_thread().name)
        return real(self, run, deployment)

    monkeypatch.setattr(attempts.Attempts, "_prepare", recorded)
    turns = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": f"turn {index}"}
        for index in range(LARGE_REQUEST_ITEMS + 1)
    ]
    for messages in (turns, USER):
        body = {"model": "claude", "messages": messages}
        await harness.handle(chat_request("claude", api=CHAT, body=body))
        assert len(recorder.last.body["messages"]) == len(messages)
    main = threading.main_thread().name
    assert threads[0] != main and threads[1] == main


@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ("bash_20250124", "bash"),
        ("text_editor_20250728", "str_replace_based_edit_tool"),
        ("computer_20250124", "computer"),
        ("memory_20250818", "memory"),
    ],
)
async def test_anthropic_defined_client_tools_are_refused_as_such(
    harness, recorder, tool, name
) -> None:
    # The client runs these; only their schema is Anthropic's: never called server tools.
    body = {"max_tokens": 10, "messages": USER, "tools": [{"type": tool, "name": name}]}
    error = await refusal(harness, recorder, "gpt", MESSAGES, body)
    assert error.message.startswith(f"tools.0: Anthropic-defined tools ('{tool}')")
    assert "custom tool with an input_schema" in error.message
    assert error.code == "unsupported_parameter"
