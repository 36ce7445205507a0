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


WEATHER_FUNCTION = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


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
    ("model", "api", "fields", "scripted", "param", "message", "unused"),
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
            "max_completion_tokens is too large: 10000000. This model supports at most 16384 "
            "completion tokens. (Here 'max_completion_tokens' is your 'max_tokens': the "
            "model's deployment speaks OpenAI's Chat Completions.)",
            None,
        ),
        (
            "gpt",
            RESPONSES,
            {"max_output_tokens": 10_000_000},
            openai_refusal("max_completion_tokens", "Invalid 'max_completion_tokens': too large."),
            "max_output_tokens",
            "Invalid 'max_completion_tokens': too large. (Here 'max_completion_tokens' is "
            "your 'max_output_tokens': the model's deployment speaks OpenAI's Chat "
            "Completions.)",
            None,
        ),
        (
            "gpt",
            RESPONSES,
            {},
            openai_refusal("messages[1].content", "Invalid 'messages[1].content': empty."),
            None,  # messages are not the client's input items one for one
            "Invalid 'messages[1].content': empty.",
            None,
        ),
        (
            "claude",
            "openai.chat_completions",
            {"max_completion_tokens": 10_000_000},
            anthropic_refusal("max_tokens: 10000000 > 64000, the most for this model"),
            "max_completion_tokens",  # from the path Anthropic's message starts with
            "max_tokens: 10000000 > 64000, the most for this model (Here 'max_tokens' is "
            "your 'max_completion_tokens': the model's deployment speaks Anthropic's "
            "Messages API.)",
            None,
        ),
        (
            "claude",
            "openai.chat_completions",
            {"max_tokens": 10_000_000},
            anthropic_refusal("max_tokens: 10000000 > 64000, the most for this model"),
            "max_tokens",
            "max_tokens: 10000000 > 64000, the most for this model",
            None,
        ),
        (
            "gpt",
            "anthropic.messages",
            {},
            openai_refusal("messages[0].role", "Invalid 'messages[0].role'."),
            None,
            "Invalid 'messages[0].role'.",
            None,
        ),
        (
            "claude",
            RESPONSES,
            {"user": "u" * 300},
            anthropic_refusal("metadata.user_id: String should have at most 256 characters"),
            "user",
            "metadata.user_id: String should have at most 256 characters (Here "
            "'metadata.user_id' is your 'user': the model's deployment speaks Anthropic's "
            "Messages API.)",
            None,
        ),
        (
            "claude",
            "openai.chat_completions",
            {"user": "end-user-1", "safety_identifier": "s" * 300},
            anthropic_refusal("metadata.user_id: String should have at most 256 characters"),
            "safety_identifier",
            "metadata.user_id: String should have at most 256 characters (Here "
            "'metadata.user_id' is your 'safety_identifier': the model's deployment speaks "
            "Anthropic's Messages API.)",
            None,
        ),
        (
            "gpt",
            RESPONSES,
            {"temperature": 3},
            openai_refusal("temperature", "Invalid 'temperature': decimal above maximum value."),
            "temperature",  # the client's own field, sent under its name
            "Invalid 'temperature': decimal above maximum value.",
            None,
        ),
        (
            "gpt",
            RESPONSES,
            {"text": {"verbosity": "loud"}},
            openai_refusal("verbosity", "Invalid value: 'loud'."),
            "text.verbosity",
            "Invalid value: 'loud'.",
            None,
        ),
        (
            "claude",
            "openai.chat_completions",
            {"parallel_tool_calls": False, "tools": [WEATHER_FUNCTION]},
            anthropic_refusal("tool_choice.disable_parallel_tool_use: Extra inputs not allowed"),
            "parallel_tool_calls",
            "tool_choice.disable_parallel_tool_use: Extra inputs not allowed (Here "
            "'tool_choice.disable_parallel_tool_use' is your 'parallel_tool_calls': the "
            "model's deployment speaks Anthropic's Messages API.)",
            None,
        ),
        (
            "claude",
            RESPONSES,
            {"reasoning": {"effort": "xhigh"}},
            anthropic_refusal("output_config.effort: Input should be 'low', 'medium' or 'high'"),
            "reasoning.effort",  # adaptive thinking's effort (`thinking_type: adaptive`)
            "output_config.effort: Input should be 'low', 'medium' or 'high' (Here "
            "'output_config.effort' is your 'reasoning.effort': the model's deployment "
            "speaks Anthropic's Messages API.)",
            None,
        ),
        (
            "claude",
            "openai.chat_completions",
            {},
            anthropic_refusal("messages.0.content: Field required"),
            None,  # messages are not the client's one for one
            "messages.0.content: Field required",
            None,
        ),
    ],
    ids=[
        "messages-to-chat",
        "responses-to-chat",
        "responses-to-chat-messages",
        "chat-max-completion-tokens-to-messages",
        "chat-max-tokens-to-messages",
        "param-the-client-never-sent",
        "responses-user-to-messages",
        "chat-safety-identifier-to-messages",
        "responses-same-named-to-chat",
        "responses-verbosity-to-chat",
        "chat-parallel-tool-calls-to-messages",
        "responses-effort-to-messages",
        "chat-messages-path-to-messages",
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
    message,
    unused,
) -> None:
    recorder.script(scripted)
    body = {"model": model, "input": "hi"} if api == RESPONSES else None
    request = with_body(chat_request(model=model, api=api, body=body), **fields)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatFailed), reply
    error = reply.data.error
    assert error.status == 400
    assert error.message == message
    assert error.param == param
    assert len(recorder.requests) == 1


def test_a_param_below_a_renamed_field_of_another_shape_names_the_clients_field() -> None:
    error = ProviderError(
        400,
        "invalid_request_error",
        "Invalid schema for response_format 'x': "
        "In context=('properties', 'max_completion_tokens').",
        param="response_format.json_schema.schema",
        vendor="openai",
    )
    body = {"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}
    in_client_terms(error, ClientAPI.OPENAI_RESPONSES, ClientAPI.OPENAI_CHAT_COMPLETIONS, body)
    # Responses keeps its schema at `text.format.schema`: the field itself is named.
    assert error.param == "text.format"
    # The client's own data quoted in the message is left as it is, and only the field
    # the refusal is about is explained.
    assert error.message == (
        "Invalid schema for response_format 'x': In context=('properties', "
        "'max_completion_tokens'). (Here 'response_format' is your 'text.format': the "
        "model's deployment speaks OpenAI's Chat Completions.)"
    )
    assert str(error) == error.message


def test_a_path_below_a_field_of_the_same_shape_is_kept() -> None:
    error = ProviderError(
        400, "invalid_request_error", "Invalid 'stop[5]'.", param="stop[5]", vendor="openai"
    )
    body = {"stop_sequences": ["a", "b", "c", "d", "e", "f"]}
    in_client_terms(error, ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.OPENAI_CHAT_COMPLETIONS, body)
    assert error.param == "stop_sequences[5]"
    assert error.message == "Invalid 'stop[5]'."  # a plain word: no note


def test_a_deployment_refusing_the_renamed_field_itself_keeps_its_words() -> None:
    """The operator's to fix (the deployment does not take the field the translation
    chose): its words stay, and the client learns which of its fields it is."""
    error = ProviderError(
        400,
        "invalid_request_error",
        "Unrecognized request argument supplied: max_completion_tokens",
        param="max_completion_tokens",
        vendor="openai",
    )
    body = {"max_tokens": 1024}
    in_client_terms(error, ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.OPENAI_CHAT_COMPLETIONS, body)
    assert error.message.startswith(
        "Unrecognized request argument supplied: max_completion_tokens (Here"
    )


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
    assert error.param == "output_config.effort"
    assert "'reasoning_effort' is your 'output_config.effort'" in error.message


def test_a_same_named_field_keeps_its_param_only_when_the_client_sent_it() -> None:
    """`tool_choice` towards Anthropic is the client's own when it sent one; made by the
    translation (from `parallel_tool_calls: false` alone) it is not, and `param` goes."""
    for body, param in (
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": False}, None),
    ):
        error = ProviderError(
            400, "invalid_request_error", "Invalid tool_choice.", param="tool_choice"
        )
        in_client_terms(
            error, ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.ANTHROPIC_MESSAGES, body
        )
        assert error.param == param


def test_an_anthropic_refusals_path_is_in_openais_notation() -> None:
    error = ProviderError(
        400,
        "invalid_request_error",
        "stop_sequences.1: String should not be blank",
        vendor="anthropic",
    )
    body = {"stop": ["END", " "]}
    in_client_terms(error, ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.ANTHROPIC_MESSAGES, body)
    assert error.param == "stop[1]"


def test_a_field_the_client_did_not_send_is_no_param() -> None:
    """A deployment's `default_max_tokens` refused is no `max_completion_tokens` of the
    client's: no `param`, and no note naming one."""
    message = "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens"
    error = ProviderError(400, "invalid_request_error", message, vendor="anthropic")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    in_client_terms(error, ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.ANTHROPIC_MESSAGES, body)
    assert error.param is None
    assert error.message == message
