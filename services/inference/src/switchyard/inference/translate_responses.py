"""OpenAI's Responses API served by deployments that do not offer it: a Responses request
translated once to Chat Completions (vLLM, Ollama and other chat-only servers) or to
Anthropic's Messages, and the reply or stream translated back once into a `response` and
its typed event sequence. Also the pass-through body for deployments that offer it.

Switchyard serves four Responses parameters itself, whatever the deployment:
`previous_response_id` (the conversation's items come with the request,
`ChatRequestData.previous_items`, and are sent before `input`), `store` and `metadata`
(history keeps the state and echoes them), and `background` (the gateway answers at once
and inference runs the request in the batch lane). `previous_response_id` and
`background` are never sent upstream; `store` and `metadata` reach a deployment that
offers the Responses API as the client sent them (its own store is its business), and
no translated deployment.

The rule of `translate.py` holds: what the target API can express is mapped; what it
cannot is refused with `TranslationError` naming the parameter (the client gets 400),
never dropped. Parameter paths use the Responses API's own notation (`input[2].content[0]`,
`tools[1]`); a problem in the items of the previous response is reported on
`previous_response_id`. docs/protocols.md has the mapping tables.

Streams end with the full event sequence a Responses client expects, each event numbered
by `sequence_number` from 0: `response.created`, `response.in_progress`, for each output
item `response.output_item.added` ... `response.output_item.done` (with its content part,
text, refusal, reasoning summary and function-call argument events), then
`response.completed` or `response.incomplete`.
"""

from __future__ import annotations

import functools
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from switchyard.common import exactjson
from switchyard.common.errors import unsupported_value
from switchyard.common.events import TokenUsage, utcnow
from switchyard.common.openai_request import function_call_fault
from switchyard.common.output_schema import JSON_MODE_RESPONSES_MESSAGE, mentions_json
from switchyard.common.responses import (
    LIFECYCLE_EVENTS,
    RESPONSE_INCLUDABLE,
    response_object,
    upstream_item,
    usage_object,
)
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS, THINKING_BUDGET_BY_EFFORT
from switchyard.inference.translate import (
    INPUT_IMAGE_DETAILS,
    OPENAI_SERVICE_TIERS,
    REASONING_FIELDS,
    PendingCall,
    ThinkingType,
    ToolCallIndexes,
    TranslationError,
    add_anthropic_sampling,
    add_anthropic_thinking,
    anthropic_blocks,
    anthropic_output_config,
    anthropic_tool,
    anthropic_tool_choice,
    base64_data,
    below_minimum,
    check_function,
    check_json_schema_format,
    check_strict_format,
    document_source,
    empty_string,
    image_source,
    invalid_type,
    invalid_value,
    is_translated_thinking,
    joined_text,
    missing_parameter,
    not_one_of,
    offer_history_tools,
    parse_data_url,
    place_system_turns,
    positive_integer,
    reasoning_field_for,
    reasoning_of,
    refuse_function_options,
    refuse_unknown,
    required_text,
    signed_for,
    text_of,
    tool_calls_of,
    tool_input_of_request,
    trim_prefill,
    unique_tool_use_ids,
    unusable_tool_choice,
    whole_json,
)
from switchyard.inference.usage import delta_chars

# Fields Switchyard serves itself: never sent upstream.
SERVED_FIELDS = ("previous_response_id", "background", "store", "metadata")
# Built-in tools of the Responses API (OpenAI runs them); only a deployment that passes
# the request through to OpenAI's Responses API can offer them.
_EFFORT_BUDGETS = THINKING_BUDGET_BY_EFFORT
_INCLUDE_REFUSED = frozenset({"message.output_text.logprobs"})
# `reasoning.summary` (and its older name `generate_summary`) as OpenAI takes it.
_SUMMARY_MODES = ("auto", "concise", "detailed")


@dataclass(frozen=True)
class ResponseContext:
    """What every reply to one Responses request echoes: the client's body, the response
    id and creation time Switchyard gave it, and the public model name."""

    body: dict[str, Any]
    response_id: str
    created_at: datetime
    model: str
    # The `encrypted_content` of reasoning items made from a Chat Completions server's
    # reasoning text (`reasoning_signature` of its origin), so they go back to it as
    # `reasoning_content`; None: they have none.
    reasoning_signature: str | None = None

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        """The OpenAI `response` object of this request with `status` (`in_progress`,
        `completed`...) and the given `fields` (output, usage...), echoing the request's
        parameters."""
        return response_object(
            self.body,
            id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            status=status,
            **fields,
        )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# The id prefix of the reasoning items Switchyard makes when it translates another API's
# reply (an Anthropic thinking block, a Chat Completions server's reasoning text): their
# `encrypted_content`, when they have one, is an Anthropic signature, which an OpenAI
# Responses upstream cannot decrypt; and OpenAI's encrypted reasoning (a Fernet token,
# `gAAAA...`) is nothing an Anthropic deployment can read.
TRANSLATED_REASONING_PREFIX = "rs_sy"
_OPENAI_ENCRYPTED_PREFIX = "gAAAA"


# The id prefix of those made from a thinking block (not a redacted one): its text may be
# empty (Anthropic's "omitted" thinking display sends only the signature), and it must go
# back as a thinking block, never as redacted thinking. `t` is no hexadecimal digit, so
# ids made before it (`rs_sy` + hex) never start with it.
_THINKING_ID_PREFIX = f"{TRANSLATED_REASONING_PREFIX}t"


def _reasoning_id(*, thinking: bool = False) -> str:
    prefix = _THINKING_ID_PREFIX if thinking else TRANSLATED_REASONING_PREFIX
    return f"{prefix}{uuid.uuid4().hex}"


def _encrypted(item: dict[str, Any]) -> str | None:
    content = item.get("encrypted_content")
    return content if isinstance(content, str) and content else None


def translated_reasoning(item: Any) -> bool:
    """Whether `item` is reasoning that came from another API than OpenAI's Responses: made
    by Switchyard (an id starting `rs_sy`), or carrying encrypted content that is not
    OpenAI's (a thinking signature: items made before the prefix, or sent without an id)."""
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return False
    item_id = item.get("id")
    if isinstance(item_id, str) and item_id.startswith(TRANSLATED_REASONING_PREFIX):
        return True
    encrypted = _encrypted(item)
    return encrypted is not None and not encrypted.startswith(_OPENAI_ENCRYPTED_PREFIX)


def openai_reasoning(item: Any) -> bool:
    """Whether `item` is reasoning an OpenAI Responses upstream made (or another server of
    that API): not Switchyard's, and either OpenAI's encrypted content or an id of the
    upstream's own with no signature of another vendor."""
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return False
    if translated_reasoning(item):
        return False
    encrypted = _encrypted(item)
    return encrypted is not None or isinstance(item.get("id"), str)


def _dumps(value: Any) -> str:
    return exactjson.dumps(value).decode()


# =========================================================================== requests


def client_items(value: Any) -> list[Any]:
    """The client's `input` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return list(value)
    raise invalid_type("input", "a string or an array", value)


def passthrough_body(
    body: dict[str, Any], previous_items: list[dict[str, Any]] | None, model: str
) -> dict[str, Any]:
    """The body for a deployment offering the Responses API: the client's, with `model`
    replaced, the previous conversation's items before `input`, and without the
    parameters Switchyard serves itself (`previous_response_id`, `background`). Reasoning
    items Switchyard made from another API's reply are left out (`translated_reasoning`):
    their content is not OpenAI's to decrypt, and the model reasons afresh without them."""
    payload = {
        name: value
        for name, value in body.items()
        if name not in ("previous_response_id", "background")
    }
    payload["model"] = model
    current = body.get("input")
    translated = isinstance(current, list) and any(map(translated_reasoning, current))
    if previous_items or translated:
        items = [upstream_item(item) for item in previous_items or ()] + client_items(current)
        payload["input"] = [item for item in items if not translated_reasoning(item)]
    return payload


@dataclass
class _Items:
    """The request's items in order (the previous conversation's, then `input`), with
    where each is reported in an error."""

    items: list[Any]
    previous: int

    def where(self, index: int) -> str:
        if index < self.previous:
            return "previous_response_id"
        return f"input[{index - self.previous}]"


def _items(
    body: dict[str, Any], previous_items: list[dict[str, Any]] | None, *, counting: bool = False
) -> _Items:
    """The items, refused in OpenAI's words when there are none (no `input`, and no
    previous response to continue): the deployment's API would name its own field. A
    count (`counting`: `POST /v1/responses/input_tokens`, whose `input` is optional) may
    have none."""
    previous = list(previous_items or [])
    items = _Items(previous + client_items(body.get("input")), len(previous))
    if not items.items:
        if body.get("input") is None:
            if counting:
                return items
            raise missing_parameter("input")
        raise TranslationError(
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "input",
            "empty_array",
        )
    if not counting:
        _check_calls_answered(items)
    return items


def _required_string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if value is None:
        raise missing_parameter(f"{where}.{name}")
    if not isinstance(value, str):
        raise invalid_type(f"{where}.{name}", "a string", value)
    return value


def _check_calls_answered(items: _Items) -> None:
    """Refuse, in OpenAI's words, a `function_call` (whose `call_id`, `name` and
    `arguments` must be strings, the first two not empty) or `function_call_output` that
    do not pair (`switchyard.common.openai_request`): translated, an unpaired one would be
    refused by the deployment's API under its own field names (Anthropic's tool use and
    result ids, Chat Completions' tool messages)."""
    for index, item in enumerate(items.items):
        if not isinstance(item, dict) or item.get("type") not in (
            "function_call",
            "function_call_output",
        ):
            continue
        where = items.where(index)
        if not _required_string(item, "call_id", where):
            raise empty_string(f"{where}.call_id")
        if item["type"] == "function_call":
            if not _required_string(item, "name", where):
                raise empty_string(f"{where}.name")
            _required_string(item, "arguments", where)
    fault = function_call_fault(items.items)
    if fault is not None:
        raise TranslationError(fault, "input", "invalid_value")


# OpenAI's floor for a Responses request's `max_output_tokens` (its API refuses less); the
# translated request's own limit (`max_tokens`, `max_completion_tokens`) has none as high.
MIN_MAX_OUTPUT_TOKENS = 16


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """The client's `max_output_tokens` if set; TranslationError in OpenAI's words unless
    it is an integer of at least `MIN_MAX_OUTPUT_TOKENS`. An integer below it (0 and
    negatives included) gets the one refusal OpenAI gives every value under its floor,
    not the generic one for a value that is not positive."""
    value = body.get("max_output_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value < MIN_MAX_OUTPUT_TOKENS:
        raise below_minimum("max_output_tokens", MIN_MAX_OUTPUT_TOKENS, value)
    return positive_integer(body, "max_output_tokens")


def _common_checks(body: dict[str, Any]) -> None:
    """Parameters both translations treat alike: accepted when they ask for nothing the
    target cannot do, refused by name otherwise."""
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid_type("parallel_tool_calls", "a boolean", parallel)
    client_metadata = body.get("client_metadata")
    if client_metadata is not None and not isinstance(client_metadata, dict):
        raise invalid_type("client_metadata", "an object", client_metadata)
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise not_one_of("truncation", truncation, ("auto", "disabled"))
    if truncation == "auto":
        raise TranslationError(
            "'truncation' = 'auto' cannot be served by this model's deployment: it does not "
            "truncate conversations. Use 'disabled'.",
            "truncation",
        )
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid_type(name, "a string", value)
    for name in ("top_logprobs", "max_tool_calls"):
        value = body.get(name)
        # bool is an int in Python, not in JSON Schema: `true` is not a number of calls.
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise invalid_type(name, "an integer", value)
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise TranslationError(
            "'top_logprobs' cannot be served by this model's deployment.", "top_logprobs"
        )
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise invalid_type("include", "an array", include)
        for index, value in enumerate(include):
            if not isinstance(value, str):
                raise invalid_type(f"include[{index}]", "a string", value)
            if value not in RESPONSE_INCLUDABLE:
                # Refused as OpenAI refuses it: a typo never passes as a no-op.
                raise _unknown_value(value, RESPONSE_INCLUDABLE, f"include[{index}]")
            if value in _INCLUDE_REFUSED:
                raise TranslationError(
                    f"'include' value {value!r} cannot be served by this model's deployment.",
                    f"include[{index}]",
                )


def _unknown_value(value: str, known: frozenset[str], param: str) -> TranslationError:
    """OpenAI's refusal of an enumerated value it does not take: 400 `invalid_value`
    naming `param` and listing the `known` ones."""
    return TranslationError(
        unsupported_value(value, sorted(known)),
        param,
        code="invalid_value",
    )


@functools.cache
def responses_tool_types() -> frozenset[str]:
    """The `tools[].type` values OpenAI's Responses API takes, from the `openai` SDK's own
    `Tool` union (read once, when a tool other than a function is first met)."""
    from openai.types.responses.tool import Tool

    members = typing.get_args(Tool)
    if typing.get_origin(Tool) is typing.Annotated:
        members = typing.get_args(members[0])
    types: set[str] = set()
    for member in members:
        field = getattr(member, "model_fields", {}).get("type")
        if field is not None:
            types.update(typing.get_args(field.annotation))
    return frozenset(types)


# Tool types the client runs, other than plain functions: a group of functions
# (`namespace`) and free-form input (`custom`). Not OpenAI's to run, but no other API
# has their shape.
_CLIENT_RUN_TOOL_TYPES = frozenset({"namespace", "custom"})


def _builtin_tool_error(tool: Any, index: int) -> TranslationError:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str):
        return invalid_type(f"tools[{index}].type", "a string", kind)
    known = responses_tool_types()
    if known and kind not in known:
        # Refused as OpenAI refuses it: a typo is no built-in tool this deployment lacks.
        return _unknown_value(kind, known, f"tools[{index}].type")
    if kind in _CLIENT_RUN_TOOL_TYPES:
        return TranslationError(
            f"Tools of type {kind!r} (tools[{index}]) cannot be sent to this model: its "
            "deployment takes plain function tools only. Use function tools, or a model "
            "whose deployment passes Responses requests through.",
            f"tools[{index}]",
        )
    return TranslationError(
        f"The built-in tool {kind!r} (tools[{index}]) is run by OpenAI's Responses API; this "
        "model's deployment does not offer it. Use function tools, or a model whose "
        "deployment passes Responses requests through.",
        f"tools[{index}]",
    )


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's function tools (name, description, parameters, strict), each checked
    (`_function_tool`); `tools` must be an array."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_type("tools", "an array", tools)
    return [_function_tool(tool, index) for index, tool in enumerate(tools)]


def _function_tool(tool: Any, index: int) -> dict[str, Any]:
    """A Responses function tool's fields (name, description, parameters, strict); refused
    in OpenAI's words when it is not an object, has no `type` or `name`, is built in, or
    has another field (an option the translated tool cannot carry)."""
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise invalid_type(where, "an object", tool)
    if tool.get("type") is None:
        raise missing_parameter(f"{where}.type")
    if tool.get("type") != "function":
        raise _builtin_tool_error(tool, index)
    check_function(tool, where)
    refuse_function_options(tool, where, "another API than OpenAI's Responses API")
    return tool


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise TranslationError("'text' must be an object.", "text")
    for key in text:
        if key not in ("format", "verbosity"):
            raise TranslationError(f"'text.{key}' cannot be sent to this model.", f"text.{key}")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise missing_parameter("text.format.type")
    if kind not in ("text", "json_schema", "json_object"):
        raise not_one_of("text.format.type", kind, ("text", "json_schema", "json_object"))
    if kind == "json_schema":
        check_json_schema_format(fmt, "text.format")
        schema = fmt.get("schema")
        if schema is None:
            raise missing_parameter("text.format.schema")
        if not isinstance(schema, dict):
            raise invalid_type("text.format.schema", "an object", schema)
        check_strict_format(fmt, "text.format.schema", "invalid_json_schema")
    return fmt


def _effort(body: dict[str, Any]) -> str | None:
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise TranslationError("'reasoning' must be an object.", "reasoning")
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary"):
            raise TranslationError(
                f"'reasoning.{key}' cannot be sent to this model.", f"reasoning.{key}"
            )
    effort = reasoning.get("effort")
    if effort is not None and (
        not isinstance(effort, str) or (effort != "none" and effort not in _EFFORT_BUDGETS)
    ):
        raise not_one_of(
            "reasoning.effort", effort, ("none", "minimal", "low", "medium", "high", "xhigh")
        )
    for key in ("summary", "generate_summary"):
        summary = reasoning.get(key)
        if summary is not None and summary not in _SUMMARY_MODES:
            raise not_one_of(f"reasoning.{key}", summary, _SUMMARY_MODES)
    return effort


def _check_reasoning_item(item: dict[str, Any], where: str) -> None:
    """Refuse, naming the field, a `reasoning` input item of the wrong shape (OpenAI's
    `ResponseReasoningItemParam`: `summary` a list of `{"type": "summary_text", "text"}`,
    `encrypted_content` a string or null), whichever way it is translated."""
    summary = item.get("summary")
    if summary is not None:
        if not isinstance(summary, list):
            raise invalid_type(f"{where}.summary", "an array", summary)
        for position, part in enumerate(summary):
            part_where = f"{where}.summary[{position}]"
            if not isinstance(part, dict):
                raise invalid_type(part_where, "an object", part)
            if not isinstance(part.get("text"), str):
                raise invalid_type(f"{part_where}.text", "a string", part.get("text"))
    encrypted = item.get("encrypted_content")
    if encrypted is not None and not isinstance(encrypted, str):
        raise invalid_type(f"{where}.encrypted_content", "a string", encrypted)


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if content is None:
        raise missing_parameter(f"{where}.content")
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array", content)
    for position, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid_type(f"{where}.content[{position}]", "an object", part)
        if part.get("type") is None:
            raise missing_parameter(f"{where}.content[{position}].type")
    return content


def _kind(item: Any, where: str) -> str:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    if kind is None:
        raise missing_parameter(f"{where}.type")
    if not isinstance(kind, str):
        raise invalid_type(f"{where}.type", "a string", kind)
    return kind


def _invalid_role(role: Any, where: str) -> TranslationError:
    if role is None:
        return missing_parameter(f"{where}.role")
    return not_one_of(f"{where}.role", role, ("user", "assistant", "system", "developer"))


def _unsupported_item(kind: str, where: str) -> TranslationError:
    if kind == "item_reference":
        message = (
            f"'{where}': item references cannot be resolved for this model; send the item "
            "itself or continue with 'previous_response_id'."
        )
    else:
        message = f"'{where}': input items of type {kind!r} cannot be sent to this model."
    return TranslationError(message, where)


def _call_output(item: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        for position, part in enumerate(output):
            if not isinstance(part, dict):
                raise invalid_type(f"{where}.output[{position}]", "an object", part)
        return output
    if output is None:
        raise missing_parameter(f"{where}.output")
    raise invalid_type(f"{where}.output", "a string or an array", output)


# ---------------------------------------------------------------- to Chat Completions

_TO_CHAT_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "stream",
        "stream_options",
        "include",
        "truncation",
        "top_logprobs",
        "max_tool_calls",
        # What a client says of itself (Codex's session and turn ids): no model reads it.
        "client_metadata",
        *SERVED_FIELDS,
    }
)


def responses_request_to_chat(
    body: dict[str, Any],
    previous_items: list[dict[str, Any]] | None = None,
    *,
    counting: bool = False,
    reasoning_origin: str | None = None,
) -> dict[str, Any]:
    """A Responses request (and the previous conversation's items) as a Chat Completions
    request; for a count (`counting`) possibly without messages. `reasoning_origin`: the
    origin of the deployment it goes to (`reasoning_origin`): reasoning items made from
    that server's reasoning text (`reasoning_signature`) go back to it as the next
    assistant message's `reasoning_content`; other reasoning is left out. Raises
    TranslationError naming the parameter Chat Completions cannot express (built-in
    tools, `truncation: auto`, item references, ...)."""
    refuse_unknown(body, _TO_CHAT_FIELDS, "OpenAI's Chat Completions")
    _common_checks(body)
    items = _items(body, previous_items, counting=counting)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise TranslationError("'instructions' must be a string.", "instructions")
    # Items that came while calls awaited their outputs: Chat Completions needs a call's
    # tool message right after the assistant message that made it, so they follow.
    deferred: list[dict[str, Any]] = []
    pending: set[str] = set()
    for index, item in enumerate(items.items):
        kind = item.get("type") if isinstance(item, dict) else None
        call = kind in ("function_call", "function_call_output")
        # Images and files a call's output holds follow its tool message, as the user's.
        deferred += _item_to_chat(
            item,
            items.where(index),
            messages if call or not pending else deferred,
            reasoning_origin,
        )
        call_id = item.get("call_id") if call else None
        if isinstance(call_id, str):
            (pending.add if kind == "function_call" else pending.discard)(call_id)
        if not pending:
            messages += deferred
            deferred = []
    messages += deferred
    for message in messages:
        if message["role"] == "assistant" and message.get("content") is None:
            if not message.get("tool_calls"):
                message["content"] = ""  # reasoning alone: a message needs content or calls

    result: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    limit = max_output_tokens(body)
    if limit is not None:
        result["max_completion_tokens"] = limit
    for name in (
        "temperature",
        "top_p",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
    ):
        if body.get(name) is not None:
            result[name] = body[name]
    tools = _tools(body)
    if tools:
        result["tools"] = [_chat_tool(tool) for tool in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        choice = _chat_tool_choice(choice)
    if tools:
        if choice is not None:
            result["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            result["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif choice not in (None, "auto", "none"):
        # Chat Completions refuses `tool_choice` and `parallel_tool_calls` without tools;
        # without tools `auto` and `none` ask nothing the model could do otherwise.
        raise invalid_value(
            "tool_choice", "'tool_choice' is only allowed when 'tools' are specified."
        )
    fmt = _text_format(body)
    if fmt is not None and fmt["type"] == "json_schema":
        schema = {
            name: fmt[name] for name in ("name", "schema", "strict", "description") if name in fmt
        }
        result["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None and fmt["type"] == "json_object":
        result["response_format"] = {"type": "json_object"}
    text = body.get("text")
    if isinstance(text, dict) and text.get("verbosity") is not None:
        result["verbosity"] = text["verbosity"]
    effort = _effort(body)
    if effort is not None:
        result["reasoning_effort"] = effort
    if body.get("stream"):
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    return result


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


_THINKING = ("thinking", "redacted_thinking")


def _thinking_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An assistant message's `blocks` opened by thinking when it has any (Anthropic's
    rule; a client may list a reasoning item after a message item of the same turn): the
    first run of thinking blocks moved to the front, every other block in its place.
    Thinking interleaved with tool use (`[thinking, tool_use, thinking, text]`) goes back
    in the order the model wrote it, which Anthropic requires."""
    if not blocks or blocks[0].get("type") in _THINKING:
        return blocks
    start = next((i for i, block in enumerate(blocks) if block.get("type") in _THINKING), None)
    if start is None:
        return blocks
    end = start
    while end < len(blocks) and blocks[end].get("type") in _THINKING:
        end += 1
    return [*blocks[start:end], *blocks[:start], *blocks[end:]]


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        # Checked here: Chat Completions would name its own `tool_choice.function.name`.
        name = choice.get("name")
        if name is None:
            raise missing_parameter("tool_choice.name")
        if not isinstance(name, str):
            raise invalid_type("tool_choice.name", "a string", name)
        return {"type": "function", "function": {"name": name}}
    raise unusable_tool_choice(choice)


def _chat_user_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "text"):
        return {"type": "text", "text": required_text(part, where)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise TranslationError(
                f"'{where}': only images given by 'image_url' can be sent to this model.", where
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file: dict[str, Any] = {}
        if part.get("file_data") is not None:
            file["file_data"] = part["file_data"]
        elif part.get("file_id") is not None:
            file["file_id"] = part["file_id"]
        else:
            raise TranslationError(
                f"'{where}': only files given inline ('file_data') or by 'file_id' can be sent "
                "to this model.",
                where,
            )
        if part.get("filename") is not None:
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise TranslationError(
        f"'{where}': content parts of type {kind!r} cannot be sent to this model.", where
    )


def _texts(parts: list[dict[str, Any]], where: str, kinds: tuple[str, ...]) -> list[str]:
    """The texts (or refusals) of `parts`, empty ones left out; a part of a type not in
    `kinds` is refused. They are kept apart, never joined: joined, the words of one part
    and the next would run together."""
    texts = []
    for position, part in enumerate(parts):
        if part.get("type") not in kinds:
            raise TranslationError(
                f"'{where}.content[{position}]': content parts of type {part.get('type')!r} "
                "cannot be sent here.",
                f"{where}.content[{position}]",
            )
        part_where = f"{where}.content[{position}]"
        text = text_of(part, part_where) or text_of(part, part_where, "refusal")
        if text:
            texts.append(text)
    return texts


def _reasoning_only(message: dict[str, Any]) -> bool:
    """Whether a Chat Completions `message` being built is an assistant's reasoning alone
    (what follows it in the same turn joins it)."""
    return (
        message["role"] == "assistant"
        and any(field in message for field in REASONING_FIELDS)
        and message.get("content") is None
        and not message.get("tool_calls")
    )


def _chat_content(texts: list[str]) -> str | list[dict[str, Any]]:
    """Chat Completions `content` for texts: a string for one (or none), text parts for
    several."""
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return [{"type": "text", "text": text} for text in texts]


def _item_to_chat(
    item: Any, where: str, messages: list[dict[str, Any]], reasoning_origin: str | None = None
) -> list[dict[str, Any]]:
    """Translate one Responses input `item` at `where` into Chat Completions `messages`
    (appended, a function call joining the assistant message before it, an assistant
    message or call joining the reasoning before it). Returns the messages that must wait
    until the turn's tool messages are all sent: a user message with the images and files
    a call's output holds. `reasoning_origin`: the receiving server's origin, whose own
    reasoning text (`reasoning_field_for` its `encrypted_content`) goes back to it in the
    field it came in."""
    kind = _kind(item, where)
    if kind == "message":
        role = item.get("role")
        parts = _parts(item.get("content"), where)
        if role in ("system", "developer"):
            texts = _texts(parts, where, ("input_text", "text"))
            messages.append({"role": "system", "content": _chat_content(texts)})
        elif role == "user":
            content = [
                _chat_user_part(part, f"{where}.content[{position}]")
                for position, part in enumerate(parts)
            ]
            if len(content) == 1 and content[0]["type"] == "text":
                messages.append({"role": "user", "content": content[0]["text"]})
            else:
                messages.append({"role": "user", "content": content})
        elif role == "assistant":
            texts, refusals = [], []
            for position, part in enumerate(parts):
                part_kind = part.get("type")
                if part_kind in ("output_text", "input_text", "text"):
                    texts.append(text_of(part, f"{where}.content[{position}]"))
                elif part_kind == "refusal":
                    refusals.append(text_of(part, f"{where}.content[{position}]", "refusal"))
                else:
                    raise TranslationError(
                        f"'{where}.content[{position}]': assistant content of type "
                        f"{part_kind!r} cannot be sent to this model.",
                        f"{where}.content[{position}]",
                    )
            message: dict[str, Any] = {
                "role": "assistant",
                "content": _chat_content([text for text in texts if text]),
            }
            if refusals:
                message["refusal"] = "\n\n".join(refusal for refusal in refusals if refusal)
            last = messages[-1] if messages else None
            if last is not None and _reasoning_only(last):
                last.update(message)  # the reasoning before it is this message's
            else:
                messages.append(message)
        else:
            raise _invalid_role(role, where)
    elif kind == "function_call":
        call = {
            "id": item.get("call_id") or _new_id("call"),
            "type": "function",
            "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or ""},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if not last.get("content"):
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = _call_output(item, where)
        media: list[dict[str, Any]] = []
        if isinstance(output, list):
            # Chat Completions' tool messages take text only: an image or file a tool gave
            # goes to a user message after the tool messages of the turn.
            text_parts = [
                part for part in output if part.get("type") in ("input_text", "text", "output_text")
            ]
            media = [
                _chat_user_part(part, f"{where}.output[{position}]")
                for position, part in enumerate(output)
                if part.get("type") not in ("input_text", "text", "output_text")
            ]
            output = _chat_content(_texts(text_parts, where, ("input_text", "text", "output_text")))
        messages.append(
            {"role": "tool", "tool_call_id": item.get("call_id", ""), "content": output}
        )
        if media:
            return [{"role": "user", "content": media}]
    elif kind == "reasoning":
        # Earlier reasoning: Chat Completions has no place for it, and a model reasons
        # afresh on every turn (OpenAI drops earlier turns' reasoning itself); but the
        # receiving server's own reasoning text goes back to it, as it gave it (DeepSeek's
        # and Kimi's thinking models refuse a tool loop without it).
        _check_reasoning_item(item, where)
        field = reasoning_field_for(item.get("encrypted_content"), reasoning_origin)
        if field is not None:
            summary = item.get("summary") or ()
            text = "".join(part.get("text") or "" for part in summary if isinstance(part, dict))
            if text:
                last = messages[-1] if messages else None
                if last is not None and _reasoning_only(last):
                    last[field] = last.get(field, "") + text
                else:
                    messages.append({"role": "assistant", "content": None, field: text})
        return []
    else:
        raise _unsupported_item(kind, where)
    return []


# ---------------------------------------------------------------- to Anthropic Messages

# What Chat Completions takes, less what Messages has no place for: Anthropic caches by
# `cache_control` breakpoints, not for a retention the request names.
_TO_MESSAGES_FIELDS = _TO_CHAT_FIELDS - {"prompt_cache_retention"}


def responses_request_to_messages(
    body: dict[str, Any],
    previous_items: list[dict[str, Any]] | None = None,
    *,
    default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
    mid_conversation_system_messages: bool = False,
    thinking_type: ThinkingType = "enabled",
) -> dict[str, Any]:
    """A Responses request (and the previous conversation's items) as an Anthropic
    Messages request, with `default_max_tokens` as its `max_tokens` when the client set
    no output limit, and `reasoning.effort` as thinking of `thinking_type`
    (`add_anthropic_thinking`). `instructions` and leading system or developer messages become
    `system`; later ones are appended to it, or, with `mid_conversation_system_messages`
    (the deployment's model takes `role: "system"` messages), stay system messages where
    Anthropic's placement rules allow (`place_system_turns`). Consecutive items of one
    role are merged into one turn (Anthropic requires alternation), function calls become
    `tool_use` and their outputs `tool_result` blocks. Raises TranslationError naming the
    parameter Messages cannot express."""
    refuse_unknown(body, _TO_MESSAGES_FIELDS, "Anthropic's Messages API")
    _common_checks(body)
    service_tier = body.get("service_tier")
    if service_tier is not None and service_tier not in OPENAI_SERVICE_TIERS:
        raise not_one_of("service_tier", service_tier, OPENAI_SERVICE_TIERS)
    if service_tier not in (None, "auto", "default"):
        raise TranslationError(
            f"'service_tier' = {service_tier!r} cannot be sent to this model.", "service_tier"
        )
    items = _items(body, previous_items)
    system: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            system.append(instructions)
    elif instructions is not None:
        raise TranslationError("'instructions' must be a string.", "instructions")
    turns: list[dict[str, Any]] = []
    # System or developer items that came while calls awaited their outputs: Anthropic
    # needs a tool use's result in the very next turn, so they follow the results.
    deferred: list[dict[str, Any]] = []
    pending: set[str] = set()
    for index, item in enumerate(items.items):
        where = items.where(index)
        role, blocks = _item_to_messages(item, where)
        if role == "system":
            # Apart, as the system blocks of an Anthropic request are joined for OpenAI.
            text = "\n\n".join(block["text"] for block in blocks)
            if not text.strip():  # Anthropic refuses text of only whitespace
                continue
            if not turns:
                system.append(text)
                continue
            waiting = deferred if pending else turns
            if waiting and waiting[-1]["role"] == "system":
                waiting[-1]["content"] += f"\n\n{text}"
            else:
                waiting.append({"role": "system", "content": text})
            continue
        blocks = anthropic_blocks(blocks)
        if not blocks:
            continue
        for block in blocks:
            if block["type"] == "tool_use":
                pending.add(block["id"])
            elif block["type"] == "tool_result":
                pending.discard(block["tool_use_id"])
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
        if not pending:
            turns += deferred
            deferred = []
    turns += deferred
    system += place_system_turns(turns, kept=mid_conversation_system_messages)
    unique_tool_use_ids(turns)
    for turn in turns:
        if turn["role"] == "user" and isinstance(turn["content"], list):
            # Tool results must open a user turn.
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
        elif turn["role"] == "assistant":
            turn["content"] = _thinking_first(turn["content"])
    trim_prefill(turns)

    if not turns:
        raise TranslationError(
            "'input' has no user or assistant message with content, which this model needs: "
            "its deployment speaks Anthropic's Messages API.",
            "input",
        )
    max_tokens = max_output_tokens(body)
    result: dict[str, Any] = {
        "model": body.get("model"),
        "messages": turns,
        "max_tokens": max_tokens if max_tokens is not None else default_max_tokens,
    }
    system_text = "\n\n".join(text for text in system if text)
    if system_text:
        result["system"] = system_text
    add_anthropic_sampling(body, result)
    tools = _tools(body)
    if tools:
        result["tools"] = [
            anthropic_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)
        ]
    choice = anthropic_tool_choice(
        body.get("tool_choice"),
        body.get("parallel_tool_calls"),
        function_name="name",
        tools=result.get("tools", []),
    )
    if choice is not None and tools:
        result["tool_choice"] = choice
    offer_history_tools(result)
    fmt = _text_format(body)
    if fmt is not None and fmt["type"] == "json_schema":
        result["output_config"] = anthropic_output_config(fmt["schema"], fmt.get("description"))
    elif fmt is not None and fmt["type"] == "json_object":
        # No Anthropic counterpart (see `anthropic_output_config`): the prompt asks for
        # JSON, as OpenAI requires, and is refused in OpenAI's words if not.
        if not mentions_json(body.get("input"), body.get("instructions"), previous_items):
            raise TranslationError(JSON_MODE_RESPONSES_MESSAGE, "input", "invalid_value")
    text_options = body.get("text")
    if isinstance(text_options, dict) and text_options.get("verbosity") not in (None, "medium"):
        raise TranslationError(
            "'text.verbosity' other than 'medium' cannot be sent to this model.",
            "text.verbosity",
        )
    effort = _effort(body)
    if effort is not None and effort != "none":
        add_anthropic_thinking(
            result,
            _EFFORT_BUDGETS[effort],
            capped=max_tokens is not None,
            effort_param="reasoning.effort",
            effort=effort,
            thinking_type=thinking_type,
        )
    if body.get("stream"):
        result["stream"] = True
    return result


def _anthropic_image(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise TranslationError(
            f"'{where}': only images given by 'image_url' can be sent to this model.", where
        )
    return {"type": "image", "source": image_source(url, f"{where}.image_url")}


def _anthropic_user_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "text", "output_text"):
        return {"type": "text", "text": required_text(part, where)}
    if kind == "input_image":
        detail = part.get("detail")
        if detail is not None and detail not in INPUT_IMAGE_DETAILS:
            raise not_one_of(f"{where}.detail", detail, INPUT_IMAGE_DETAILS)
        return _anthropic_image(part.get("image_url"), where)
    if kind == "input_file":
        file_data, file_url = part.get("file_data"), part.get("file_url")
        if file_data is not None:
            if not isinstance(file_data, str):
                raise invalid_type(f"{where}.file_data", "a string", file_data)
            data_url = parse_data_url(file_data, f"{where}.file_data")
            if data_url is None:
                # Plain base64 without a data URL's header: a PDF, as OpenAI reads it.
                data_url = ("application/pdf", base64_data(file_data, f"{where}.file_data"))
            source = document_source(*data_url, f"{where}.file_data")
            block: dict[str, Any] = {"type": "document", "source": source}
        elif file_url is not None:
            if not isinstance(file_url, str):
                raise invalid_type(f"{where}.file_url", "a string", file_url)
            if not file_url.lower().startswith(("https://", "http://")):
                raise invalid_value(f"{where}.file_url", "expected an http(s) URL.")
            block = {"type": "document", "source": {"type": "url", "url": file_url}}
        else:
            raise TranslationError(
                f"'{where}': only files given inline ('file_data') or by 'file_url' can be "
                "sent to this model.",
                where,
            )
        filename = part.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise invalid_type(f"{where}.filename", "a string", filename)
        if filename:
            block["title"] = filename
        return block
    raise TranslationError(
        f"'{where}': content parts of type {kind!r} cannot be sent to this model.", where
    )


def _item_to_messages(item: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """(turn role, blocks) of one item; role `system` carries text blocks."""
    kind = _kind(item, where)
    if kind == "message":
        role = item.get("role")
        parts = _parts(item.get("content"), where)
        if role in ("system", "developer"):
            texts = _texts(parts, where, ("input_text", "text"))
            return "system", [{"type": "text", "text": text} for text in texts]
        if role == "user":
            blocks = [
                _anthropic_user_block(part, f"{where}.content[{position}]")
                for position, part in enumerate(parts)
            ]
            return "user", [b for b in blocks if b["type"] != "text" or b["text"]]
        if role == "assistant":
            texts = _texts(parts, where, ("output_text", "input_text", "text", "refusal"))
            return "assistant", [{"type": "text", "text": text} for text in texts]
        raise _invalid_role(role, where)
    if kind == "function_call":
        return "assistant", [
            {
                "type": "tool_use",
                "id": item.get("call_id") or _new_id("toolu"),
                "name": item.get("name", ""),
                "input": tool_input_of_request(item.get("arguments"), f"{where}.arguments"),
            }
        ]
    if kind == "function_call_output":
        output = _call_output(item, where)
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": item.get("call_id", "")}
        if isinstance(output, str):
            result["content"] = output
        else:
            blocks = []
            for position, part in enumerate(output):
                part_where = f"{where}.output[{position}]"
                if not isinstance(part, dict):
                    raise invalid_type(part_where, "an object", part)
                blocks.append(_anthropic_user_block(part, part_where))
            result["content"] = blocks
        return "user", [result]
    if kind == "reasoning":
        _check_reasoning_item(item, where)
        # Thinking Switchyard returned as reasoning goes back with its signature (Anthropic
        # needs it to continue a turn that used tools); sent back by id alone, the gateway
        # completed it from the stored item, or refused it when not found (a thinking
        # block's). Reasoning without one is not sent (a Chat Completions server's text:
        # Anthropic ignores earlier turns' thinking anyway), nor is an OpenAI model's
        # (its encrypted content is OpenAI's, which Anthropic would refuse as a signature).
        if openai_reasoning(item):
            return "assistant", []
        signature = item.get("encrypted_content")
        if not isinstance(signature, str) or not signature:
            return "assistant", []
        if is_translated_thinking({"type": "thinking", "signature": signature}):
            return "assistant", []  # a Chat Completions server's text, signed by Switchyard
        summary = item.get("summary") or []
        text = "".join(part.get("text") or "" for part in summary if isinstance(part, dict))
        item_id = item.get("id")
        if text or (isinstance(item_id, str) and item_id.startswith(_THINKING_ID_PREFIX)):
            return "assistant", [{"type": "thinking", "thinking": text, "signature": signature}]
        return "assistant", [{"type": "redacted_thinking", "data": signature}]
    raise _unsupported_item(kind, where)


# =========================================================================== replies


def _message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _output_text(text: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}


def response_annotations(annotations: Any) -> list[dict[str, Any]]:
    """A Chat Completions message's (or delta's) `annotations` as a Responses
    `output_text` part's: a `url_citation` (Chat nests its `url`, `title`, `start_index`
    and `end_index` under `url_citation`) flattened, as the Responses API gives it
    (https://platform.openai.com/docs/api-reference/responses/object); an annotation of
    another type as it came. Anything but an object is left out."""
    if not isinstance(annotations, list):
        return []
    result: list[dict[str, Any]] = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            continue
        nested = annotation.get("url_citation")
        if annotation.get("type") == "url_citation" and isinstance(nested, dict):
            result.append({"type": "url_citation", **nested})
        else:
            result.append(annotation)
    return result


def _function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _reasoning_item(
    item_id: str, text: str | None, signature: str | None, status: str = "completed"
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if signature:
        item["encrypted_content"] = signature
    return item


_INCOMPLETE_BY_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}
_INCOMPLETE_BY_STOP = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}


# The output items a limit or a filter can cut off midway, which then say so (`status`
# "incomplete", as OpenAI marks them): a call's arguments may be no whole JSON, and an
# agent loop must not run it as if they were.
_CUT_OFF_KINDS = frozenset({"message", "function_call"})


def _cut_off(output: list[dict[str, Any]], reason: str | None) -> list[dict[str, Any]]:
    """`output` with its last item, when it is a message or a function call
    (`_CUT_OFF_KINDS`), `incomplete` if the response is (`reason` set): that item is the
    one the limit or the filter cut off. Earlier items were whole when the next one
    began."""
    if reason is not None and output and output[-1]["type"] in _CUT_OFF_KINDS:
        output[-1]["status"] = "incomplete"
    return output


def _finished(
    ctx: ResponseContext,
    output: list[dict[str, Any]],
    usage: TokenUsage,
    reason: str | None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    if reason is not None:
        return ctx.response(
            "incomplete",
            output=output,
            usage=usage_object(usage),
            incomplete_details={"reason": reason},
            service_tier=service_tier,
        )
    return ctx.response(
        "completed",
        output=output,
        usage=usage_object(usage),
        completed_at=utcnow(),
        service_tier=service_tier,
    )


# Anthropic's `usage.service_tier` as the Responses API names the tier that served it.
_TIER_OF_ANTHROPIC = {"standard": "default", "priority": "priority"}


def served_tier(reply: dict[str, Any]) -> str | None:
    """The service tier an upstream says served a request: a Chat Completions reply's or
    chunk's `service_tier`, or an Anthropic message's `usage.service_tier` (`standard` is
    OpenAI's `default`); None when it says none (or one the Responses API has no name
    for)."""
    tier = reply.get("service_tier")
    if isinstance(tier, str) and tier:
        return tier
    usage = reply.get("usage")
    tier = usage.get("service_tier") if isinstance(usage, dict) else None
    return _TIER_OF_ANTHROPIC.get(tier) if isinstance(tier, str) else None


def chat_completion_to_response(
    completion: dict[str, Any], ctx: ResponseContext, usage: TokenUsage
) -> dict[str, Any]:
    """A `chat.completion` (its first choice) as a Responses `response`: reasoning text a
    server returns (`reasoning_content`) as a reasoning item, the content as a message
    (a refusal as a refusal part), tool calls as function_call items; a `length` or
    `content_filter` finish makes the response `incomplete`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning is not None:
        field, thought = reasoning
        signature = ctx.reasoning_signature
        output.append(
            _reasoning_item(
                _reasoning_id(), thought, signed_for(signature, field) if signature else None
            )
        )
    content: list[dict[str, Any]] = []
    text = message.get("content")
    annotations = response_annotations(message.get("annotations"))
    if isinstance(text, str) and (text or annotations):
        content.append(_output_text(text, annotations))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "refusal", "refusal": refusal})
    if content:
        output.append(_message_item(_new_id("msg"), content, "completed"))
    for call in tool_calls_of(message):
        function = call.get("function") or {}
        output.append(
            _function_call_item(
                _new_id("fc"),
                call.get("id") or _new_id("call"),
                function.get("name", ""),
                function.get("arguments") or "",
                "completed",
            )
        )
    reason = _INCOMPLETE_BY_FINISH.get(choice.get("finish_reason") or "")
    return _finished(ctx, _cut_off(output, reason), usage, reason, served_tier(completion))


def message_to_response(
    message: dict[str, Any], ctx: ResponseContext, usage: TokenUsage
) -> dict[str, Any]:
    """An Anthropic `message` as a Responses `response`: thinking blocks as reasoning
    items (the thinking as summary text, the signature as `encrypted_content`), text
    blocks as one message, tool_use blocks as function_call items; `max_tokens` and
    `refusal` stops make the response `incomplete`."""
    output: list[dict[str, Any]] = []
    text: list[str] | None = None  # the pieces of the part consecutive text blocks fill
    # Each output_text part with its pieces, joined at the end (once, not per block).
    parts: list[tuple[dict[str, Any], list[str]]] = []
    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if text is None:
                part, text = _output_text(""), []
                parts.append((part, text))
                output.append(_message_item(_new_id("msg"), [part], "completed"))
            text.append(joined_text(None, block.get("text")))
            continue
        text = None
        if kind == "thinking":
            output.append(
                _reasoning_item(
                    _reasoning_id(thinking=True), block.get("thinking"), block.get("signature")
                )
            )
        elif kind == "redacted_thinking":
            output.append(_reasoning_item(_reasoning_id(), None, block.get("data")))
        elif kind == "tool_use":
            output.append(
                _function_call_item(
                    _new_id("fc"),
                    block.get("id") or _new_id("call"),
                    block.get("name", ""),
                    _dumps(block.get("input") or {}),
                    "completed",
                )
            )
    for part, pieces in parts:
        part["text"] = "".join(pieces)
    reason = _INCOMPLETE_BY_STOP.get(message.get("stop_reason") or "")
    return _finished(ctx, _cut_off(output, reason), usage, reason, served_tier(message))


# =========================================================================== streams


@dataclass
class _Open:
    """An output item being streamed."""

    kind: str  # message, function_call, reasoning
    index: int
    item_id: str
    parts: list[dict[str, Any]] = field(default_factory=list)  # message content parts
    part_open: str | None = None  # "output_text" or "refusal"
    text: list[str] = field(default_factory=list)  # current part / summary / arguments
    annotations: list[dict[str, Any]] = field(default_factory=list)  # of the current part
    call_id: str = ""
    name: str = ""
    # A reasoning item's signature, in the pieces it came in (joined once, at its close).
    signature: list[str] = field(default_factory=list)
    # The events of a reasoning item held until its signature is whole (`hold`), from its
    # `response.output_item.added` on, each (type, data) without its `sequence_number`:
    # numbered when released; None once released (or never held).
    held: list[tuple[str, dict[str, Any]]] | None = None
    held_since: float = 0.0


# At most how long (seconds) a reasoning item's events are held for its signature: a
# stream shows nothing of them meanwhile, and a gateway ends a stream that has not
# started by its request timeout (120 s by default); a longer thinking streams live from
# then on, its signature in `response.output_item.done` (and the stored response) only.
REASONING_HOLD_S = 20.0


class ResponseEventWriter:
    """Writes a Responses event stream: every event numbered (`sequence_number` from 0),
    output items opened and closed with their full event sequence, and the final
    response assembled from the items it closed. The stream converters below drive it.

    A reasoning item opened with `hold` (an Anthropic thinking block, whose signature
    comes last) is announced only once its signature is whole, at its close: its
    `response.output_item.added` carries `encrypted_content` as OpenAI's does (clients
    such as langchain-openai read reasoning items from that event only), followed by
    its summary events, all numbered in order then. `clock` (seconds) times the hold
    (`REASONING_HOLD_S`)."""

    def __init__(self, ctx: ResponseContext, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self._clock = clock
        self._sequence = 0
        self._next_index = 0
        self._started = False
        self._finished = False
        self._items: dict[Any, _Open] = {}  # open items by the converter's key
        self._done: dict[int, dict[str, Any]] = {}  # closed items by output index
        # The tier the upstream says served the request (`served_tier`), for the final
        # response; the opening events echo the one asked for, as OpenAI's do.
        self.service_tier: str | None = None

    @property
    def open(self) -> bool:
        """Whether the response has started and not finished."""
        return self._started and not self._finished

    @property
    def output(self) -> list[dict[str, Any]]:
        """The output items closed so far, in output order."""
        return [self._done[index] for index in sorted(self._done)]

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """The opening events of the stream, `response.created` and `response.in_progress`,
        the first time only (else none)."""
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self.ctx.response("in_progress")),
            self._event("response.in_progress", response=self.ctx.response("in_progress")),
        ]

    def _open(
        self, key: Any, kind: str, item_id: str, item: dict[str, Any], *, hold: bool = False
    ) -> list[dict[str, Any]]:
        # An item held before this one is announced first: output items follow one another.
        events = [*self.start(), *self._release_all()]
        state = _Open(kind, self._next_index, item_id)
        self._next_index += 1
        self._items[key] = state
        if hold:
            state.held, state.held_since = [], self._clock()
            return events
        added = self._event("response.output_item.added", output_index=state.index, item=item)
        return [*events, added]

    def _item_event(self, state: _Open, kind: str, **data: Any) -> list[dict[str, Any]]:
        """Event `kind` of the open item `state`: numbered now, or held with the item's
        others while it is held (then none; all of them once the hold lasted
        `REASONING_HOLD_S`)."""
        if state.held is None:
            return [self._event(kind, **data)]
        state.held.append((kind, data))
        if self._clock() - state.held_since >= REASONING_HOLD_S:
            return self._release(state)
        return []

    def _release(self, state: _Open) -> list[dict[str, Any]]:
        """The held reasoning item `state`'s events, numbered now: its
        `response.output_item.added` (with the signature so far as `encrypted_content`),
        then those that came since; none when it is not held."""
        held, state.held = state.held, None
        if held is None:
            return []
        signature = "".join(state.signature) or None
        item = _reasoning_item(state.item_id, None, signature, "in_progress")
        events = [self._event("response.output_item.added", output_index=state.index, item=item)]
        return events + [self._event(kind, **data) for kind, data in held]

    def _release_all(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for state in sorted(self._items.values(), key=lambda s: s.index):
            events += self._release(state)
        return events

    def is_open(self, key: Any) -> bool:
        """Whether the converter's item `key` is open (its events may still come)."""
        return key in self._items

    # ---- messages

    def text(self, key: Any, delta: str, part: str = "output_text") -> list[dict[str, Any]]:
        """A piece of the message `key` (opened on first use): output text, or a refusal."""
        events: list[dict[str, Any]] = []
        if key not in self._items:
            item_id = _new_id("msg")
            events += self._open(key, "message", item_id, _message_item(item_id, [], "in_progress"))
        state = self._items[key]
        if state.part_open != part:
            events += self._close_part(state)
            empty = (
                _output_text("") if part == "output_text" else {"type": "refusal", "refusal": ""}
            )
            events.append(self._part_event(state, "response.content_part.added", part=empty))
            state.part_open = part
        if delta:
            state.text.append(delta)
            if part == "output_text":
                events.append(
                    self._part_event(state, "response.output_text.delta", delta=delta, logprobs=[])
                )
            else:
                events.append(self._part_event(state, "response.refusal.delta", delta=delta))
        return events

    def _part_event(self, state: _Open, kind: str, **data: Any) -> dict[str, Any]:
        """Event `kind` of the content part message `state` has open (or opens next)."""
        return self._event(
            kind,
            item_id=state.item_id,
            output_index=state.index,
            content_index=len(state.parts),
            **data,
        )

    def _close_part(self, state: _Open) -> list[dict[str, Any]]:
        if state.part_open is None:
            return []
        full = "".join(state.text)
        index = len(state.parts)
        common = {"item_id": state.item_id, "output_index": state.index, "content_index": index}
        if state.part_open == "output_text":
            part = _output_text(full, state.annotations)
            events = [self._event("response.output_text.done", **common, text=full, logprobs=[])]
        else:
            part = {"type": "refusal", "refusal": full}
            events = [self._event("response.refusal.done", **common, refusal=full)]
        events.append(self._event("response.content_part.done", **common, part=part))
        state.parts.append(part)
        state.part_open = None
        state.text = []
        state.annotations = []
        return events

    def annotation(self, key: Any, annotation: dict[str, Any]) -> list[dict[str, Any]]:
        """`response.output_text.annotation.added` for the output text of message `key`
        (the message and its text part opened when need be)."""
        events = self.text(key, "", "output_text")
        state = self._items[key]
        events.append(
            self._part_event(
                state,
                "response.output_text.annotation.added",
                annotation_index=len(state.annotations),
                annotation=annotation,
            )
        )
        state.annotations.append(annotation)
        return events

    # ---- function calls

    def function_call(self, key: Any, call_id: str, name: str) -> list[dict[str, Any]]:
        """Open a `function_call` item for the converter's `key` (the upstream's `call_id` and
        function `name`); its opening events."""
        item_id = _new_id("fc")
        events = self._open(
            key,
            "function_call",
            item_id,
            _function_call_item(item_id, call_id, name, "", "in_progress"),
        )
        state = self._items[key]
        state.call_id, state.name = call_id, name
        return events

    def arguments(self, key: Any, delta: str) -> list[dict[str, Any]]:
        """A piece of the arguments (JSON text) of the function call `key`:
        `response.function_call_arguments.delta`, none for an unknown key or empty piece."""
        state = self._items.get(key)
        if state is None or not delta:
            return []
        state.text.append(delta)
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=state.item_id,
                output_index=state.index,
                delta=delta,
            )
        ]

    # ---- reasoning

    def reasoning(
        self,
        key: Any,
        *,
        thinking: bool,
        hold: bool = False,
        signature: str | None = None,
    ) -> list[dict[str, Any]]:
        """Open a `reasoning` item for the converter's `key`, with an empty summary part; its
        opening events. `thinking`: made from an Anthropic thinking block (its id says so,
        `rs_syt`: sent back by id alone, it must be found to give its signature back),
        else from a server's reasoning text (`rs_sy`, which needs nothing found). With
        `hold`, and no `signature` yet, its events are held until its signature is whole
        (at its close), so that `response.output_item.added` carries it."""
        item_id = _reasoning_id(thinking=thinking)
        events = self._open(
            key,
            "reasoning",
            item_id,
            _reasoning_item(item_id, None, signature, "in_progress"),
            hold=hold and not signature,
        )
        state = self._items[key]
        if signature:
            state.signature.append(signature)
        return events + self._item_event(
            state,
            "response.reasoning_summary_part.added",
            item_id=item_id,
            output_index=state.index,
            summary_index=0,
            part={"type": "summary_text", "text": ""},
        )

    def reasoning_text(self, key: Any, delta: str) -> list[dict[str, Any]]:
        """A piece of the reasoning `key`'s summary text:
        `response.reasoning_summary_text.delta`, none for an unknown key or empty piece."""
        state = self._items.get(key)
        if state is None or not delta:
            return []
        state.text.append(delta)
        return self._item_event(
            state,
            "response.reasoning_summary_text.delta",
            item_id=state.item_id,
            output_index=state.index,
            summary_index=0,
            delta=delta,
        )

    def signature(self, key: Any, signature: str) -> None:
        """Add to the reasoning item `key`'s `encrypted_content` (an Anthropic thinking
        signature, kept so the reasoning can be sent back); no event."""
        state = self._items.get(key)
        if state is not None:
            state.signature.append(signature)

    def redacted_reasoning(self, key: Any, data: str) -> list[dict[str, Any]]:
        """A reasoning item with nothing readable (Anthropic's redacted thinking), its data
        as `encrypted_content` from `response.output_item.added` on."""
        item_id = _reasoning_id()
        events = self._open(
            key, "reasoning", item_id, _reasoning_item(item_id, None, data or None, "in_progress")
        )
        self._items[key].signature = [data]
        self._items[key].kind = "redacted_reasoning"
        return events + self.close(key)

    # ---- closing

    def is_unfinished_call(self, key: Any) -> bool:
        """Whether `key` is an open function call item whose arguments so far are no
        whole JSON (a limit may have cut them)."""
        state = self._items.get(key)
        return state is not None and state.kind == "function_call" and not whole_json(state.text)

    def close(self, key: Any, *, cut_off: bool = False) -> list[dict[str, Any]]:
        """The events that finish output item `key` (nothing if it is not open); with
        `cut_off`, a message or function call item is `incomplete` (the response ends
        incomplete while it is the last open: it is the one cut off)."""
        state = self._items.pop(key, None)
        if state is None:
            return []
        events = self._release(state)  # a held item is announced with its whole signature
        if state.kind == "message":
            events += self._close_part(state)
            item = _message_item(
                state.item_id, state.parts, "incomplete" if cut_off else "completed"
            )
        elif state.kind == "function_call":
            arguments = "".join(state.text)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=state.item_id,
                    output_index=state.index,
                    arguments=arguments,
                )
            )
            item = _function_call_item(
                state.item_id,
                state.call_id,
                state.name,
                arguments,
                "incomplete" if cut_off else "completed",
            )
        elif state.kind == "reasoning":
            text = "".join(state.text)
            common = {"item_id": state.item_id, "output_index": state.index, "summary_index": 0}
            events.append(self._event("response.reasoning_summary_text.done", **common, text=text))
            events.append(
                self._event(
                    "response.reasoning_summary_part.done",
                    **common,
                    part={"type": "summary_text", "text": text},
                )
            )
            item = _reasoning_item(state.item_id, text, "".join(state.signature) or None)
        else:  # redacted reasoning
            item = _reasoning_item(state.item_id, None, "".join(state.signature) or None)
        done = self._event("response.output_item.done", output_index=state.index, item=item)
        events.append(done)
        self._done[state.index] = item
        return events

    def finish(self, usage: TokenUsage, reason: str | None) -> list[dict[str, Any]]:
        """Close every open item, then `response.completed` (or `response.incomplete`
        with `reason`)."""
        if self._finished:
            return []
        self._finished = True
        events = self.start()
        keys = sorted(self._items, key=lambda k: self._items[k].index)
        for position, key in enumerate(keys, start=1):
            # Only the last open item is the one cut off: the others were whole when it
            # began (`_cut_off`).
            events += self.close(key, cut_off=reason is not None and position == len(keys))
        response = _finished(self.ctx, self.output, usage, reason, self.service_tier)
        kind = "response.incomplete" if reason is not None else "response.completed"
        events.append(self._event(kind, response=response))
        return events


class ChatChunksToResponseEvents:
    """Chat Completions chunks -> the Responses event sequence (first choice only).

    Reasoning text some servers stream (`reasoning_content`, `reasoning`) becomes a
    reasoning item; content and refusal deltas one message; each tool call (by its index)
    a function_call item with its argument deltas. The usage chunk and the finish reason
    complete the response when the stream ends (`finish`).

    Output items follow one another, as in OpenAI's own streams: each is added, gets its
    deltas and is done before the next is added. A tool call that starts while the open
    one's arguments are not yet a whole JSON value (parallel calls interleaved, as Chat
    Completions allows) is held, with its argument pieces, until they are or the stream
    ends, then streamed in the order the calls started; so is text that comes meanwhile
    (some servers send a whitespace `content` beside argument pieces)."""

    def __init__(self, ctx: ResponseContext, usage: Callable[[], TokenUsage]) -> None:
        self.writer = ResponseEventWriter(ctx)
        self._signature = ctx.reasoning_signature
        self._reasoning_field: str | None = None  # the field the reasoning came in
        self._usage = usage
        self.finish_reason: str | None = None
        self._call: tuple[str, int] | None = None  # the function call streaming live
        self._arguments: list[str] = []  # its argument pieces so far
        self._calls_seen: set[tuple[str, int]] = set()
        # Calls not opened yet (see `PendingCall`), in the order they started: key -> the
        # call. Also those that started while the live call's arguments were not whole.
        self._held: dict[tuple[str, int], PendingCall] = {}
        self._indexes = ToolCallIndexes()
        # Reasoning and message text that came while the live call was unfinished:
        # (`reasoning`, `output_text` or `refusal`, the text), and annotations of the
        # message's text (`annotation`, the annotation).
        self._text: list[tuple[str, Any]] = []

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The Responses events (dicts with `type` and `sequence_number`) one OpenAI
        `chat.completion.chunk` dict produces; the first call opens the response."""
        writer = self.writer
        events = writer.start()
        writer.service_tier = served_tier(chunk) or writer.service_tier
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            # A chunk's argument pieces before its text: text in the same chunk follows.
            for call in self._indexes.indexed(tool_calls_of(delta)):
                events += self._tool_delta(call)
            reasoning = reasoning_of(delta)
            if reasoning is not None:
                self._reasoning_field = self._reasoning_field or reasoning[0]
                self._text.append(("reasoning", reasoning[1]))
            for part in ("content", "refusal"):
                text = delta.get(part)
                if isinstance(text, str) and text:
                    self._text.append(("output_text" if part == "content" else "refusal", text))
            # Annotations follow the text they point into (OpenAI streams them last).
            for annotation in response_annotations(delta.get("annotations")):
                self._text.append(("annotation", annotation))
            events += self._write_text(force=False)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                events += self._release_held(until_incomplete=False)
                events += self._write_text(force=True)
        return events

    def _write_text(self, *, force: bool) -> list[dict[str, Any]]:
        """The reasoning and message text gathered so far, after the calls before it are
        done; held (unless `force`) while the live call's arguments are not whole JSON or
        a call's have not begun, since an item must be done before another is added and
        cannot reopen."""
        if not self._text or not force and self._calls_unfinished():
            return []
        writer = self.writer
        events = self._end_calls()
        for part, text in self._text:
            if part == "reasoning":
                if not writer.is_open("reasoning"):
                    events += writer.close("message") + writer.reasoning(
                        "reasoning",
                        thinking=False,
                        signature=signed_for(self._signature, self._reasoning_field or "")
                        if self._signature
                        else None,
                    )
                events += writer.reasoning_text("reasoning", text)
            elif part == "annotation":
                events += writer.close("reasoning") + writer.annotation("message", text)
            else:
                events += writer.close("reasoning") + writer.text("message", text, part)
        self._text.clear()
        return events

    def _calls_unfinished(self) -> bool:
        """Whether the live call's arguments are not whole yet, or a call's arguments have
        not begun: text then waits, since an item is done before the next is added."""
        if self._call is not None and not whole_json(self._arguments):
            return True
        return any(not call.begun for call in self._held.values())

    def release(self) -> list[dict[str, Any]]:
        """The events held back (calls not added yet, text waiting for a call's
        arguments), released as they are, the response left open: for a stream the
        upstream ended early, so that what it sent reaches the client before the error."""
        if not self.writer.open:
            return []
        return self._release_held(until_incomplete=False) + self._write_text(force=True)

    def _tool_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one `tool_calls` delta: a call's item is added once its arguments
        begin (its name may come in pieces before them, see `PendingCall`), or later if
        the live call's arguments are not whole yet; it then streams live."""
        key = ("call", call.get("index", 0))
        function = call.get("function") or {}
        if key not in self._calls_seen:
            self._calls_seen.add(key)
            self._held[key] = PendingCall(call.get("id") or _new_id("call"))
        held = self._held.get(key)
        if held is not None:
            held.add(function)
            return self._release_held(until_incomplete=True)
        events: list[dict[str, Any]] = []
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if key == self._call:
                self._arguments.append(arguments)
            # A call already done gets nothing more (its item is complete): only pieces
            # after a whole JSON value can come then, which would not parse anyway.
            events += self.writer.arguments(key, arguments)
        if self._held and whole_json(self._arguments):
            events += self._release_held(until_incomplete=True)
        return events

    def _open_call(self, key: tuple[str, int], call_id: str, name: str) -> list[dict[str, Any]]:
        writer = self.writer
        events = writer.close("reasoning") + writer.close("message")
        if self._call is not None:
            events += writer.close(self._call)
        self._call, self._arguments = key, []
        return events + writer.function_call(key, call_id, name)

    def _release_held(self, *, until_incomplete: bool) -> list[dict[str, Any]]:
        """Streams the held calls in the order they started, each with the arguments held
        for it. With `until_incomplete`, only while the live call's arguments are whole
        (or no call is live) and the next call's arguments have begun: one whose
        arguments are not whole yet streams live from then on."""
        events: list[dict[str, Any]] = []
        while self._held:
            key = next(iter(self._held))
            call = self._held[key]
            if until_incomplete and (
                not call.begun or self._call is not None and not whole_json(self._arguments)
            ):
                break
            del self._held[key]
            events += self._open_call(key, call.call_id, call.name)
            arguments = "".join(call.pieces)
            if arguments:
                self._arguments.append(arguments)
                events += self.writer.arguments(key, arguments)
        return events

    def _end_calls(self) -> list[dict[str, Any]]:
        """Every call held or live, streamed and done (text follows them)."""
        events = self._release_held(until_incomplete=False)
        if self._call is not None:
            events += self.writer.close(self._call)
            self._call = None
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events that close the stream: held calls streamed, open items done, then
        `response.completed` (or `response.incomplete` for a length or content-filter
        finish) with the usage."""
        reason = _INCOMPLETE_BY_FINISH.get(self.finish_reason or "")
        events = self._release_held(until_incomplete=False) + self._write_text(force=True)
        return events + self.writer.finish(self._usage(), reason)


class MessageEventsToResponseEvents:
    """Anthropic stream events -> the Responses event sequence.

    Text blocks become one message (a new one after a tool call), thinking blocks
    reasoning items (thinking as summary text, the signature as `encrypted_content`:
    the item's events are held until the block ends, when its signature is whole, so
    that `response.output_item.added` carries it as OpenAI's does; see
    `ResponseEventWriter`), redacted thinking a reasoning item with only
    `encrypted_content`, tool_use blocks function_call items (`input_json_delta` as
    argument deltas). `message_stop` ends the stream (`response.completed`, or
    `response.incomplete` after a `max_tokens` or `refusal` stop). `clock` times the
    hold of a thinking block's events (`REASONING_HOLD_S`)."""

    def __init__(
        self,
        ctx: ResponseContext,
        usage: Callable[[], TokenUsage],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = ResponseEventWriter(ctx, clock)
        self._usage = usage
        self.stop_reason: str | None = None
        self._message = 0
        self._blocks: dict[int, Any] = {}  # Anthropic block index -> writer key
        # tool_use blocks no argument piece reached yet: a call without input streams as
        # `input: {}` and an empty `partial_json` (or none); its arguments are "{}".
        self._without_arguments: set[int] = set()
        # The tool_use block that ended last with arguments that are no whole JSON, whose
        # item is closed when the next block starts or the stream finishes: a
        # `max_tokens` stop comes after the block's `content_block_stop`, and the call it
        # cut off is then `incomplete`. A call whose arguments are whole is closed at
        # once (a stream failing after it still has it whole).
        self._ended_call: Any = None

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The Responses events (dicts with `type` and `sequence_number`) one Anthropic stream
        event produces; `message_stop` closes the stream."""
        writer = self.writer
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                writer.service_tier = served_tier(message)
            return writer.start()
        events = writer.start()
        key: tuple[str, int] | None
        if kind == "content_block_start":
            if self._ended_call is not None:
                events += writer.close(self._ended_call)  # whole: another block follows
                self._ended_call = None
            index = event.get("index", 0)
            block = event.get("content_block") or {}
            block_type = block.get("type")
            if block_type == "text":
                key = ("message", self._message)
                self._blocks[index] = key
                events += writer.text(key, block.get("text") or "")
            else:
                events += writer.close(("message", self._message))
                self._message += 1
                key = ("block", index)
                self._blocks[index] = key
                if block_type == "thinking":
                    # Held until its signature is whole (it comes last, as a
                    # `signature_delta`), unless it is whole at the start.
                    signature = block.get("signature")
                    events += writer.reasoning(
                        key,
                        thinking=True,
                        hold=True,
                        signature=signature if isinstance(signature, str) else None,
                    )
                    events += writer.reasoning_text(key, block.get("thinking") or "")
                elif block_type == "redacted_thinking":
                    events += writer.redacted_reasoning(key, block.get("data") or "")
                elif block_type == "tool_use":
                    events += writer.function_call(
                        key, block.get("id") or _new_id("call"), block.get("name") or ""
                    )
                    if block.get("input"):
                        events += writer.arguments(key, _dumps(block["input"]))
                    else:
                        self._without_arguments.add(index)
        elif kind == "content_block_delta":
            key = self._blocks.get(event.get("index", 0))
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if key is None:
                return events
            if delta_type == "text_delta":
                events += writer.text(key, delta.get("text") or "")
            elif delta_type == "thinking_delta":
                events += writer.reasoning_text(key, delta.get("thinking") or "")
            elif delta_type == "signature_delta":
                writer.signature(key, delta.get("signature") or "")
            elif delta_type == "input_json_delta" and delta.get("partial_json"):
                self._without_arguments.discard(event.get("index", 0))
                events += writer.arguments(key, delta["partial_json"])
        elif kind == "content_block_stop":
            index = event.get("index", 0)
            key = self._blocks.get(index)
            if index in self._without_arguments:
                self._without_arguments.discard(index)
                if key is not None:
                    events += writer.arguments(key, "{}")
            if key is not None and key[0] == "block":
                if writer.is_unfinished_call(key):
                    self._ended_call = key
                else:
                    events += writer.close(key)
        elif kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop is not None:
                self.stop_reason = stop
        elif kind == "message_stop":
            return events + self.finish()
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events that close the stream: open items done, then `response.completed` (or
        `response.incomplete` for a `max_tokens` or refusal stop) with the usage."""
        reason = _INCOMPLETE_BY_STOP.get(self.stop_reason or "")
        return self.writer.finish(self._usage(), reason)


# =========================================================================== accumulating


class ResponseAccumulator:
    """Assembles a Responses event stream into the `response` it streams: the response of
    the last lifecycle event (`response.completed` carries the whole of it), with the
    output items `response.output_item.done` gave when that response has none."""

    LIFECYCLE = LIFECYCLE_EVENTS
    DELTAS = frozenset(
        {
            "response.output_text.delta",
            "response.refusal.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_text.delta",
        }
    )

    def __init__(self) -> None:
        self.deltas = 0
        self.chars = 0  # the characters of generated text the deltas carried
        self.latest: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}

    def add(self, data: dict[str, Any]) -> None:
        """Take the next Responses stream event's `data`: deltas are counted, lifecycle events
        give the latest response, `response.output_item.done` an output item."""
        kind = data.get("type")
        if kind in self.DELTAS:
            self.deltas += 1
            self.chars += delta_chars(data.get("delta"))
        elif kind in self.LIFECYCLE and isinstance(data.get("response"), dict):
            self.latest = data["response"]
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            self._items[data.get("output_index", len(self._items))] = data["item"]

    def response(self) -> dict[str, Any]:
        """The response the events assemble to: the latest lifecycle event's, with the items
        done as its output when it has none."""
        response = dict(self.latest or {"object": "response", "output": []})
        if not response.get("output") and self._items:
            response["output"] = [self._items[index] for index in sorted(self._items)]
        return response


def is_preamble(data: dict[str, Any]) -> bool:
    """Whether a Responses stream event only opens the stream (no content yet)."""
    kind = data.get("type")
    if kind in ("response.created", "response.in_progress", "response.queued"):
        return True
    if kind == "response.output_item.added":
        item = data.get("item") or {}
        return item.get("type") in ("message", "reasoning")
    return kind in ("response.content_part.added", "response.reasoning_summary_part.added")
