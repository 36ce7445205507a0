"""The simulator judges the types and ranges of each endpoint's documented parameters as the
real API does, and answers a broken one in that API's own error body: OpenAI's names the
`param` and its `code`, Anthropic's names the field in its message. A value on the boundary
of every range is accepted. What the APIs refuse of a well-typed body is refused too: a
field Anthropic does not know, base64 image data that does not decode, an output limit above
the model's, an argument Embeddings does not take. Served in process: no network."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from switchyard.simulator.app import create_simulator_app

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
INPUT_TOKENS = "/v1/responses/input_tokens"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"

# The smallest valid body of each route; a case adds its parameters to it.
VALID: dict[str, dict[str, Any]] = {
    CHAT: {"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]},
    RESPONSES: {"model": "sim-small", "input": "Hi"},
    INPUT_TOKENS: {"model": "sim-small", "input": "Hi"},
    EMBEDDINGS: {"model": "sim-embed", "input": "Hi"},
    MESSAGES: {
        "model": "sim-small",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Hi"}],
    },
    COUNT_TOKENS: {"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]},
}
LOGPROBS = {"logprobs": True}
FIVE_STOPS = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(create_simulator_app()) as client:
        yield client


def post(http: TestClient, route: str, extra: dict[str, Any], drop: str | None = None) -> Any:
    body = {**VALID[route], **extra}
    if drop is not None:
        del body[drop]
    return http.post(route, json=body)


class AnyString(str):
    """Equal to any non-empty string: the message is asserted where it is the point."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


def openai_body(param: str | None, code: str | None, message: str | None = None) -> dict:
    return {
        "error": {
            "message": AnyString() if message is None else message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def anthropic_body(message: str) -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


# ------------------------------------------------------------------ OpenAI ranges and types

# (route, parameter, refused value, OpenAI's code, a boundary value accepted, other params)
OPENAI_RULES = [
    (CHAT, "temperature", 2.01, "decimal_above_max_value", 2, {}),
    (CHAT, "temperature", -0.01, "decimal_below_min_value", 0, {}),
    (CHAT, "temperature", "hot", "invalid_type", 1.5, {}),
    (CHAT, "temperature", True, "invalid_type", 0.0, {}),
    (CHAT, "top_p", 2, "decimal_above_max_value", 1, {}),
    (CHAT, "top_p", -0.5, "decimal_below_min_value", 0, {}),
    (CHAT, "top_p", "wide", "invalid_type", 0.5, {}),
    (CHAT, "presence_penalty", 2.5, "decimal_above_max_value", 2, {}),
    (CHAT, "presence_penalty", -2.5, "decimal_below_min_value", -2, {}),
    (CHAT, "frequency_penalty", 3, "decimal_above_max_value", 2.0, {}),
    (CHAT, "frequency_penalty", -3, "decimal_below_min_value", -2.0, {}),
    (CHAT, "n", 0, "integer_below_min_value", 1, {}),
    (CHAT, "n", 129, "integer_above_max_value", 128, {}),
    (CHAT, "n", 2.0, "invalid_type", 2, {}),
    (CHAT, "n", True, "invalid_type", 3, {}),
    (CHAT, "max_tokens", 0, "integer_below_min_value", 1, {}),
    (CHAT, "max_tokens", "5", "invalid_type", 5, {}),
    (CHAT, "max_completion_tokens", 0, "integer_below_min_value", 1, {}),
    (CHAT, "max_completion_tokens", 1.5, "invalid_type", 2, {}),
    (CHAT, "top_logprobs", 21, "integer_above_max_value", 20, LOGPROBS),
    (CHAT, "top_logprobs", -1, "integer_below_min_value", 0, LOGPROBS),
    (CHAT, "logprobs", "yes", "invalid_type", False, {}),
    (CHAT, "seed", 1.5, "invalid_type", -7, {}),
    (CHAT, "seed", "42", "invalid_type", 0, {}),
    (CHAT, "stop", FIVE_STOPS, "array_above_max_length", FIVE_STOPS[:4], {}),
    (CHAT, "stop", 7, "invalid_type", "ZZ", {}),
    (CHAT, "stream", "yes", "invalid_type", False, {}),
    (CHAT, "reasoning_effort", "bogus", "invalid_value", "xhigh", {}),
    (CHAT, "service_tier", "bogus", "invalid_value", "flex", {}),
    (CHAT, "verbosity", "loud", "invalid_value", "low", {}),
    (RESPONSES, "service_tier", 1, "invalid_type", "priority", {}),
    (RESPONSES, "temperature", 2.5, "decimal_above_max_value", 2, {}),
    (RESPONSES, "temperature", -1, "decimal_below_min_value", 0, {}),
    (RESPONSES, "top_p", 1.5, "decimal_above_max_value", 1, {}),
    (RESPONSES, "top_p", "x", "invalid_type", 0, {}),
    (RESPONSES, "max_output_tokens", 15, "integer_below_min_value", 16, {}),
    (RESPONSES, "max_output_tokens", 16.5, "invalid_type", 17, {}),
    (RESPONSES, "top_logprobs", 21, "integer_above_max_value", 20, {}),
    (RESPONSES, "top_logprobs", -1, "integer_below_min_value", 0, {}),
    (RESPONSES, "truncation", "sometimes", "invalid_value", "disabled", {}),
    (INPUT_TOKENS, "truncation", "sometimes", "invalid_value", "auto", {}),
    (INPUT_TOKENS, "parallel_tool_calls", "yes", "invalid_type", True, {}),
    (EMBEDDINGS, "dimensions", 0, "integer_below_min_value", 1, {}),
    (EMBEDDINGS, "dimensions", "8", "invalid_type", 16, {}),
    (EMBEDDINGS, "encoding_format", "hex", "invalid_value", "base64", {}),
    (EMBEDDINGS, "encoding_format", 1, "invalid_type", "float", {}),
]


@pytest.mark.parametrize(
    ("route", "name", "refused", "code", "boundary", "others"),
    OPENAI_RULES,
    ids=[f"{route}-{name}-{refused!r}" for route, name, refused, *_ in OPENAI_RULES],
)
def test_openai_parameters_out_of_range_or_of_the_wrong_type_are_refused_naming_them(
    http, route, name, refused, code, boundary, others
):
    response = post(http, route, {**others, name: refused})

    assert response.status_code == 400
    assert response.json() == openai_body(name, code)

    assert post(http, route, {**others, name: boundary}).status_code == 200


@pytest.mark.parametrize("route", [CHAT, RESPONSES, EMBEDDINGS])
def test_a_null_openai_parameter_is_the_default(http, route):
    assert post(http, route, {"temperature": None, "dimensions": None}).status_code == 200


@pytest.mark.parametrize(
    ("extra", "param", "code", "message"),
    [
        (
            {"top_p": 2},
            "top_p",
            "decimal_above_max_value",
            "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 2 "
            "instead.",
        ),
        (
            {"n": 0},
            "n",
            "integer_below_min_value",
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        ),
        (
            {"temperature": "hot"},
            "temperature",
            "invalid_type",
            "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        ),
        (
            {"stop": FIVE_STOPS},
            "stop",
            "array_above_max_length",
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got "
            "an array with length 5 instead.",
        ),
        (
            {"logit_bias": {"50256": 101}},
            "logit_bias.50256",
            "integer_above_max_value",
            "Invalid 'logit_bias.50256': integer above maximum value. Expected a value <= 100, "
            "but got 101 instead.",
        ),
        (
            {"top_logprobs": 2},
            "top_logprobs",
            None,
            "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.",
        ),
        (
            {"messages": [{"role": "bogus", "content": "Hi"}]},
            "messages[0].role",
            "invalid_value",
            "Invalid value: 'bogus'. Supported values are: 'system', 'assistant', 'user', "
            "'function', 'tool', and 'developer'.",
        ),
        (
            {"messages": [{"content": "Hi"}]},
            "messages[0].role",
            "missing_required_parameter",
            "Missing required parameter: 'messages[0].role'.",
        ),
        (
            {"messages": []},
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
        ),
        (
            {"response_format": {"type": "xml"}},
            "response_format.type",
            "invalid_value",
            "Invalid value: 'xml'. Supported values are: 'json_object', 'json_schema', and 'text'.",
        ),
    ],
)
def test_chat_completions_errors_are_worded_as_openai_words_them(http, extra, param, code, message):
    response = post(http, CHAT, extra)

    assert response.status_code == 400
    assert response.json() == openai_body(param, code, message)


def test_logit_bias_is_accepted_on_its_bounds(http):
    assert post(http, CHAT, {"logit_bias": {"1": -100, "2": 100}}).status_code == 200
    response = post(http, CHAT, {"logit_bias": {"1": -101}})
    assert response.json() == openai_body("logit_bias.1", "integer_below_min_value")


def test_a_missing_model_is_refused_without_a_param_as_openai_does(http):
    response = post(http, CHAT, {}, drop="model")

    assert response.status_code == 400
    assert response.json() == openai_body(None, None, "you must provide a model parameter")


def test_missing_messages_name_the_parameter(http):
    response = post(http, CHAT, {}, drop="messages")

    assert response.json() == openai_body(
        "messages", "missing_required_parameter", "Missing required parameter: 'messages'."
    )


def test_a_parameter_the_token_count_does_not_take_is_an_unknown_parameter(http):
    response = post(http, INPUT_TOKENS, {"temperature": 0.5})

    assert response.json() == openai_body(
        "temperature", "unknown_parameter", "Unknown parameter: 'temperature'."
    )


def test_invalid_responses_items_name_the_field_at_fault(http):
    response = post(http, RESPONSES, {"input": [{"role": "robot", "content": "Hi"}]})
    assert response.json() == openai_body("input[0].role", "invalid_value")

    response = post(http, RESPONSES, {"input": [{"type": "message", "role": "user"}]})
    assert response.json() == openai_body("input[0].content", "missing_required_parameter")


@pytest.mark.parametrize(
    ("fault", "param"),
    [
        ({"status": 200}, "status"),
        ({"count": 0}, "count"),
        ({"retry_after": -1}, "retry_after"),
        ({"should_retry": "no"}, "should_retry"),
        ({"model": 7}, "model"),
        ({"stream_error_after": -1}, "stream_error_after"),
        ({"error_type": 7}, "error_type"),
    ],
)
def test_control_api_errors_name_the_field_at_fault(http, fault, param):
    response = http.post("/_sim/faults", json=fault)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# ------------------------------------------------------------------ Anthropic ranges and types

# (route, parameter, refused value, Anthropic's message, a boundary value accepted, others)
ANTHROPIC_RULES = [
    (MESSAGES, "max_tokens", -1, "max_tokens: Input should be greater than or equal to 0", 0, {}),
    (MESSAGES, "max_tokens", "5", "max_tokens: Input should be a valid integer", 5, {}),
    (MESSAGES, "max_tokens", True, "max_tokens: Input should be a valid integer", 2, {}),
    (MESSAGES, "temperature", 1.01, "temperature: range: 0..1", 1, {}),
    (MESSAGES, "temperature", -0.01, "temperature: range: 0..1", 0, {}),
    (MESSAGES, "temperature", "x", "temperature: Input should be a valid number", 0.5, {}),
    (MESSAGES, "temperature", None, "temperature: Input should be a valid number", 1.0, {}),
    (MESSAGES, "top_p", 1.5, "top_p: range: 0..1", 1, {}),
    (MESSAGES, "top_p", -1, "top_p: range: 0..1", 0, {}),
    (MESSAGES, "top_k", -1, "top_k: Input should be greater than or equal to 0", 0, {}),
    (MESSAGES, "top_k", 2.5, "top_k: Input should be a valid integer", 40, {}),
    (MESSAGES, "stop_sequences", "ZZ", "stop_sequences: Input should be a valid array", [], {}),
    (
        MESSAGES,
        "stop_sequences",
        [1],
        "stop_sequences.0: Input should be a valid string",
        ["ZZ"],
        {},
    ),
    (MESSAGES, "stream", "yes", "stream: Input should be a valid boolean", False, {}),
    (
        MESSAGES,
        "thinking",
        {"type": "enabled", "budget_tokens": 1023},
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        {"type": "enabled", "budget_tokens": 1024},
        {"max_tokens": 1025},
    ),
    (
        MESSAGES,
        "thinking",
        {"type": "enabled", "budget_tokens": 1024},
        "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
        "documentation at https://docs.claude.com/en/docs/build-with-claude/"
        "extended-thinking#max-tokens-and-context-window-size",
        {"type": "disabled"},
        {"max_tokens": 1024},
    ),
    (MESSAGES, "thinking", "on", "thinking: Input should be an object", {"type": "adaptive"}, {}),
    # With thinking on, sampling stays at its defaults (top_p may go down to 0.95).
    (
        MESSAGES,
        "temperature",
        0.5,
        "temperature: may only be set to 1 when thinking is enabled.",
        1,
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
    ),
    (
        MESSAGES,
        "top_p",
        0.9,
        "top_p: must be greater than or equal to 0.95 or unset when thinking is enabled.",
        0.95,
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
    ),
    (
        COUNT_TOKENS,
        "thinking",
        {"type": "enabled", "budget_tokens": 1000},
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        {"type": "enabled", "budget_tokens": 1024},
        {},
    ),
]


@pytest.mark.parametrize(
    ("route", "name", "refused", "message", "boundary", "others"),
    ANTHROPIC_RULES,
    ids=[f"{route}-{name}-{refused!r}" for route, name, refused, *_ in ANTHROPIC_RULES],
)
def test_anthropic_parameters_out_of_range_or_of_the_wrong_type_are_refused_naming_them(
    http, route, name, refused, message, boundary, others
):
    response = post(http, route, {**others, name: refused})

    assert response.status_code == 400
    assert response.json() == anthropic_body(message)

    assert post(http, route, {**others, name: boundary}).status_code == 200


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        ("max_tokens", {}, "max_tokens: Field required"),
        ("model", {}, "model: Field required"),
        ("messages", {}, "messages: Field required"),
        (None, {"messages": []}, "messages: at least one message is required"),
        (None, {"messages": "Hi"}, "messages: Input should be a valid array"),
        (None, {"messages": [{"content": "Hi"}]}, "messages.0.role: Field required"),
        (
            None,
            {"messages": [{"role": "robot", "content": "Hi"}]},
            'messages: Unexpected role "robot". Allowed roles are "user" or "assistant"',
        ),
    ],
)
def test_anthropic_required_fields_are_worded_as_anthropic_words_them(http, drop, extra, message):
    response = post(http, MESSAGES, extra, drop=drop)

    assert response.status_code == 400
    assert response.json() == anthropic_body(message)


def test_count_tokens_takes_no_max_tokens(http):
    response = post(http, COUNT_TOKENS, {})

    assert response.status_code == 200
    assert response.json() == {"input_tokens": 1}


def test_top_k_is_refused_with_thinking_enabled_and_taken_without(http):
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}
    response = post(http, MESSAGES, {**thinking, "top_k": 5})

    assert response.status_code == 400
    assert response.json() == anthropic_body("top_k: must be unset when thinking is enabled.")
    assert post(http, MESSAGES, thinking).status_code == 200
    assert post(http, MESSAGES, {"top_k": 5}).status_code == 200


@pytest.mark.parametrize(
    ("field", "refused", "accepted"),
    [
        ("reasoning", {"effort": "bogus"}, {"effort": "minimal", "summary": "auto"}),
        ("reasoning", {"summary": "long"}, {"summary": "detailed"}),
        ("text", {"verbosity": "loud"}, {"verbosity": "high", "format": {"type": "text"}}),
    ],
)
def test_a_responses_option_outside_its_values_is_refused_naming_its_path(
    http, field, refused, accepted
):
    response = post(http, RESPONSES, {field: refused})

    assert response.status_code == 400
    (key,) = refused
    assert response.json() == openai_body(f"{field}.{key}", "invalid_value")
    assert post(http, RESPONSES, {field: accepted}).status_code == 200


@pytest.mark.parametrize(
    ("route", "extra"),
    [
        # Values the installed official SDKs list (openai's `ReasoningEffort`, Chat
        # Completions' and Responses' `service_tier`, anthropic's `ThinkingConfigParam`).
        (CHAT, {"reasoning_effort": "max"}),
        (CHAT, {"service_tier": "fast"}),
        (RESPONSES, {"service_tier": "ultrafast"}),
        (RESPONSES, {"reasoning": {"effort": "max"}}),
        (MESSAGES, {"thinking": {"type": "between_tools"}}),
    ],
)
def test_every_value_the_official_sdks_send_is_taken(http, route, extra):
    assert post(http, route, extra).status_code == 200


# ------------------------------------------------------------------ shapes of structured fields

# Values of every JSON type, and objects of the wrong shape inside the structured fields.
WRONG_VALUES = [
    5,
    1.5,
    "s",
    True,
    [],
    [5],
    [{}],
    {},
    {"type": 5},
    {"type": "json_schema", "json_schema": "s"},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": "s"}},
]
STRUCTURED_FIELDS = {
    CHAT: ["messages", "tools", "tool_choice", "response_format", "metadata", "stop"],
    RESPONSES: ["input", "tools", "tool_choice", "text", "include", "instructions", "metadata"],
    INPUT_TOKENS: ["input", "tools", "tool_choice", "text", "instructions", "conversation"],
    EMBEDDINGS: ["input"],
    MESSAGES: ["messages", "tools", "tool_choice", "system", "metadata", "stop_sequences"],
    COUNT_TOKENS: ["messages", "tools", "tool_choice", "system"],
}
SHAPE_CASES = [
    (route, name, value, stream)
    for route, names in STRUCTURED_FIELDS.items()
    for name in names
    for value in WRONG_VALUES
    for stream in ((False, True) if route in (CHAT, RESPONSES, MESSAGES) else (False,))
]


def test_no_shape_of_a_structured_field_makes_the_simulator_fail(http):
    """A provider answers a malformed field with 400, never 500: a 500 would be counted
    against the deployment's circuit breaker as the provider's own failure."""
    failures = []
    for route, name, value, stream in SHAPE_CASES:
        body = {**VALID[route], name: value, **({"stream": True} if stream else {})}
        response = http.post(route, json=body)
        if response.status_code >= 500:
            failures.append((route, name, value, stream, response.status_code))

    assert failures == []


@pytest.mark.parametrize(
    ("route", "extra", "param", "code"),
    [
        (CHAT, {"tools": 5}, "tools", "invalid_type"),
        (
            CHAT,
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            CHAT,
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "s"}}]},
            "tools[0].function.parameters",
            "invalid_type",
        ),
        (
            CHAT,
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 1}}},
            "response_format.json_schema.schema",
            "invalid_type",
        ),
        (CHAT, {"metadata": {"k": 5}}, "metadata.k", "invalid_type"),
        (
            CHAT,
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "object_above_max_properties",
        ),
        (CHAT, {"metadata": {"k": "v" * 513}}, "metadata.k", "string_above_max_length"),
        (
            CHAT,
            {"max_tokens": 5, "max_completion_tokens": 6},
            "max_tokens",
            "invalid_parameter_combination",
        ),
        (
            CHAT,
            {
                "tools": [{"type": "function", "function": {"name": "a"}}],
                "tool_choice": {"type": "function", "function": {"name": "b"}},
            },
            "tool_choice",
            "invalid_value",
        ),
        (RESPONSES, {"tools": 5}, "tools", "invalid_type"),
        (RESPONSES, {"include": [{}]}, "include[0]", "invalid_type"),
        (
            RESPONSES,
            {"text": {"format": {"type": "json_schema", "name": "a", "schema": "s"}}},
            "text.format.schema",
            "invalid_type",
        ),
        (
            RESPONSES,
            {"previous_response_id": "resp_1", "conversation": "conv_1"},
            None,
            "mutually_exclusive_parameters",
        ),
    ],
)
def test_malformed_openai_structured_fields_are_refused_naming_them(
    http, route, extra, param, code
):
    response = post(http, route, extra)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_openai_wording_of_the_metadata_limit(http):
    response = post(http, CHAT, {"metadata": {f"k{i}": "v" for i in range(17)}})

    assert response.json() == openai_body(
        "metadata",
        "object_above_max_properties",
        "Invalid 'metadata': too many properties. Expected an object with at most 16 "
        "properties, but got an object with 17 properties instead.",
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": 5}, "tools: Input should be a valid array"),
        ({"tools": [{"name": "a b", "input_schema": {}}]}, None),
        ({"tools": [{"name": "f", "input_schema": "s"}]}, "tools.0.input_schema: "),
        ({"tools": [{"input_schema": {}}]}, "tools.0.name: Field required"),
        ({"stop_sequences": [" "]}, "stop_sequences.0: each stop sequence must contain"),
        ({"stop_sequences": [""]}, "stop_sequences.0: each stop sequence must contain"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.tool.name: Field required"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "A "},
                ]
            },
            "messages: final assistant content cannot end with trailing whitespace",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "text", "text": "A\n"}]},
                ]
            },
            "messages: final assistant content cannot end with trailing whitespace",
        ),
    ],
)
def test_malformed_anthropic_structured_fields_are_refused_naming_them(http, extra, message):
    response = post(http, MESSAGES, extra)

    assert response.status_code == 400
    text = response.json()["error"]["message"]
    assert text.startswith(message or "tools.0.name: String should match pattern")


def test_a_prefill_without_trailing_whitespace_is_continued(http):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}]

    assert post(http, MESSAGES, {"messages": messages}).status_code == 200


def test_a_server_tool_without_a_name_is_taken(http):
    toolset = {"type": "mcp_toolset", "mcp_server_name": "docs"}

    assert post(http, MESSAGES, {"tools": [toolset]}).status_code == 200


# ------------------------------------------------------------------ shapes of content blocks

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
# One valid block of each kind a user turn can hold, then those a tool result can hold.
USER_BLOCKS: list[dict[str, Any]] = [
    {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
    {"type": "image", "source": PNG},
    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "d"}]}},
    {
        "type": "search_result",
        "source": "s",
        "title": "t",
        "content": [{"type": "text", "text": "x"}],
    },
]
ASKED = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
}


def _content_block_cases() -> list[tuple[str, dict[str, Any]]]:
    """(where, body) of every block of `USER_BLOCKS` with one field (or its source's) set
    to each of `WRONG_VALUES`: in a user turn, in a tool result and in `system`; and of a
    tool use and tool result with each of their fields so set."""
    cases = []

    def broken(block: dict[str, Any]) -> list[dict[str, Any]]:
        found = []
        for name in block:
            found += [{**block, name: value} for value in WRONG_VALUES]
        if isinstance(block.get("source"), dict):
            for name in block["source"]:
                found += [
                    {**block, "source": {**block["source"], name: value}} for value in WRONG_VALUES
                ]
        return found

    for block in USER_BLOCKS:
        for bad in broken(block):
            turn = {"role": "user", "content": [bad]}
            result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [bad]}
            cases += [
                ("message", {"messages": [turn]}),
                ("tool result", {"messages": [turn, ASKED, {"role": "user", "content": [result]}]}),
                ("system", {"system": [bad]}),
            ]
    ask_and_answer = [
        (ASKED["content"][0], 1),
        ({"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False, "content": "ok"}, 2),
    ]
    for block, index in ask_and_answer:
        for bad in broken(block):
            messages = [
                {"role": "user", "content": "Hi"},
                ASKED,
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
            ]
            messages[index] = {**messages[index], "content": [bad]}
            cases.append(("tool use", {"messages": messages}))
    return cases


CONTENT_BLOCK_CASES = _content_block_cases()


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
def test_no_shape_of_a_content_block_makes_the_simulator_fail(http, route):
    """A malformed block anywhere in the prompt gets Anthropic's 400 naming its path, never
    a 500 (which a retrying client turns into an open circuit breaker for everyone)."""
    failures = []
    for where, extra in CONTENT_BLOCK_CASES:
        response = post(http, route, extra)
        if response.status_code >= 500 or (
            response.status_code == 400
            and response.json()["error"]["type"] != "invalid_request_error"
        ):
            failures.append((where, extra, response.status_code))

    assert failures == []
    assert len(CONTENT_BLOCK_CASES) > 500


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": "abc"}]}]},
            "messages.0.content.0.document.source: Input should be an object",
        ),
        (
            {"system": [{"type": "document", "source": "abc"}]},
            "system.0.type: Input should be 'text'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    ASKED,
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": "false"}
                        ],
                    },
                ]
            },
            "messages.2.content.0.tool_result.is_error: Input should be a valid boolean",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    ASKED,
                    {"role": "user", "content": "Go"},
                ]
            },
            "messages.2: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_1. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message.",
        ),
    ],
)
def test_a_malformed_block_is_refused_in_anthropics_words(http, route, extra, message):
    response = post(http, route, extra)
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (MESSAGES, {"type": "error", "error": {"type": "api_error", "message": AnyString()}}),
        (COUNT_TOKENS, {"type": "error", "error": {"type": "api_error", "message": AnyString()}}),
        (
            CHAT,
            {
                "error": {
                    "type": "server_error",
                    "message": AnyString(),
                    "param": None,
                    "code": None,
                }
            },
        ),
    ],
)
def test_a_fault_of_the_simulator_is_answered_in_the_called_apis_words(monkeypatch, route, body):
    """A bug of the simulator is still a 500 its client can read: Anthropic's `api_error`
    under /v1/messages, OpenAI's `server_error` elsewhere."""

    def fail(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated bug")

    from switchyard.simulator import parameters

    monkeypatch.setattr(parameters, "check", fail)
    with TestClient(create_simulator_app(), raise_server_exceptions=False) as client:
        response = post(client, route, {})
    assert response.status_code == 500
    assert response.json() == body


RECURSIVE = {
    "type": "object",
    "properties": {"value": {"type": "string"}, "next": {"$ref": "#"}},
    "required": ["value", "next"],
}


@pytest.mark.parametrize(
    ("route", "extra"),
    [
        (
            MESSAGES,
            {
                "tools": [{"name": "g", "input_schema": RECURSIVE}],
                "tool_choice": {"type": "tool", "name": "g"},
            },
        ),
        (
            MESSAGES,
            {
                "output_config": {
                    "format": {
                        "type": "json_schema",
                        "schema": {**RECURSIVE, "additionalProperties": False},
                    }
                }
            },
        ),
        (
            CHAT,
            {
                "tools": [{"type": "function", "function": {"name": "g", "parameters": RECURSIVE}}],
                "tool_choice": "required",
            },
        ),
        (
            CHAT,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"$ref": "#"}},
                }
            },
        ),
    ],
)
def test_a_schema_with_no_finite_instance_still_gets_an_answer(http, route, extra):
    """A recursive schema whose self-reference is required is answered (its value stops
    at a depth), never a RecursionError's 500 that opens the deployment's breaker."""
    assert post(http, route, extra).status_code == 200


def test_thinking_with_a_forced_tool_is_refused_as_anthropic_refuses_it(http):
    response = post(
        http,
        MESSAGES,
        {
            "max_tokens": 3000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "tool_choice: Thinking may not be enabled when tool_choice forces tool use."
    )


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ASKED_CHAT = {"role": "assistant", "content": None, "tool_calls": [CALL]}
HI = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(
    ("route", "extra", "param", "message"),
    [
        (CHAT, {"messages": [HI, ASKED_CHAT]}, "messages.[1].role", "did not have response"),
        (CHAT, {"messages": [HI, ASKED_CHAT, HI]}, "messages.[1].role", "did not have response"),
        (
            CHAT,
            {"messages": [HI, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]},
            "messages.[1].role",
            "must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            CHAT,
            {
                "messages": [
                    HI,
                    ASKED_CHAT,
                    {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
                ]
            },
            "messages.[2].tool_call_id",
            "'call_2' not found",
        ),
        (
            RESPONSES,
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
            "input",
            "No tool output found for function call c.",
        ),
        (
            RESPONSES,
            {"input": [HI, {"type": "function_call_output", "call_id": "c", "output": "ok"}]},
            "input",
            "No tool call found for function call output with call_id c.",
        ),
    ],
)
def test_calls_and_answers_that_do_not_pair_are_refused_as_openai_refuses_them(
    http, route, extra, param, message
):
    response = post(http, route, extra)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]


def test_a_tool_conversation_that_pairs_is_answered(http):
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
    assert post(http, CHAT, {"messages": [HI, ASKED_CHAT, tool, HI]}).status_code == 200


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},
        {
            "type": "object",
            "properties": {"home": {"type": "object", "properties": {}}},
            "additionalProperties": False,
        },
    ],
)
def test_anthropic_refuses_an_object_schema_left_open(http, schema):
    """Anthropic's structured outputs take an object schema only with
    `additionalProperties: false` (its own message, field first)."""
    response = post(
        http, MESSAGES, {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    )

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "output_config.format.schema: For 'object' type, 'additionalProperties' "
        "must be explicitly set to false",
    }


OPTIONAL_ZIP = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("strict", [True, False])
def test_openai_strict_mode_refuses_a_property_left_out_of_required(http, strict):
    """OpenAI's strict mode needs every property in `required`; without `strict` the same
    schema is followed."""
    fmt = {"name": "place", "schema": OPTIONAL_ZIP, "strict": strict}
    chat = post(http, CHAT, {"response_format": {"type": "json_schema", "json_schema": fmt}})
    responses = post(http, RESPONSES, {"text": {"format": {"type": "json_schema", **fmt}}})

    if not strict:
        assert (chat.status_code, responses.status_code) == (200, 200)
        return
    message = (
        "Invalid schema for response_format 'place': In context=(), 'required' is required to "
        "be supplied and to be an array including every key in properties. Missing 'zip'."
    )
    assert chat.status_code == responses.status_code == 400
    assert chat.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": "response_format",
        "code": None,
    }
    assert responses.json()["error"]["param"] == "text.format.schema"
    assert responses.json()["error"]["code"] == "invalid_json_schema"


# ------------------------------------------------------------------ fields Anthropic does not know


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"extra_body": {}}, "extra_body: Extra inputs are not permitted"),
        ({"response_format": {"type": "text"}}, "response_format: Extra inputs are not permitted"),
        ({"user": "u1"}, "user: Extra inputs are not permitted"),
        (
            {"metadata": {"user_id": "u1", "tenant": "t"}},
            "metadata.tenant: Extra inputs are not permitted",
        ),
    ],
)
def test_a_messages_field_anthropic_does_not_know_is_refused_naming_it(http, extra, message):
    response = post(http, MESSAGES, extra)

    assert response.status_code == 400
    assert response.json() == anthropic_body(message)


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"user_id": "u1"}},
        {"metadata": {}},
        {"service_tier": "auto"},
        {"cache_control": {"type": "ephemeral"}},
        {"top_k": 5, "top_p": 0.9, "temperature": 0.5, "stop_sequences": ["ZZ"]},
        {"output_config": {"effort": "low"}},
    ],
)
def test_the_fields_of_the_official_sdk_are_taken(http, extra):
    assert post(http, MESSAGES, extra).status_code == 200


# ------------------------------------------------------------------ base64 data of images

BAD_BASE64 = "not base64!"


def _anthropic_image(data: str) -> dict[str, Any]:
    return {"type": "image", "source": {**PNG, "data": data}}


def _pdf(data: str) -> dict[str, Any]:
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }


def _in_tool_result(block: dict[str, Any]) -> dict[str, Any]:
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [block]}
    return {"messages": [HI, ASKED, {"role": "user", "content": [result]}]}


def _in_user_turn(block: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, block]}]}


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            _in_user_turn(_anthropic_image(BAD_BASE64)),
            "messages.0.content.1.image.source.base64: invalid base64 data",
        ),
        (
            _in_user_turn(_anthropic_image("iVBORw0KGgo")),  # padding left out
            "messages.0.content.1.image.source.base64: invalid base64 data",
        ),
        (
            _in_user_turn(_anthropic_image("")),
            "messages.0.content.1.image.source.base64: image cannot be empty",
        ),
        (
            _in_tool_result(_anthropic_image(BAD_BASE64)),
            "messages.2.content.0.tool_result.content.0.image.source.base64: invalid base64 data",
        ),
        (
            _in_user_turn(_pdf(BAD_BASE64)),
            "messages.0.content.1.document.source.base64: invalid base64 data",
        ),
    ],
)
def test_anthropic_refuses_base64_data_that_does_not_decode(http, route, extra, message):
    response = post(http, route, extra)

    assert response.status_code == 400
    assert response.json() == anthropic_body(message)


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
def test_anthropic_takes_base64_data_that_decodes(http, route):
    for extra in (
        _in_user_turn(_anthropic_image(PNG["data"])),
        _in_tool_result(_anthropic_image(PNG["data"])),
        _in_user_turn(_pdf("JVBERi0xLjQK")),
    ):
        assert post(http, route, extra).status_code == 200, extra


def _chat_image(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, part]}]}


def _responses_image(url: str) -> dict[str, Any]:
    part = {"type": "input_image", "image_url": url}
    return {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}, part]}]}


@pytest.mark.parametrize("data", [BAD_BASE64, "iVBORw0KGgo", ""])
def test_chat_completions_refuses_a_data_url_whose_base64_does_not_decode(http, data):
    response = post(http, CHAT, _chat_image(f"data:image/png;base64,{data}"))

    assert response.status_code == 400
    assert response.json() == openai_body(
        "messages[0].content[1].image_url.url", "invalid_value", "Invalid base64 image_url."
    )


@pytest.mark.parametrize("route", [RESPONSES, INPUT_TOKENS])
def test_the_responses_api_refuses_a_data_url_whose_base64_does_not_decode(http, route):
    param = "input[0].content[1].image_url"
    response = post(http, route, _responses_image(f"data:image/png;base64,{BAD_BASE64}"))
    assert response.status_code == 400
    assert response.json() == openai_body(param, "invalid_value", "Invalid base64 image_url.")

    response = post(http, route, _responses_image("data:image/png;base64,"))
    assert response.status_code == 400
    assert response.json() == openai_body(
        param,
        "invalid_value",
        f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME type (e.g. "
        "'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got empty base64-encoded bytes.",
    )


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo=", "https://example.com/a.png"])
def test_openai_takes_a_data_url_that_decodes_and_a_web_url(http, url):
    assert post(http, CHAT, _chat_image(url)).status_code == 200
    assert post(http, RESPONSES, _responses_image(url)).status_code == 200


@pytest.mark.parametrize(
    ("route", "extra", "param", "listed"),
    [
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "bogus", "x": 1}]}]},
            "messages[0].content[0].type",
            "'text', 'image_url', 'input_audio', 'file', and 'refusal'",
        ),
        *(
            (
                route,
                {
                    "input": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "input_text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ],
                        }
                    ]
                },
                "input[0].content[1].type",
                "'input_text', 'input_image'",
            )
            for route in (RESPONSES, INPUT_TOKENS)
        ),
    ],
)
def test_openai_refuses_a_content_part_of_an_unknown_type(http, route, extra, param, listed):
    response = post(http, route, extra)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"].startswith("Invalid value: '")
    assert listed in error["message"]


def test_openai_takes_every_content_part_type_it_documents(http):
    chat = [
        {"type": "text", "text": "Hi"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    assert post(http, CHAT, {"messages": [{"role": "user", "content": chat}]}).status_code == 200
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
    ]
    assert post(http, RESPONSES, {"input": items}).status_code == 200


NOT_A_SCHEMA = {"type": "object", "properties": {"a": {"type": "nonsense"}}}


@pytest.mark.parametrize(
    ("route", "extra", "param", "code"),
    [
        (
            CHAT,
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": NOT_A_SCHEMA}}
                ]
            },
            "tools[0].function.parameters",
            "invalid_function_parameters",
        ),
        (
            RESPONSES,
            {"tools": [{"type": "function", "name": "f", "parameters": NOT_A_SCHEMA}]},
            "tools[0].parameters",
            "invalid_function_parameters",
        ),
        (
            CHAT,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": NOT_A_SCHEMA},
                }
            },
            "response_format",
            "invalid_json_schema",
        ),
        (
            RESPONSES,
            {"text": {"format": {"type": "json_schema", "name": "r", "schema": NOT_A_SCHEMA}}},
            "text.format.schema",
            "invalid_json_schema",
        ),
    ],
)
def test_openai_refuses_a_schema_that_is_no_json_schema(http, route, extra, param, code):
    response = post(http, route, extra)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].startswith("Invalid schema for ")
    assert "In context=('properties', 'a', 'type')" in error["message"]


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
def test_anthropic_refuses_a_tool_schema_that_is_no_json_schema(http, route):
    tools = [
        {"name": "f", "input_schema": {"type": "object"}},
        {"name": "g", "input_schema": NOT_A_SCHEMA},
    ]
    response = post(http, route, {"tools": tools})

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "tools.1.custom.input_schema: JSON schema is invalid."
    )


def test_a_schemas_own_dollar_schema_is_never_fetched(http):
    """A schema is judged against draft 2020-12's meta-schema as data: the URI in its
    `$schema` is not retrieved (no request to an address a client chose, no wait)."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    schema = {"$schema": f"http://127.0.0.1:{port}/meta", "type": "object"}
    started = time.monotonic()
    try:
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        assert post(http, CHAT, {"tools": [tool]}).status_code == 200
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert time.monotonic() - started < 5


def test_valid_schemas_are_taken(http):
    schema = {
        "type": "object",
        "properties": {"a": {"type": ["string", "null"]}, "b": {"$ref": "#/$defs/b"}},
        "$defs": {"b": {"type": "integer", "minimum": 0}},
        "required": ["a"],
        "additionalProperties": False,
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    assert post(http, CHAT, {"tools": [tool]}).status_code == 200
    assert (
        post(http, MESSAGES, {"tools": [{"name": "f", "input_schema": schema}]}).status_code == 200
    )


# ------------------------------------------------------------------ output limits of the models

HUGE = 10**15


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("sim-small", 128000),
        ("sim-claude", 128000),
        ("gpt-4o-mini", 16384),
        ("gpt-4-turbo-2024-04-09", 4096),
        ("gpt-4-0613", 8192),
        ("gpt-4.1-nano", 32768),
        ("o1-mini", 65536),
        ("claude-3-5-haiku-latest", 8192),
        ("claude-opus-4-20250514", 32000),
        ("claude-opus-4-5-20251101", 64000),
        ("claude-sonnet-4-5", 64000),
    ],
)
def test_a_model_takes_the_output_limit_of_its_family(model, limit):
    from switchyard.simulator.parameters import max_output_tokens

    assert max_output_tokens(model) == limit


@pytest.mark.parametrize(
    ("route", "model", "name", "limit", "kind"),
    [
        (CHAT, "sim-small", "max_tokens", 128000, "completion"),
        (CHAT, "sim-large", "max_completion_tokens", 128000, "completion"),
        (CHAT, "gpt-4o", "max_tokens", 16384, "completion"),
        (CHAT, "gpt-4o", "max_completion_tokens", 16384, "completion"),
        (RESPONSES, "sim-small", "max_output_tokens", 128000, "output"),
        (RESPONSES, "gpt-4.1", "max_output_tokens", 32768, "output"),
    ],
)
def test_openai_refuses_an_output_limit_above_the_models(http, route, model, name, limit, kind):
    for refused in (limit + 1, HUGE):
        response = post(http, route, {"model": model, name: refused})
        assert response.status_code == 400
        assert response.json() == openai_body(
            name,
            "invalid_value",
            f"{name} is too large: {refused}. This model supports at most {limit} {kind} "
            f"tokens, whereas you provided {refused}.",
        )

    assert post(http, route, {"model": model, name: limit}).status_code == 200


@pytest.mark.parametrize(
    ("model", "limit"),
    [("sim-claude", 128000), ("claude-3-7-sonnet-20250219", 64000), ("claude-3-haiku", 4096)],
)
def test_anthropic_refuses_max_tokens_above_the_models(http, model, limit):
    for refused in (limit + 1, HUGE):
        response = post(http, MESSAGES, {"model": model, "max_tokens": refused})
        assert response.status_code == 400
        assert response.json() == anthropic_body(
            f"max_tokens: {refused} > {limit}, which is the maximum allowed number of output "
            f"tokens for {model}"
        )

    assert post(http, MESSAGES, {"model": model, "max_tokens": limit}).status_code == 200


# ------------------------------------------------------------------ Responses without input


def test_a_response_without_input_is_answered_as_openais_reference_has_input_optional(http):
    """`input` is optional in OpenAI's reference ("Create a model response"): a request may
    carry its prompt in `instructions` or a stored `prompt` instead."""
    response = post(http, RESPONSES, {"instructions": "Say hi."}, drop="input")

    assert response.status_code == 200
    assert response.json()["status"] == "completed"


# ------------------------------------------------------------------ log probabilities


def test_responses_logprobs_come_when_include_asks_for_them(http):
    include = {"include": ["message.output_text.logprobs"]}
    part = post(http, RESPONSES, {**include, "top_logprobs": 2}).json()["output"][0]["content"][0]

    assert part["logprobs"]
    assert "".join(entry["token"] for entry in part["logprobs"]) == part["text"]
    for entry in part["logprobs"]:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert -0.1 <= entry["logprob"] <= 0
        assert [alt["token"] for alt in entry["top_logprobs"]][0] == entry["token"]
        assert len(entry["top_logprobs"]) == 2

    without_top = post(http, RESPONSES, include).json()["output"][0]["content"][0]
    assert without_top["logprobs"] and all(not e["top_logprobs"] for e in without_top["logprobs"])


def test_responses_logprobs_are_empty_unless_include_asks_for_them(http):
    part = post(http, RESPONSES, {"top_logprobs": 5}).json()["output"][0]["content"][0]

    assert part["logprobs"] == []


# ------------------------------------------------------------------ embeddings arguments


@pytest.mark.parametrize(
    "extra", [{"stream": True}, {"temperature": 0.5}, {"stream": False}, {"max_tokens": 5}]
)
def test_embeddings_refuse_an_argument_they_do_not_take(http, extra):
    response = post(http, EMBEDDINGS, extra)

    assert response.status_code == 400
    (name,) = extra
    assert response.json() == openai_body(
        None, None, f"Unrecognized request argument supplied: {name}"
    )


def test_embeddings_take_their_own_arguments(http):
    extra = {"user": "u1", "dimensions": 4, "encoding_format": "float"}

    assert post(http, EMBEDDINGS, extra).status_code == 200


LONG_SYSTEM = [
    {"type": "text", "text": "rules " * 300, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
]


def test_max_tokens_zero_warms_the_prompt_cache_and_generates_nothing(http):
    """Anthropic's pre-warming: the prompt is read and cached, nothing is generated."""
    warmed = post(http, MESSAGES, {"max_tokens": 0, "system": LONG_SYSTEM})
    assert warmed.status_code == 200, warmed.text
    message = warmed.json()
    assert message["content"] == [] and message["stop_reason"] == "max_tokens"
    usage = message["usage"]
    assert usage["output_tokens"] == 0 and usage["cache_creation_input_tokens"] > 0
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": usage["cache_creation_input_tokens"],
    }
    assert usage["service_tier"] == "standard"
    read = post(http, MESSAGES, {"max_tokens": 50, "system": LONG_SYSTEM})
    assert read.json()["usage"]["cache_read_input_tokens"] == usage["cache_creation_input_tokens"]


@pytest.mark.parametrize(
    ("extra", "conflict"),
    [
        ({"stream": True}, "streaming"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
        (
            {
                "output_config": {
                    "format": {
                        "type": "json_schema",
                        "schema": {"type": "object", "additionalProperties": False},
                    }
                }
            },
            "output_config.format",
        ),
    ],
)
def test_max_tokens_zero_cannot_stream_think_or_follow_a_format(http, extra, conflict):
    refused = post(http, MESSAGES, {"max_tokens": 0, **extra})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("max_tokens: ")
    assert conflict in refused.json()["error"]["message"]


def test_interleaved_thinking_takes_a_budget_above_max_tokens(http):
    body = {
        **VALID[MESSAGES],
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
    }
    assert http.post(MESSAGES, json=body).status_code == 400
    beta = {"anthropic-beta": "context-1m-2025-08-07, interleaved-thinking-2025-05-14"}
    answered = http.post(MESSAGES, json=body, headers=beta)
    assert answered.status_code == 200, answered.text


# ------------------------------------------------------------------ system messages


def _turns(*roles: str) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": f"A {role} message."} for role in roles]}


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
@pytest.mark.parametrize(
    ("roles", "index"),
    [
        (("system", "user"), 0),  # first: the top-level `system` is for that
        (("user", "assistant", "system", "user"), 2),  # after an assistant message
        (("user", "system", "user"), 1),  # followed by a user message
        (("user", "system", "system"), 1),  # followed by another system message
        (("user", "assistant", "system"), 2),  # last, after an assistant message
    ],
)
def test_a_system_message_placed_against_anthropics_rules_is_refused(http, route, roles, index):
    """Anthropic's placement rules for mid-conversation system messages: right after a
    user message, and last or followed by an assistant message."""
    response = post(http, route, _turns(*roles))

    assert response.status_code == 400
    assert response.json() == anthropic_body(
        f"messages.{index}: a system message must come right after a user message, and be "
        "the last message or be followed by an assistant message"
    )


@pytest.mark.parametrize("route", [MESSAGES, COUNT_TOKENS])
@pytest.mark.parametrize(
    "roles",
    [
        ("user", "system"),
        ("user", "system", "assistant"),
        ("user", "assistant", "user", "system", "assistant", "user", "system"),
    ],
)
def test_a_system_message_placed_as_anthropic_allows_is_taken(http, route, roles):
    assert post(http, route, _turns(*roles)).status_code == 200
