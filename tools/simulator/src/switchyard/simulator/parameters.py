"""The request parameters each simulated endpoint takes, the types and ranges the real API
allows them, and the 400 error that API answers for a value outside them.

One table (`RULES`, route to `Rules`) holds them all: each route's parameters as a pydantic
`TypedDict` of constrained types (OpenAI API reference and Anthropic API reference ranges),
plus the few rules that tie two parameters together. `check(route, body)` raises a
`BadRequest` carrying the first broken rule, worded as that route's API words it:

- OpenAI: `Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got
  3 instead.` with `param` (`top_p`, `messages[0].role`...) and `code`
  (`decimal_above_max_value`, `integer_below_min_value`, `invalid_type`, `invalid_value`,
  `array_above_max_length`, `missing_required_parameter`...);
- Anthropic: the field path, then pydantic's sentence (`max_tokens: Input should be greater
  than or equal to 1`, `thinking.enabled.budget_tokens: ...`,
  `messages.0.content.1.tool_result.is_error: Input should be a valid boolean`), or
  `temperature: range: 0..1` for a parameter bounded on both sides; Anthropic's error object
  names no parameter. Anthropic's types, content blocks included, and its rules across fields
  are `switchyard.common.anthropic_request`'s, which the gateway's translation of a Messages
  request judges with too.

Beyond the types, the rules across fields hold what each API refuses of a well-typed body:
a field Anthropic's Messages does not know, an image whose base64 data does not decode, an
output limit beyond the model's (`OUTPUT_LIMITS`), an argument the Embeddings API does not
take.

Only the parameters are read (pydantic ignores the other keys and returns no copy the caller
uses), so checking costs microseconds; of OpenAI's messages only their roles, and the data of
their `data:` image URLs, are read.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Required

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import ErrorDetails

# pydantic takes TypedDicts from typing_extensions before Python 3.12.
from typing_extensions import TypedDict

from switchyard.common import anthropic_request, openai_request
from switchyard.common.anthropic_request import (
    AnthropicRequestError,
    CountTokensParameters,
    MessagesParameters,
)


class BadRequest(Exception):
    """Input the real provider refuses with 400. `param` is the field at fault as OpenAI
    names it (`top_p`, `messages[0].role`; None where OpenAI names none) and `code` OpenAI's
    error code for it (`invalid_value`, `integer_below_min_value`...; None where it has none).
    Anthropic's error object carries neither: its message names the field."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        # Anthropic's machine-readable part (`{"error_code": ...}`), sent in its format only.
        self.details = details


# Strict: a string is not a number and a boolean is not an integer, as both APIs judge them
# (an integer is still a valid decimal).
_STRICT = ConfigDict(strict=True)

# --------------------------------------------------------------------------- OpenAI types

# A decimal parameter's bounds are floats and an integer parameter's are ints: the error
# code says which (`decimal_above_max_value` or `integer_above_max_value`), as OpenAI's does.
Decimal = float


def _stop(value: Any) -> Any:
    # `stop` is a string or an array of strings: one string is judged as an array of one.
    return [value] if isinstance(value, str) else value


OpenAIStop = Annotated[list[str], BeforeValidator(_stop), Field(max_length=4)]
# The sampling parameters Chat Completions and Responses share, with the same ranges.
OpenAITemperature = Annotated[Decimal, Field(ge=0.0, le=2.0)]
OpenAITopP = Annotated[Decimal, Field(ge=0.0, le=1.0)]
OpenAITopLogprobs = Annotated[int, Field(ge=0, le=20)]


# The values OpenAI's reference lists for the reasoning effort, the service tier and the
# verbosity (Chat Completions' `reasoning_effort`, `service_tier`, `verbosity`; Responses'
# `reasoning.effort`, `service_tier`, `text.verbosity`).
OpenAIEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
OpenAIServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast"]
# Responses takes one more tier than Chat Completions.
ResponsesServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]
OpenAIVerbosity = Literal["low", "medium", "high"]


# OpenAI's function names (Chat Completions' `tools[].function.name`, Responses'
# `tools[].name`): letters, digits, underscores and dashes, at most 64 characters.
OpenAIToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$", max_length=64)]
JsonObject = dict[str, Any]
# OpenAI's `metadata` (Chat Completions and Responses): at most 16 pairs of string values of
# at most 512 characters.
OpenAIMetadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)]


@with_config(_STRICT)
class _ChatFunction(TypedDict, total=False):
    name: Required[OpenAIToolName]
    description: str | None
    parameters: JsonObject | None
    strict: bool | None


@with_config(_STRICT)
class _ChatTool(TypedDict, total=False):
    type: Required[str]
    function: _ChatFunction


@with_config(_STRICT)
class _JsonSchema(TypedDict, total=False):
    name: Required[str]
    description: str | None
    schema: JsonObject | None
    strict: bool | None


@with_config(_STRICT)
class _ChatResponseFormat(TypedDict, total=False):
    type: Required[Literal["json_object", "json_schema", "text"]]
    json_schema: _JsonSchema


@with_config(_STRICT)
class _TextFormat(TypedDict, total=False):
    type: Required[Literal["json_object", "json_schema", "text"]]
    name: str
    description: str | None
    schema: JsonObject | None
    strict: bool | None


@with_config(_STRICT)
class _ResponsesTool(TypedDict, total=False):
    type: Required[str]
    name: OpenAIToolName
    description: str | None
    parameters: JsonObject | None
    strict: bool | None


@with_config(_STRICT)
class _Reasoning(TypedDict, total=False):
    effort: OpenAIEffort | None
    summary: Literal["auto", "concise", "detailed"] | None


@with_config(_STRICT)
class _Text(TypedDict, total=False):
    format: _TextFormat | None
    verbosity: OpenAIVerbosity | None


@with_config(_STRICT)
class _ChatMessage(TypedDict, total=False):
    role: Required[Literal["system", "assistant", "user", "function", "tool", "developer"]]
    # OpenAI refuses an empty `tool_calls` as it refuses an empty `tools`.
    tool_calls: Annotated[list[dict[str, Any]], Field(min_length=1)] | None


@with_config(_STRICT)
class ChatCompletionsParameters(TypedDict, total=False):
    """`POST /v1/chat/completions` (OpenAI API reference, "Create chat completion")."""

    model: str
    messages: Required[Annotated[list[_ChatMessage], Field(min_length=1)]]
    frequency_penalty: Annotated[Decimal, Field(ge=-2.0, le=2.0)] | None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None
    logprobs: bool | None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None
    max_tokens: Annotated[int, Field(ge=1)] | None
    metadata: OpenAIMetadata | None
    n: Annotated[int, Field(ge=1, le=128)] | None
    parallel_tool_calls: bool | None
    presence_penalty: Annotated[Decimal, Field(ge=-2.0, le=2.0)] | None
    reasoning_effort: OpenAIEffort | None
    response_format: _ChatResponseFormat | None
    seed: int | None
    service_tier: OpenAIServiceTier | None
    stop: OpenAIStop | None
    store: bool | None
    stream: bool | None
    temperature: OpenAITemperature | None
    # OpenAI refuses an empty `tools` ("Invalid 'tools': empty array...").
    tools: Annotated[list[_ChatTool], Field(min_length=1)] | None
    top_logprobs: OpenAITopLogprobs | None
    top_p: OpenAITopP | None
    verbosity: OpenAIVerbosity | None


@with_config(_STRICT)
class ResponsesInputTokensParameters(TypedDict, total=False):
    """`POST /v1/responses/input_tokens` (OpenAI API reference, "Get input token counts")."""

    model: str
    parallel_tool_calls: bool | None
    previous_response_id: str | None
    text: _Text | None
    tools: list[_ResponsesTool] | None
    truncation: Literal["auto", "disabled"] | None


@with_config(_STRICT)
class ResponsesParameters(ResponsesInputTokensParameters, total=False):
    """`POST /v1/responses` (OpenAI API reference, "Create a model response")."""

    include: list[str] | None
    max_output_tokens: Annotated[int, Field(ge=16)] | None
    metadata: OpenAIMetadata | None
    reasoning: _Reasoning | None
    service_tier: ResponsesServiceTier | None
    store: bool | None
    stream: bool | None
    temperature: OpenAITemperature | None
    top_logprobs: OpenAITopLogprobs | None
    top_p: OpenAITopP | None


@with_config(_STRICT)
class EmbeddingsParameters(TypedDict, total=False):
    """`POST /v1/embeddings` (OpenAI API reference, "Create embeddings"). The simulated
    embedding models go up to 4096 dimensions."""

    model: str
    dimensions: Annotated[int, Field(ge=1, le=4096)] | None
    encoding_format: Literal["float", "base64"] | None
    user: str | None


# --------------------------------------------------------------------------- rules across fields


def _top_logprobs_need_logprobs(body: dict[str, Any]) -> None:
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise BadRequest(
            "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.",
            "top_logprobs",
        )


def _thinking_within_max_tokens(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        if thinking["budget_tokens"] >= body["max_tokens"]:
            raise BadRequest(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking#max-tokens-and-context-window-size"
            )


def _thinking_takes_default_sampling(body: dict[str, Any]) -> None:
    # Anthropic's API ("Extended thinking": thinking is not compatible with a forced tool
    # use, nor with temperature or top_k modifications; top_p may be set between 0.95 and
    # 1), in the words the gateway's
    # translation of a Messages request uses for the same refusals.
    thinking = body.get("thinking")
    if not (isinstance(thinking, dict) and thinking.get("type") == "enabled"):
        return
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise BadRequest(
            "tool_choice: Thinking may not be enabled when tool_choice forces tool use."
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise BadRequest("temperature: may only be set to 1 when thinking is enabled.")
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise BadRequest(
            "top_p: must be greater than or equal to 0.95 or unset when thinking is enabled."
        )
    if body.get("top_k") is not None:
        raise BadRequest("top_k: must be unset when thinking is enabled.")


def _one_token_limit(body: dict[str, Any]) -> None:
    # OpenAI's answer to a Chat Completions request setting both limits.
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise BadRequest(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
            "max_tokens",
            "invalid_parameter_combination",
        )


def _chat_tool_choice(body: dict[str, Any]) -> None:
    # `tool_choice`: "none", "auto", "required", or an object naming a function of `tools`.
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    if isinstance(choice, str):
        raise BadRequest(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    if not isinstance(choice, dict):
        raise BadRequest(
            f"Invalid type for 'tool_choice': expected one of a string or an object, but got "
            f"{_json_type(choice)} instead.",
            "tool_choice",
            "invalid_type",
        )
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if choice.get("type") == "function" and isinstance(name, str):
        tools = body.get("tools") or []
        names = {
            (tool.get("function") or {}).get("name") if "function" in tool else tool.get("name")
            for tool in tools
        }
        if name not in names:
            raise BadRequest(
                f"Invalid value for 'tool_choice': function '{name}' is not in 'tools'.",
                "tool_choice",
                "invalid_value",
            )


def _chat_tool_messages_answer_calls(body: dict[str, Any]) -> None:
    fault = openai_request.tool_message_fault(body.get("messages") or ())
    if fault is not None:
        raise BadRequest(fault.message, f"messages.[{fault.index}].{fault.field}")


def _responses_calls_answered(body: dict[str, Any]) -> None:
    # A stored response's calls are not known here: the simulator keeps no state, and
    # refuses `previous_response_id` on its own.
    items = body.get("input")
    fault = openai_request.function_call_fault(items) if isinstance(items, list) else None
    if fault is not None:
        raise BadRequest(fault, "input")


def _one_conversation_state(body: dict[str, Any]) -> None:
    # A Responses request continues a stored response or a conversation, never both.
    conversation = body.get("conversation")
    if conversation is not None and not isinstance(conversation, str | dict):
        raise BadRequest(
            f"Invalid type for 'conversation': expected one of a string or an object, but got "
            f"{_json_type(conversation)} instead.",
            "conversation",
            "invalid_type",
        )
    if conversation is not None and body.get("previous_response_id") is not None:
        raise BadRequest(
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            None,
            "mutually_exclusive_parameters",
        )


def _no_trailing_whitespace_prefill(body: dict[str, Any]) -> None:
    # Anthropic continues a final assistant message (a prefill), which may not end in
    # whitespace.
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return
    content = last.get("content")
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        content = content[-1].get("text") if content[-1].get("type") == "text" else None
    if isinstance(content, str) and content != content.rstrip():
        raise BadRequest("messages: final assistant content cannot end with trailing whitespace")


def _openai_model_given(body: dict[str, Any]) -> None:
    # OpenAI names no parameter for this one.
    if body.get("model") in (None, ""):
        raise BadRequest("you must provide a model parameter")


# --------------------------------------------------------------------------- output limits

# The most output tokens each model family may be asked for, by model-name prefix (the longest
# that matches wins): OpenAI's model pages ("Max output tokens",
# https://platform.openai.com/docs/models) and Anthropic's models overview ("Max output",
# https://docs.anthropic.com/en/docs/about-claude/models/overview). Claude 3.7 Sonnet takes
# 128000 under the `output-128k-2025-02-19` beta header, which the simulator does not read.
OUTPUT_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo": 4096,
    "gpt-4": 8192,
    "gpt-4-turbo": 4096,
    "gpt-4o": 16384,
    "gpt-4.1": 32768,
    "gpt-5": 128000,
    "o1": 100000,
    "o1-mini": 65536,
    "o3": 100000,
    "o4-mini": 100000,
    "claude-3-haiku": 4096,
    "claude-3-sonnet": 4096,
    "claude-3-opus": 4096,
    "claude-3-5-haiku": 8192,
    "claude-3-5-sonnet": 8192,
    "claude-3-7-sonnet": 64000,
    "claude-sonnet-4": 64000,
    "claude-haiku-4": 64000,
    "claude-opus-4": 32000,
    "claude-opus-4-5": 64000,
    "claude-opus-4-6": 128000,
    "claude-opus-4-7": 128000,
}
# Any other model, the simulated ones (`sim-small`, `sim-large`, `sim-claude`) included: the
# largest limit of the tables above, so the simulator refuses no limit a real model takes.
DEFAULT_OUTPUT_LIMIT = 128000
_BY_LENGTH = sorted(OUTPUT_LIMITS, key=len, reverse=True)


def max_output_tokens(model: str) -> int:
    """The most output tokens `model` (a model name as sent upstream) may be asked for."""
    prefix = next((name for name in _BY_LENGTH if model.startswith(name)), None)
    return DEFAULT_OUTPUT_LIMIT if prefix is None else OUTPUT_LIMITS[prefix]


def _openai_output_limit(names: Sequence[str], kind: str) -> Callable[[dict[str, Any]], None]:
    # OpenAI's refusal of a limit above the model's, e.g. "max_tokens is too large: 20480.
    # This model supports at most 16384 completion tokens, whereas you provided 20480."
    # (param `max_tokens`, code `invalid_value`).
    def check(body: dict[str, Any]) -> None:
        most = max_output_tokens(body["model"])
        for name in names:
            value = body.get(name)
            if value is not None and value > most:
                raise BadRequest(
                    f"{name} is too large: {value}. This model supports at most {most} "
                    f"{kind} tokens, whereas you provided {value}.",
                    name,
                    "invalid_value",
                )

    return check


def _anthropic_output_limit(body: dict[str, Any]) -> None:
    # Anthropic's refusal: "max_tokens: 128000 > 64000, which is the maximum allowed number
    # of output tokens for claude-3-7-sonnet-20250219".
    most = max_output_tokens(body["model"])
    if body["max_tokens"] > most:
        raise BadRequest(
            f"max_tokens: {body['max_tokens']} > {most}, which is the maximum allowed number "
            f"of output tokens for {body['model']}"
        )


# --------------------------------------------------------------------------- unknown fields

# Every body field of Anthropic's `POST /v1/messages`: those the official SDK sends (its
# `MessageCreateParams`, beta ones included, `betas` aside, which it sends as a header), the
# sampling parameters and the older `output_format`. Anthropic refuses any other with
# "<field>: Extra inputs are not permitted".
MESSAGES_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
        "container",
        "context_management",
        "mcp_servers",
        "service_tier",
        "inference_geo",
        "speed",
        "diagnostics",
        "compaction",
        "fallbacks",
        "fallback_credit_token",
        "billing_policy",
        "thread",
        "user_profile_id",
        "workspace_id",
    }
)
_EXTRA = "Extra inputs are not permitted"


def _messages_fields_known(body: dict[str, Any]) -> None:
    # Anthropic's `metadata` takes only `user_id` (its Messages reference), refused likewise.
    for name in body:
        if name not in MESSAGES_FIELDS:
            raise BadRequest(f"{name}: {_EXTRA}")
    if body.get("thread") is not None:
        # The simulator keeps no conversation between requests: it refuses a message
        # thread as a surface without threads does, in the form Anthropic's SDKs recover
        # from (they send the whole conversation again without `thread`).
        raise BadRequest(
            "thread: this deployment does not hold message threads; send the whole "
            "conversation without `thread`.",
            details={"error_code": "thread_unsupported_request"},
        )
    for name in body.get("metadata") or ():
        if name != "user_id":
            raise BadRequest(f"metadata.{name}: {_EXTRA}")


# The arguments of OpenAI's `POST /v1/embeddings` (API reference, "Create embeddings").
EMBEDDINGS_ARGUMENTS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def _embeddings_arguments_known(body: dict[str, Any]) -> None:
    # OpenAI's answer to any other (`stream`, `temperature`...), naming no param; a null
    # stands for an argument left out, as everywhere in the simulator.
    for name, value in body.items():
        if name not in EMBEDDINGS_ARGUMENTS and value is not None:
            raise BadRequest(f"Unrecognized request argument supplied: {name}")


# --------------------------------------------------------------------------- base64 data


def _decodes(data: str) -> bool:
    """Whether `data` is standard base64 (RFC 4648 alphabet, padded), as both APIs decode it."""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _anthropic_sources(blocks: Any, where: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, block type, source) of every image and document block in `blocks` (a content
    list at `where`, e.g. `messages.0.content`), those inside tool results and content
    documents included."""
    for index, block in enumerate(blocks if isinstance(blocks, list) else ()):
        at = f"{where}.{index}"
        kind = block["type"]
        if kind == "tool_result":
            yield from _anthropic_sources(block.get("content"), f"{at}.tool_result.content")
        elif kind in ("image", "document"):
            source = block["source"]
            yield f"{at}.{kind}", kind, source
            if source["type"] == "content":
                yield from _anthropic_sources(source["content"], f"{at}.document.source.content")


def _anthropic_base64_decodes(body: dict[str, Any]) -> None:
    # Anthropic's refusals: "messages.2.content.0.tool_result.content.0.image.source.base64:
    # invalid base64 data" and "messages.118.content.4.image.source.base64: image cannot be
    # empty" (as its API answered them, quoted in anthropics/anthropic-sdk-typescript#603 and
    # anthropics/claude-code#12750).
    for index, message in enumerate(body["messages"]):
        found = _anthropic_sources(message["content"], f"messages.{index}.content")
        for path, kind, source in found:
            if source["type"] != "base64":
                continue
            if kind == "image" and not source["data"]:
                raise BadRequest(f"{path}.source.base64: image cannot be empty")
            if not _decodes(source["data"]):
                raise BadRequest(f"{path}.source.base64: invalid base64 data")


def _data_url_payload(url: Any) -> str | None:
    """The base64 part of a `data:<type>;base64,<data>` URL, None for any other value."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    head, comma, data = url.partition(",")
    return data if comma and head.endswith(";base64") else None


# Draft 2020-12's meta-schema, bundled with jsonschema-rs (its `$ref` resolves without the
# network), built at the first schema a request carries (`_meta_validator`).
_META_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def _refuse_retrieval(uri: str) -> Any:
    raise ValueError(f"{uri} is not fetched")


@functools.cache
def _meta_validator() -> Any:
    """A validator of JSON Schemas against draft 2020-12's meta-schema that fetches
    nothing: a schema is judged as data, so its own `$schema` (any URI a client wrote) is
    never retrieved."""
    import jsonschema_rs  # only when a request carries a schema: most carry none

    return jsonschema_rs.Draft202012Validator(
        {"$ref": _META_SCHEMA_URI}, retriever=_refuse_retrieval
    )


def _schema_problem(schema: Any) -> str | None:
    """Why `schema` (a tool's parameters, a structured output's schema) is no valid JSON
    Schema (draft 2020-12, whose meta-schema both APIs check against, whatever `$schema`
    says), in OpenAI's words ("In context=('properties', 'a'), ..."); None when it is one,
    or is no object (its type is judged with the other parameters')."""
    if not isinstance(schema, dict):
        return None
    for error in _meta_validator().iter_errors(schema):
        return f"In context={tuple(error.instance_path)}, {error.message}"
    return None


def _openai_schemas_valid(body: dict[str, Any]) -> None:
    # OpenAI: 400 "Invalid schema for function 'f': In context=(...), ...", code
    # `invalid_function_parameters`, naming the tool's parameters; a structured output's
    # schema likewise ("Invalid schema for response_format 'name': ...").
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        nested = isinstance(function, dict)
        holder = function if isinstance(function, dict) else tool
        problem = _schema_problem(holder.get("parameters"))
        if problem is not None:
            raise BadRequest(
                f"Invalid schema for function '{str(holder.get('name'))[:64]}': {problem}",
                f"tools[{index}].function.parameters" if nested else f"tools[{index}].parameters",
                "invalid_function_parameters",
            )
    formats = (
        ("response_format", (body.get("response_format") or {}).get("json_schema")),
        ("text.format.schema", (body.get("text") or {}).get("format")),
    )
    for param, format_ in formats:
        if not isinstance(format_, dict):
            continue
        problem = _schema_problem(format_.get("schema"))
        if problem is not None:
            raise BadRequest(
                f"Invalid schema for response_format '{str(format_.get('name'))[:64]}': {problem}",
                param,
                "invalid_json_schema",
            )


def _anthropic_tool_schemas_valid(body: dict[str, Any]) -> None:
    # Anthropic: "tools.0.custom.input_schema: JSON schema is invalid. It must match JSON
    # Schema draft 2020-12 (https://json-schema.org/draft/2020-12)...".
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict) and _schema_problem(tool.get("input_schema")) is not None:
            raise BadRequest(
                f"tools.{index}.custom.input_schema: JSON schema is invalid. It must match "
                "JSON Schema draft 2020-12 (https://json-schema.org/draft/2020-12). Learn "
                "more about tool use at https://docs.claude.com/en/docs/tool-use."
            )


# The content part types each API takes (OpenAI API reference: Chat Completions' message
# content parts; the Responses API's input message content and output message content).
_CHAT_PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
_RESPONSES_PART_TYPES = (
    "input_text",
    "input_image",
    "input_file",
    "input_audio",
    "output_text",
    "refusal",
    "summary_text",
    "reasoning_text",
    "computer_screenshot",
)


def _unknown_part_type(part: Any, taken: Sequence[str], param: str) -> None:
    """Refuse a content part whose `type` is a string not in `taken`, as OpenAI words it:
    "Invalid value: 'x'. Supported values are: 'a', 'b', and 'c'."."""
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and kind not in taken:
        listed = ", ".join(f"'{name}'" for name in taken[:-1]) + f", and '{taken[-1]}'"
        raise BadRequest(
            f"Invalid value: '{kind[:64]}'. Supported values are: {listed}.",
            f"{param}.type",
            "invalid_value",
        )


def _chat_part_types_known(body: dict[str, Any]) -> None:
    for index, message in enumerate(body["messages"]):
        content = message.get("content")
        for position, part in enumerate(content if isinstance(content, list) else ()):
            _unknown_part_type(part, _CHAT_PART_TYPES, f"messages[{index}].content[{position}]")


def _responses_part_types_known(body: dict[str, Any]) -> None:
    items = body.get("input")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue
        parts = item.get("content")
        for position, part in enumerate(parts if isinstance(parts, list) else ()):
            _unknown_part_type(part, _RESPONSES_PART_TYPES, f"input[{index}].content[{position}]")


def _chat_image_data_decodes(body: dict[str, Any]) -> None:
    # OpenAI answers a `data:` image URL whose base64 does not decode (or is empty) with
    # "Invalid base64 image_url."; the param and code are those of its other refusals of an
    # image URL (`messages[0].content[1].image_url.url`, `invalid_value`).
    for index, message in enumerate(body["messages"]):
        content = message.get("content")
        for position, part in enumerate(content if isinstance(content, list) else ()):
            image = part.get("image_url") if isinstance(part, dict) else None
            data = _data_url_payload(image.get("url") if isinstance(image, dict) else None)
            if data is not None and (not data or not _decodes(data)):
                raise BadRequest(
                    "Invalid base64 image_url.",
                    f"messages[{index}].content[{position}].image_url.url",
                    "invalid_value",
                )


def _responses_image_data_decodes(body: dict[str, Any]) -> None:
    # The Responses API's refusal of an `input_image` whose data URL holds no bytes is
    # "Invalid 'input[101].content[1].image_url'. Expected a base64-encoded data URL with an
    # image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got empty
    # base64-encoded bytes."; base64 that does not decode gets OpenAI's "Invalid base64
    # image_url.", as in Chat Completions.
    items = body.get("input")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        parts = item.get("content") if isinstance(item, dict) else None
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            parts = item.get("output")
        for position, part in enumerate(parts if isinstance(parts, list) else ()):
            data = _data_url_payload(part.get("image_url") if isinstance(part, dict) else None)
            param = f"input[{index}].content[{position}].image_url"
            if data == "":
                raise BadRequest(
                    f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME "
                    "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got empty "
                    "base64-encoded bytes.",
                    param,
                    "invalid_value",
                )
            if data is not None and not _decodes(data):
                raise BadRequest("Invalid base64 image_url.", param, "invalid_value")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Rules:
    """The rules of one route: `api` (`openai` or `anthropic`, whose error wording applies),
    `first` (checks before the parameters'), the parameters' types and ranges (`schema`, a
    TypedDict of constrained types) and `then` (rules tying parameters together, checked once
    each parameter is valid). Every check takes the body and raises `BadRequest`."""

    api: Literal["openai", "anthropic"]
    schema: type
    first: Sequence[Callable[[dict[str, Any]], None]] = ()
    then: Sequence[Callable[[dict[str, Any]], None]] = ()
    adapter: TypeAdapter[Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per route: validating with it is what costs microseconds.
        object.__setattr__(self, "adapter", TypeAdapter(self.schema))

    def check(self, body: dict[str, Any], betas: frozenset[str] = frozenset()) -> None:
        """Raise `BadRequest` for the first rule `body` (the request's JSON object) breaks;
        a rule an `anthropic-beta` of `betas` lifts (`_LIFTED_BY`) is not applied."""
        for rule in self.first:
            rule(body)
        try:
            self.adapter.validate_python(body)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            raise (openai_bad_request if self.api == "openai" else anthropic_bad_request)(
                error
            ) from None
        try:
            for rule in self.then:
                if not betas & _LIFTED_BY.get(rule, frozenset()):
                    rule(body)
        except AnthropicRequestError as exc:
            raise BadRequest(str(exc)) from None


# Rules an `anthropic-beta` value lifts: interleaved thinking takes a budget at or above
# `max_tokens` (Anthropic's "Extended thinking" guide).
_LIFTED_BY: dict[Callable[[dict[str, Any]], None], frozenset[str]] = {
    _thinking_within_max_tokens: frozenset({anthropic_request.INTERLEAVED_THINKING_BETA}),
}

RULES: dict[str, Rules] = {
    "/v1/chat/completions": Rules(
        "openai",
        ChatCompletionsParameters,
        first=(_openai_model_given,),
        then=(
            _top_logprobs_need_logprobs,
            _one_token_limit,
            _openai_output_limit(("max_completion_tokens", "max_tokens"), "completion"),
            _chat_tool_choice,
            _chat_tool_messages_answer_calls,
            _chat_part_types_known,
            _chat_image_data_decodes,
            _openai_schemas_valid,
        ),
    ),
    "/v1/responses": Rules(
        "openai",
        ResponsesParameters,
        first=(_openai_model_given,),
        then=(
            _one_conversation_state,
            _openai_output_limit(("max_output_tokens",), "output"),
            _chat_tool_choice,
            _responses_calls_answered,
            _responses_part_types_known,
            _responses_image_data_decodes,
            _openai_schemas_valid,
        ),
    ),
    "/v1/responses/input_tokens": Rules(
        "openai",
        ResponsesInputTokensParameters,
        first=(_openai_model_given,),
        then=(
            _one_conversation_state,
            _chat_tool_choice,
            _responses_part_types_known,
            _responses_image_data_decodes,
            _openai_schemas_valid,
        ),
    ),
    "/v1/embeddings": Rules(
        "openai",
        EmbeddingsParameters,
        first=(_openai_model_given, _embeddings_arguments_known),
    ),
    "/v1/messages": Rules(
        "anthropic",
        MessagesParameters,
        then=(
            _messages_fields_known,
            _anthropic_output_limit,
            _thinking_within_max_tokens,
            _thinking_takes_default_sampling,
            _no_trailing_whitespace_prefill,
            *anthropic_request.RULES_ACROSS_FIELDS,
            *anthropic_request.MESSAGES_RULES,
            _anthropic_base64_decodes,
            _anthropic_tool_schemas_valid,
        ),
    ),
    "/v1/messages/count_tokens": Rules(
        "anthropic",
        CountTokensParameters,
        then=(
            *anthropic_request.RULES_ACROSS_FIELDS,
            _anthropic_base64_decodes,
            _anthropic_tool_schemas_valid,
        ),
    ),
}


def check(route: str, body: dict[str, Any], betas: frozenset[str] = frozenset()) -> None:
    """Judge the parameters of `body` (a request's JSON object) sent to `route` (a path of
    `RULES`; any other route has no rules here) as the real API judges them, under the
    request's `anthropic-beta` values (`betas`).

    Raises:
        BadRequest: the first rule broken, in the words, `param` and `code` of the route's API.
    """
    rules = RULES.get(route)
    if rules is not None:
        rules.check(body, betas)


# --------------------------------------------------------------------------- error wording

_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: a boolean is an int in Python
    (int, "an integer"),
    (float, "a decimal number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)
_EXPECTED = {
    "float_type": "a decimal",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "a value")


def _openai_param(loc: tuple[int | str, ...]) -> str:
    """OpenAI's name for a field: `messages[0].role`, `logit_bias.50256`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)


def _choices(expected: str) -> str:
    # pydantic lists "'a', 'b' or 'c'"; OpenAI "'a', 'b', and 'c'" ("'a' and 'b'" for two).
    head, _, last = expected.rpartition(" or ")
    return f"{head}, and {last}" if ", " in head else f"{head} and {last}"


def openai_bad_request(error: ErrorDetails) -> BadRequest:
    """The `BadRequest` OpenAI answers for one pydantic `error` of a parameter: its message,
    `param` and `code` (the bound kinds of the OpenAI API's own errors)."""
    param = _openai_param(error["loc"])
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind in ("greater_than_equal", "less_than_equal"):
        below = kind == "greater_than_equal"
        bound = ctx["ge" if below else "le"]
        number = "decimal" if isinstance(bound, float) else "integer"
        side = "below minimum" if below else "above maximum"
        return BadRequest(
            f"Invalid '{param}': {number} {side} value. Expected a value "
            f"{'>=' if below else '<='} {_number(bound)}, but got {_number(value)} instead.",
            param,
            f"{number}_{'below_min' if below else 'above_max'}_value",
        )
    if kind == "too_long" and isinstance(value, dict):
        return BadRequest(
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{ctx['max_length']} properties, but got an object with {len(value)} "
            "properties instead.",
            param,
            "object_above_max_properties",
        )
    if kind == "string_too_long":
        return BadRequest(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{ctx['max_length']}, but got a string with length {len(value)} instead.",
            param,
            "string_above_max_length",
        )
    if kind == "string_pattern_mismatch":
        return BadRequest(
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            f"matches the pattern '{ctx['pattern']}'.",
            param,
            "invalid_value",
        )
    if kind == "too_long":
        return BadRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx['max_length']}, but got an array with length {ctx['actual_length']} instead.",
            param,
            "array_above_max_length",
        )
    if kind == "too_short":
        return BadRequest(
            f"Invalid '{param}': empty array. Expected an array with minimum length "
            f"{ctx['min_length']}, but got an empty array instead.",
            param,
            "empty_array",
        )
    if kind == "missing":
        return BadRequest(
            f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
        )
    if kind == "literal_error" and isinstance(value, str):
        return BadRequest(
            f"Invalid value: '{value}'. Supported values are: {_choices(ctx['expected'])}.",
            param,
            "invalid_value",
        )
    expected = (
        f"one of {ctx['expected']}" if kind == "literal_error" else _EXPECTED.get(kind, "a value")
    )
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param,
        "invalid_type",
    )


def anthropic_bad_request(error: ErrorDetails) -> BadRequest:
    """The `BadRequest` Anthropic answers for one pydantic `error` of a parameter: the dotted
    field path, a colon, and the sentence (`thinking.enabled.budget_tokens: Input should be
    greater than or equal to 1024`)."""
    return BadRequest(str(anthropic_request.error_of(error)))
