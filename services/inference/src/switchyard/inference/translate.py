"""Translation between OpenAI's Chat Completions and Anthropic's Messages: requests,
replies and streams, used only when a client's API and the deployment's protocol differ
(a request is translated at most once each way; docs/protocols.md has the mapping table).

Pure functions and small stateful stream converters over plain dicts (what `orjson`
gives), never SDK models: they run on every request that crosses APIs.

The rule: what the target API can express is mapped; what it cannot is refused with
`TranslationError` naming the parameter (the client gets 400), never dropped silently.
What the client's own API refuses in a field the translation renames, reshapes or drops
(a `max_tokens` below 1, a tool without a name, a user message without content) is
refused here too, in that API's words and naming the client's field: left to the
deployment, it would be refused under the other API's name for it, or called missing.
Paths follow the client's API: `messages.[0].content` in Chat Completions' `param` (its
messages write `messages[0].content`), `input[0].content` in the Responses API's, and
`messages.0.content` opening an Anthropic message (Anthropic's errors have no `param`).
The few things that are not sent are listed in docs/protocols.md with the reason they
change nothing the client can observe (e.g. `cache_control` markers towards OpenAI, which
caches prompt prefixes by itself; thinking blocks of earlier turns, which Anthropic itself
ignores).

Also here: `CompletionAccumulator` and `MessageAccumulator`, which assemble a stream in
either API into the complete reply it streams (the `response` of `chat.completed`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import jiter
import orjson

from switchyard.common import exactjson
from switchyard.common.anthropic_request import (
    INTERLEAVED_THINKING_BETA,
    AnthropicRequestError,
    check_messages_request,
)
from switchyard.common.errors import json_type, json_value
from switchyard.common.openai_request import tool_message_fault
from switchyard.common.output_schema import (
    JSON_MODE_CHAT_MESSAGE,
    close_objects,
    mentions_json,
    open_object,
    strict_violation,
)
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS, THINKING_BUDGET_BY_EFFORT
from switchyard.inference.usage import delta_chars

_FINISH_BY_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON_BY_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic thinking budgets and OpenAI reasoning efforts, each way (budget is the
# lower bound of the effort's band).
_EFFORT_BUDGETS = (("low", 1024), ("medium", 4096), ("high", 16384))
_EFFORT_BY_OUTPUT_EFFORT = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}


class TranslationError(ValueError):
    """A request the translation refuses: the client gets 400 with `message`, `param` (the
    path of the client's own field, in its API's notation) and `code`.

    `unsupported_parameter` (the default) is a request valid in the client's API that the
    deployment's cannot express (another deployment of the model may take it); any other
    code (`missing_required_parameter`, `invalid_type`, `integer_below_min_value`,
    `invalid_value`) is a request the client's API itself refuses, so the translation
    answers it as that API would instead of letting the other API name its own fields."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = "unsupported_parameter",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        # Anthropic's machine-readable part of the refusal, for an Anthropic client.
        self.details = details


# ---- refusals in OpenAI's words (`path` as its messages write it: `input[0].content`)


def missing_parameter(path: str) -> TranslationError:
    """OpenAI's refusal of a required field the client left out."""
    return TranslationError(
        f"Missing required parameter: '{path}'.", path, "missing_required_parameter"
    )


def invalid_type(path: str, expected: str, value: Any) -> TranslationError:
    """OpenAI's refusal of `value` at `path` where `expected` ("an array") belongs."""
    return TranslationError(
        f"Invalid type for '{path}': expected {expected}, but got {json_type(value)} instead.",
        path,
        "invalid_type",
    )


def below_minimum(path: str, minimum: int, value: Any) -> TranslationError:
    """OpenAI's refusal of an integer below its minimum."""
    return TranslationError(
        f"Invalid '{path}': integer below minimum value. Expected a value >= {minimum}, but "
        f"got {value} instead.",
        path,
        "integer_below_min_value",
    )


def empty_string(path: str) -> TranslationError:
    """OpenAI's refusal of an empty string where one character at least is needed."""
    return TranslationError(
        f"Invalid '{path}': empty string. Expected a string with minimum length 1, but got "
        "an empty string instead.",
        path,
        "empty_string",
    )


def invalid_value(path: str, reason: str) -> TranslationError:
    """OpenAI's refusal of a value its API does not take (`reason` says why)."""
    return TranslationError(f"Invalid value for '{path}': {reason}", path, "invalid_value")


def not_one_of(path: str, value: Any, supported: tuple[str, ...]) -> TranslationError:
    """OpenAI's refusal of a value outside the `supported` ones."""
    words = [f"'{word}'" for word in supported]
    listed = f"{', '.join(words[:-1])} and {words[-1]}" if len(words) > 1 else words[0]
    return invalid_value(
        path, f"{json_value(value)} is not supported; supported values are {listed}."
    )


# The `tool_choice` strings of OpenAI's APIs (Chat Completions and Responses).
TOOL_CHOICE_MODES = ("none", "auto", "required")


def unusable_tool_choice(choice: Any) -> TranslationError:
    """The refusal of an OpenAI `tool_choice` a translation cannot send: a string other
    than TOOL_CHOICE_MODES is OpenAI's `invalid_value`, a value neither a string nor an
    object its `invalid_type`, and an object of a kind the translation does not carry
    (`allowed_tools`, `custom`, a built-in tool) `unsupported_parameter`."""
    if isinstance(choice, str):
        return not_one_of("tool_choice", choice, TOOL_CHOICE_MODES)
    if not isinstance(choice, dict):
        return invalid_type("tool_choice", "a string or an object", choice)
    return TranslationError(
        "'tool_choice' cannot be used with this model as sent: only 'auto', 'none', "
        "'required' or a function can.",
        "tool_choice",
    )


# OpenAI's rule for a structured output format's `name` (its API reference: "a-z, A-Z,
# 0-9, or contain underscores and dashes, with a maximum length of 64").
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


# The fields of OpenAI's `json_schema` output format (`text.format` has its `type` beside
# them, `response_format` outside its `json_schema`).
_FORMAT_FIELDS = frozenset({"name", "description", "schema", "strict"})


def check_json_schema_format(fmt: dict[str, Any], path: str) -> None:
    """Check a `json_schema` output format at `path` (`response_format.json_schema`,
    `text.format`): its `name`, which OpenAI's API requires (a deployment translating the
    format has no use for it, so it would otherwise take a request OpenAI refuses); its
    `description`, if any, a string; and no field OpenAI's format does not have (`name`,
    `description`, `schema`, `strict`, and `type` in `text.format`), which the
    translation would drop. TranslationError in OpenAI's words."""
    for key in fmt:
        if key not in _FORMAT_FIELDS and not (key == "type" and path == "text.format"):
            raise TranslationError(f"'{path}.{key}' cannot be sent to this model.", f"{path}.{key}")
    description = fmt.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_type(f"{path}.description", "a string", description)
    name = fmt.get("name")
    if name is None:
        raise missing_parameter(f"{path}.name")
    if not isinstance(name, str):
        raise invalid_type(f"{path}.name", "a string", name)
    if _FORMAT_NAME.fullmatch(name) is None:
        raise invalid_value(
            f"{path}.name",
            "it must be 1 to 64 characters among a-z, A-Z, 0-9, underscores and dashes.",
        )


def positive_integer(body: dict[str, Any], name: str) -> int | None:
    """The client's `name` (an OpenAI token limit) if set; TranslationError in OpenAI's
    words unless it is an integer of at least 1. Checked here rather than by the upstream,
    which would name the field it was renamed to (`max_tokens`)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_type(name, "an integer", value)
    if value < 1:
        raise below_minimum(name, 1, value)
    return value


# Stop sequences OpenAI's Chat Completions API takes (its reference: "Up to 4 sequences").
MAX_OPENAI_STOP = 4


def _anthropic_refusal(path: str, reason: str, code: str = "invalid_value") -> TranslationError:
    """Anthropic's refusal: its messages start with the path of the field at fault
    (`messages.0.content: Field required`); its errors carry no `param`."""
    return TranslationError(f"{path}: {reason}", path, code)


_CHAT_INDEX = re.compile(r"(?<=[^.])\[")


def chat_param(path: str) -> str:
    """A path as Chat Completions errors give it in `param` (`messages.[0].content.[1]`)
    from the way their messages write it (`messages[0].content[1]`)."""
    return _CHAT_INDEX.sub(".[", path)


def openai_finish_reason(stop_reason: str | None) -> str | None:
    """OpenAI's `finish_reason` for an Anthropic `stop_reason`."""
    if stop_reason is None:
        return None
    return _FINISH_BY_STOP_REASON.get(stop_reason, "stop")


def anthropic_stop_reason(finish_reason: str | None) -> str | None:
    """Anthropic's `stop_reason` for an OpenAI `finish_reason`."""
    if finish_reason is None:
        return None
    return _STOP_REASON_BY_FINISH.get(finish_reason, "end_turn")


def _json_dumps(value: Any) -> str:
    return exactjson.dumps(value).decode()


def _tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments (a JSON string in OpenAI) of a *reply* as Anthropic's `input`
    object. Arguments cut off by the token limit (`{"city": "Paris", "unit": "cel`) keep
    what they hold whole (`{"city": "Paris"}`), as the anthropic SDK reads a streamed tool
    input (jiter's partial mode), so a reply reads the same streamed or not; arguments
    that are not a JSON object otherwise become `{}` (a reply cannot be refused;
    `tool_input_of_request` refuses them in a request)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = exactjson.loads_replacing_lone_surrogates(arguments)
    except (ValueError, TypeError):
        if not isinstance(arguments, str):
            return {}
        try:
            parsed = jiter.from_json(arguments.encode(), partial_mode=True)
        except ValueError:
            return {}
    return parsed if isinstance(parsed, dict) else {}


def tool_input_of_request(arguments: Any, where: str) -> dict[str, Any]:
    """The arguments of a tool call a client sends back (a JSON string in OpenAI's APIs, at
    `where`) as Anthropic's `input` object; none or an empty string is `{}`. Raises
    TranslationError (`invalid_type` for a value that is not a string, else
    `unsupported_parameter`) for arguments that are not a JSON object: OpenAI's APIs take
    any string there (a model's truncated or malformed JSON replayed), Anthropic's `input`
    only an object, and replacing them would change the conversation unseen."""
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        raise invalid_type(where, "a string", arguments)
    try:
        parsed = exactjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise TranslationError(
            f"'{where}' is not a JSON object ({arguments[:40]!r}); this model takes a tool "
            "call's arguments only as an object.",
            where,
        )
    return parsed


def _text_of(content: Any) -> str:
    """The text of a string or a list of text parts/blocks (other parts are ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            value = part.get("refusal") if kind == "refusal" else part.get("text")
            if kind in ("text", "refusal") and isinstance(value, str):
                texts.append(value)
    return "".join(texts)


def empty_array(param: str) -> TranslationError:
    """OpenAI's refusal of an empty array where it takes one of at least one item
    (`tools`, an assistant message's `tool_calls`): 400 `empty_array` naming `param`
    (`messages.[1].tool_calls`, written `messages[1].tool_calls` in the message, as
    OpenAI writes them)."""
    return TranslationError(
        f"Invalid '{param.replace('.[', '[')}': empty array. Expected an array with minimum "
        "length 1, but got "
        "an empty array instead.",
        param,
        "empty_array",
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# The id prefixes of a reply in each API: an Anthropic message's, an OpenAI chat
# completion's.
MESSAGE_ID_PREFIX, COMPLETION_ID_PREFIX = "msg_", "chatcmpl-"


def _recast_id(upstream_id: Any, prefix: str, other_prefix: str) -> str:
    """A reply id in the client's API form, `prefix` + the upstream's id without the other
    API's `other_prefix` (`chatcmpl-abc` as `msg_abc`: the upstream's id stays readable in
    it); a new one when the upstream gave none."""
    if not isinstance(upstream_id, str) or not upstream_id:
        return _new_id(prefix)
    if upstream_id.startswith(prefix):
        return upstream_id
    return prefix + upstream_id.removeprefix(other_prefix)


# Fields the other API lacks whose empty value (`{}` or `[]`) asks for nothing: no
# biases, no MCP servers, no legacy functions. Not so everywhere: an empty
# `web_search_options` turns OpenAI's web search on.
_EMPTY_ASKS_NOTHING = frozenset({"logit_bias", "mcp_servers", "functions"})
# Values of fields the other API lacks that ask for nothing: each API's own default.
# (`null` asks for nothing in any field: `refuse_unknown`.)
_DEFAULTS_OF_FIELDS_WITHOUT_EQUIVALENT: dict[str, tuple[Any, ...]] = {
    # OpenAI Chat Completions / Responses.
    "modalities": (["text"],),
    "verbosity": ("medium",),
    "top_logprobs": (0,),
    # Anthropic Messages: `auto` is its default tier, OpenAI's too.
    "service_tier": ("auto",),
}


def _unset(name: str, value: Any) -> bool:
    """Whether `value` of the field `name` asks for nothing: `null` (the official SDKs send
    a parameter given as `None` as `null`, which both APIs read as "not set"), an empty
    object or array where that means none (`_EMPTY_ASKS_NOTHING`), or the field's
    documented default."""
    if value is None:
        return True
    if value in ({}, []):
        return name in _EMPTY_ASKS_NOTHING
    return value in _DEFAULTS_OF_FIELDS_WITHOUT_EQUIVALENT.get(name, ())


def refuse_unknown(body: dict[str, Any], known: frozenset[str], target: str) -> None:
    """Refuse, naming it, the first field of `body` outside `known` (what the translation
    to `target`, the deployment's API, carries) that asks for something; a field that
    asks for nothing (`_unset`) is accepted and not sent. Raises TranslationError."""
    for name, value in body.items():
        if name not in known and not _unset(name, value):
            raise TranslationError(
                f"'{name}' cannot be sent to this model: its deployment speaks {target}, "
                "which has no equivalent.",
                name,
            )


# =========================================================================== usage


def chat_usage_from_messages(usage: Any) -> dict[str, Any]:
    """OpenAI usage from Anthropic usage: `prompt_tokens` counts every input token
    (Anthropic reports uncached, cache-read and cache-write input separately). Both
    details objects are always there, as OpenAI always sends them (clients read
    `completion_tokens_details.reasoning_tokens` without checking): no audio and no
    predicted output here, so those counts are 0."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + cache_write
    completion = usage.get("output_tokens") or 0
    details = usage.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cache_read,
            "cache_write_tokens": cache_write,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": thinking if isinstance(thinking, int) else 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def messages_usage_from_chat(usage: Any) -> dict[str, Any]:
    """Anthropic usage from OpenAI usage: `prompt_tokens_details.cached_tokens` are cache
    reads, its `cache_write_tokens` cache writes, the rest of `prompt_tokens` uncached
    input."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    prompt = usage.get("prompt_tokens") or 0
    result: dict[str, Any] = {
        "input_tokens": max(0, prompt - cached - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    output_details = usage.get("completion_tokens_details")
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else None
    if isinstance(reasoning, int) and reasoning:
        result["output_tokens_details"] = {"thinking_tokens": reasoning}
    return result


# =========================================================================== requests
# ---------------------------------------------------------------- Anthropic -> OpenAI

_MESSAGES_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        # Prompt-cache markers: OpenAI caches prompt prefixes by itself.
        "cache_control",
    }
)


# The thinking-clearing edit of Anthropic's context editing ("Context editing", Thinking
# block clearing): `{"type": "clear_thinking_20251015", "keep": ...}`.
CLEAR_THINKING_EDIT = "clear_thinking_20251015"


def _is_thinking_kept(keep: Any) -> bool:
    """Whether `keep` is a valid `keep` of the thinking-clearing edit: `"all"`, or
    `{"type": "thinking_turns", "value": n}` with n at least 1."""
    if keep == "all":
        return True
    return (
        isinstance(keep, dict)
        and set(keep) == {"type", "value"}
        and keep["type"] == "thinking_turns"
        and isinstance(keep["value"], int)
        and not isinstance(keep["value"], bool)
        and keep["value"] >= 1
    )


def _only_clears_thinking(context_management: Any) -> bool:
    """Whether Anthropic's `context_management` holds nothing but valid thinking-clearing
    edits (`{"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}`, which Claude
    Code sends whenever thinking is on; `keep` may be left out). Earlier turns' thinking is
    never sent to an OpenAI-protocol deployment (it cannot take Anthropic's thinking
    blocks), so which of it to keep changes nothing sent: such a field is accepted and not
    sent. Anything else (another edit, such as `clear_tool_uses_20250919`, which would
    change the messages sent; an unknown type, field or `keep`) is refused by name."""
    if not isinstance(context_management, dict) or set(context_management) != {"edits"}:
        return False
    edits = context_management["edits"]
    return (
        isinstance(edits, list)
        and bool(edits)
        and all(
            isinstance(edit, dict)
            and edit.get("type") == CLEAR_THINKING_EDIT
            and set(edit) <= {"type", "keep"}
            and ("keep" not in edit or _is_thinking_kept(edit["keep"]))
            for edit in edits
        )
    )


def thread_unsupported(target: str) -> TranslationError:
    """The refusal of Anthropic's `thread` (a message thread, which only Anthropic holds)
    by a deployment speaking `target`: `unsupported_parameter` (another deployment of the
    model may take it) with the details Anthropic's SDKs recover from
    (`thread_unsupported_request`: they send the whole conversation without `thread`)."""
    return TranslationError(
        f"'thread' cannot be sent to this model: its deployment speaks {target}, which "
        "holds no message threads. Send the whole conversation without `thread`.",
        "thread",
        details={"error_code": "thread_unsupported_request"},
    )


def _check_thread(thread: Any) -> None:
    """Refuse, as Anthropic does, a `thread` that is no thread parameter at all (the SDK's
    `BetaMessageThreadParam`: `{"type": "create"}` or `{"type": "continue",
    "previous_message_id": "..."}`): a malformed one is the client's mistake to hear of,
    not a thread this deployment cannot hold."""
    if not isinstance(thread, dict):
        raise _anthropic_refusal("thread", "Input should be a valid dictionary")
    kind = thread.get("type")
    if kind not in ("create", "continue"):
        raise _anthropic_refusal("thread.type", "Input should be 'create' or 'continue'")
    fields = {"type"} if kind == "create" else {"type", "previous_message_id"}
    for name in thread:
        if name not in fields:
            raise _anthropic_refusal(f"thread.{kind}.{name}", "Extra inputs are not permitted")
    if kind == "continue" and not isinstance(thread.get("previous_message_id"), str):
        reason = (
            "Field required"
            if "previous_message_id" not in thread
            else "Input should be a valid string"
        )
        raise _anthropic_refusal("thread.continue.previous_message_id", reason)


def messages_request_to_chat(
    body: dict[str, Any],
    betas: frozenset[str] = frozenset({INTERLEAVED_THINKING_BETA}),
    *,
    reasoning_origin: str | None = None,
) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI Chat Completions request. `betas` are
    the request's `anthropic-beta` values (the default, interleaved thinking, refuses no
    thinking budget for its size). `reasoning_origin`: the origin of the deployment it
    goes to (`reasoning_origin`): an assistant message's thinking blocks made from that
    server's reasoning (`reasoning_signature`) go back to it as the message's
    `reasoning_content`; any other thinking is left out.

    Raises TranslationError for what Chat Completions cannot express (`top_k`,
    `context_management` other than clearing thinking, server tools, URL documents...:
    the table is in
    docs/protocols.md), and for what Anthropic itself refuses in a field the translation
    renames or reshapes (a `max_tokens` below 1, a tool without a name, thinking with a
    forced tool or a `temperature` other than 1...): the message starts with the path of
    the client's field, as Anthropic's do."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    if _only_clears_thinking(body.get("context_management")):
        body = {name: value for name, value in body.items() if name != "context_management"}
    if body.get("thread") is not None:
        _check_thread(body["thread"])
        raise thread_unsupported("OpenAI's Chat Completions")
    refuse_unknown(body, _MESSAGES_FIELDS, "OpenAI's Chat Completions")
    try:
        # Every type and rule Anthropic itself judges, before any is renamed or reshaped;
        # a null too, where Anthropic refuses it (`temperature: null`: "Input should be a
        # valid number"), so a body is judged alike on every model.
        check_messages_request(body)
    except AnthropicRequestError as exc:
        raise TranslationError(str(exc), exc.path or None, "invalid_value") from None
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise _anthropic_refusal("messages", "Input should be a valid list")
    for index, message in enumerate(raw_messages):
        messages.extend(_anthropic_message_to_openai(message, index, reasoning_origin))
    if (
        raw_messages
        and raw_messages[-1].get("role") == "assistant"
        and raw_messages[-1].get("content") in ("", [])
    ):
        # An empty final assistant message, which Anthropic takes (and only there):
        # nothing to continue, so the model answers as if it were not sent.
        messages.pop()
    elif raw_messages and raw_messages[-1].get("role") == "assistant":
        # A prefill: Anthropic continues the assistant's text where it stops; Chat
        # Completions answers a trailing assistant message with a new message of its own,
        # so the reply would not be the continuation the client asked for.
        raise _anthropic_refusal(
            f"messages.{len(raw_messages) - 1}",
            "a final assistant message (a prefill) cannot be sent to this model: its "
            "deployment speaks OpenAI's Chat Completions, which answers with a new message "
            "instead of continuing it",
            "unsupported_parameter",
        )

    result: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise _anthropic_refusal("max_tokens", "Input should be a valid integer")
        if max_tokens == 0:
            raise _anthropic_refusal(
                "max_tokens",
                "`max_tokens: 0` (pre-warming Anthropic's prompt cache) cannot be sent to "
                "this model: its deployment speaks OpenAI's Chat Completions, which has no "
                "prompt cache to warm and always generates",
                "unsupported_parameter",
            )
        if max_tokens < 0:
            raise _anthropic_refusal("max_tokens", "Input should be greater than or equal to 0")
        result["max_completion_tokens"] = max_tokens
    stop_sequences = body.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list):
            raise _anthropic_refusal("stop_sequences", "Input should be a valid list")
        for index, sequence in enumerate(stop_sequences):
            if not isinstance(sequence, str):
                raise _anthropic_refusal(
                    f"stop_sequences.{index}", "Input should be a valid string"
                )
            if not sequence.strip():  # Anthropic's own refusal, which OpenAI would not make
                raise _anthropic_refusal(
                    f"stop_sequences.{index}", "each stop sequence must contain non-whitespace"
                )
        if len(stop_sequences) > MAX_OPENAI_STOP:
            raise _anthropic_refusal(
                "stop_sequences",
                f"{len(stop_sequences)} stop sequences cannot be sent to this model: its "
                f"deployment speaks OpenAI's Chat Completions, which takes at most "
                f"{MAX_OPENAI_STOP}.",
                "unsupported_parameter",
            )
        if stop_sequences:
            result["stop"] = list(stop_sequences)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            _anthropic_unit_interval(name, value)
            result[name] = value
    if body.get("stream"):
        result["stream"] = True
        # The Anthropic stream ends with usage; ask for it.
        result["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _anthropic_refusal("metadata", "Input should be a valid dictionary")
        for key in metadata:
            if key != "user_id":
                raise _anthropic_refusal(
                    f"metadata.{key}",
                    "cannot be sent to this model: its deployment speaks OpenAI's Chat "
                    "Completions, which takes only 'user_id' (as 'user').",
                    "unsupported_parameter",
                )
        if metadata.get("user_id"):
            result["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _anthropic_refusal("tools", "Input should be a valid list")
        if tools:
            result["tools"] = [_anthropic_tool_to_openai(tool, i) for i, tool in enumerate(tools)]
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, dict):
            raise _anthropic_refusal("tool_choice", "Input should be a valid dictionary")
        choice = _anthropic_tool_choice_to_openai(tool_choice)
        offered = {tool["function"]["name"] for tool in result.get("tools", ())}
        if isinstance(choice, dict) and offered and choice["function"]["name"] not in offered:
            chosen = choice["function"]["name"]
            raise _anthropic_refusal("tool_choice.name", f"no tool named '{chosen}' is in 'tools'")
        # Without tools (`any` and `tool` were refused then, as Anthropic does), `auto` and
        # `none` ask nothing the model could do otherwise, and Chat Completions refuses
        # `tool_choice` and `parallel_tool_calls` without tools.
        if offered:
            result["tool_choice"] = choice
            if tool_choice.get("disable_parallel_tool_use"):
                result["parallel_tool_calls"] = False
    effort = _reasoning_effort_of_thinking(body.get("thinking"))
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        _refuse_what_thinking_refuses(body)
        budget = thinking["budget_tokens"]
        if INTERLEAVED_THINKING_BETA not in betas and budget >= body["max_tokens"]:
            # Anthropic's refusal, which it makes only without interleaved thinking.
            raise _anthropic_refusal(
                "max_tokens",
                "must be greater than thinking.budget_tokens unless interleaved thinking "
                f"is enabled (anthropic-beta: {INTERLEAVED_THINKING_BETA}).",
            )
    output_config = body.get("output_config")
    if output_config is not None:
        effort = _apply_output_config(output_config, result) or effort
    if effort is not None:
        result["reasoning_effort"] = effort
    return result


def _anthropic_unit_interval(name: str, value: Any) -> None:
    """Anthropic's checks of `temperature` and `top_p` (numbers from 0 to 1), made here:
    OpenAI's range for `temperature` is wider, so it would pass a value Anthropic refuses."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _anthropic_refusal(name, "Input should be a valid number")
    if value < 0:
        raise _anthropic_refusal(name, "Input should be greater than or equal to 0")
    if value > 1:
        raise _anthropic_refusal(name, "Input should be less than or equal to 1")


def _refuse_what_thinking_refuses(body: dict[str, Any]) -> None:
    """Anthropic's refusals of what it takes only without thinking (a request with
    `thinking` enabled), made here: OpenAI takes `reasoning_effort` with a forced tool
    or any temperature, so the client would get from it what Anthropic refuses."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _anthropic_refusal(
            "tool_choice", "Thinking may not be enabled when tool_choice forces tool use."
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _anthropic_refusal("temperature", "may only be set to 1 when thinking is enabled.")
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        raise _anthropic_refusal(
            "top_p", "must be greater than or equal to 0.95 or unset when thinking is enabled."
        )


def _reasoning_effort_of_thinking(thinking: Any) -> str | None:
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise _anthropic_refusal("thinking", "Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "adaptive":
        return "medium"
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _anthropic_refusal("thinking.budget_tokens", "Field required")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise _anthropic_refusal("thinking.budget_tokens", "Input should be a valid integer")
        if budget < _MIN_THINKING_BUDGET:
            # The Anthropic API's own floor: an OpenAI-protocol upstream has none to refuse.
            raise _anthropic_refusal(
                "thinking.budget_tokens",
                f"Input should be greater than or equal to {_MIN_THINKING_BUDGET}",
            )
        effort = "low"
        for name, lower in _EFFORT_BUDGETS:
            if budget >= lower:
                effort = name
        return effort
    if kind is None:
        raise _anthropic_refusal("thinking.type", "Field required")
    if kind == "between_tools":
        # Anthropic's own mode (the SDK's `ThinkingConfigBetweenToolsParam`), which no
        # reasoning effort of Chat Completions expresses.
        raise TranslationError(
            "thinking.type: 'between_tools' cannot be sent to this model: its deployment "
            "speaks OpenAI's Chat Completions API.",
            "thinking.type",
        )
    raise _anthropic_refusal(
        "thinking.type",
        "Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools', not "
        f"{json_value(kind)}",
    )


def _apply_output_config(config: Any, result: dict[str, Any]) -> str | None:
    if not isinstance(config, dict):
        raise _anthropic_refusal("output_config", "Input should be a valid dictionary")
    effort: str | None = None
    for key, value in config.items():
        if key == "format" and value is not None:
            if not isinstance(value, dict) or value.get("type") != "json_schema":
                raise _anthropic_refusal(
                    "output_config.format",
                    "only json_schema output formats can be sent to this model.",
                    "unsupported_parameter",
                )
            if value.get("schema") is None:
                raise _anthropic_refusal("output_config.format.schema", "Field required")
            schema = value.get("schema")
            if isinstance(schema, dict) and open_object(schema) is not None:
                # Refused as Anthropic refuses it, rather than sent to a model that would
                # follow it without Anthropic's guarantee.
                raise _anthropic_refusal(
                    "output_config.format.schema",
                    "For 'object' type, 'additionalProperties' must be explicitly set to false",
                )
            result["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "schema": schema,
                    "strict": _openai_strict(True, schema),
                },
            }
        elif key == "effort" and value is not None:
            if value not in _EFFORT_BY_OUTPUT_EFFORT:
                raise _anthropic_refusal(
                    "output_config.effort",
                    "Input should be 'low', 'medium', 'high', 'xhigh' or 'max', not "
                    f"{json_value(value)}",
                )
            effort = _EFFORT_BY_OUTPUT_EFFORT[value]
        elif value is not None:
            raise _anthropic_refusal(
                f"output_config.{key}",
                "cannot be sent to this model: its deployment speaks OpenAI's Chat "
                "Completions, which has no equivalent.",
                "unsupported_parameter",
            )
    return effort


def _system_text(system: Any, where: str) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _anthropic_refusal(
                    f"{where}.{index}", "system blocks must be text blocks for this model."
                )
            text = block.get("text")
            if not isinstance(text, str):
                raise _anthropic_refusal(f"{where}.{index}.text", "Input should be a valid string")
            texts.append(text)
        return "\n\n".join(text for text in texts if text)
    raise _anthropic_refusal(where, "Input should be a valid string or a list of text blocks")


# The media types the Anthropic API takes in a `base64` source (Messages API reference,
# "image" and "document" content blocks).
ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
ANTHROPIC_DOCUMENT_TYPES = ("application/pdf",)
# An OpenAI image part's `detail`: Chat Completions' `image_url` (API reference), and the
# Responses API's `input_image`, which also takes "original".
IMAGE_DETAILS = ("auto", "low", "high")
INPUT_IMAGE_DETAILS = ("auto", "low", "high", "original")


def _anthropic_base64(source: dict[str, Any], where: str, media_types: tuple[str, ...]) -> str:
    """A `base64` source of the block at `where` (its path and type:
    `messages.0.content.1.image`) as a data URL, checked as the Anthropic API checks it:
    `media_type` one of `media_types`, `data` a string of base64. Raises TranslationError
    in Anthropic's words otherwise: the OpenAI-protocol upstream would refuse it naming
    its own fields, or read the bytes as something else."""
    media_type = source.get("media_type")
    if media_type not in media_types:
        words = [f"'{name}'" for name in media_types]
        listed = f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]
        raise _anthropic_refusal(f"{where}.source.base64.media_type", f"Input should be {listed}")
    data = source.get("data")
    if data is None:
        raise _anthropic_refusal(f"{where}.source.base64.data", "Field required")
    if not isinstance(data, str):
        raise _anthropic_refusal(f"{where}.source.base64.data", "Input should be a valid string")
    checked = _checked_base64(data)
    if not checked:
        raise _anthropic_refusal(f"{where}.source.base64.data", "invalid base64 data")
    return f"data:{media_type};base64,{checked}"


def _anthropic_url(source: dict[str, Any], where: str) -> str:
    """The `url` of a `url` source of the block at `where` (its path and type): an http(s)
    URL. Raises TranslationError in Anthropic's words otherwise."""
    url = source.get("url")
    if not isinstance(url, str):
        raise _anthropic_refusal(f"{where}.source.url.url", "Input should be a valid string")
    if not url.lower().startswith(("https://", "http://")):
        raise _anthropic_refusal(f"{where}.source.url.url", "Input should be an http(s) URL")
    return url


def _anthropic_image_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _anthropic_refusal(f"{where}.source", "Field required")
    if source.get("type") == "base64":
        url = _anthropic_base64(source, f"{where}.image", ANTHROPIC_IMAGE_TYPES)
    elif source.get("type") == "url":
        url = _anthropic_url(source, f"{where}.image")
    else:
        raise _anthropic_refusal(
            f"{where}.source.type",
            f"image sources of type {source.get('type')!r} cannot be sent to this model.",
            "unsupported_parameter",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _text_parts(texts: list[str]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text} for text in texts]


def _document_content_texts(content: Any, where: str) -> list[str]:
    """The texts of a document's `content` source (a string, or a list of text blocks),
    at `where`. Raises TranslationError in Anthropic's words for any other shape, and for
    an image block, which a Chat Completions file part cannot carry (it was dropped)."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        if content is None:
            raise _anthropic_refusal(where, "Field required")
        raise _anthropic_refusal(where, "Input should be a valid string or a list of blocks")
    texts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            raise _anthropic_refusal(f"{where}.{index}", "Input should be a valid dictionary")
        if block.get("type") != "text":
            raise _anthropic_refusal(
                f"{where}.{index}",
                f"{block.get('type')!r} blocks in a document's content cannot be sent to this "
                "model; only text blocks can.",
                "unsupported_parameter",
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise _anthropic_refusal(f"{where}.{index}.text", "Input should be a valid string")
        texts.append(text)
    return texts


def _anthropic_document_to_openai(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The parts of a document block: a PDF as a `file` part (its `title` as filename), a
    text document as a text part, its `title` and `context` (what the document is, for
    the model) as text before it; a `content` source's text blocks apart, by a blank
    line."""
    source: Any = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    about = [
        value for value in (block.get("title"), block.get("context")) if isinstance(value, str)
    ]
    title = block.get("title")
    if title is not None and not isinstance(title, str):
        raise _anthropic_refusal(f"{where}.title", "Input should be a valid string")
    citations = block.get("citations")
    if citations is not None:
        if not isinstance(citations, dict):
            raise _anthropic_refusal(f"{where}.citations", "Input should be a valid dictionary")
        if citations.get("enabled") is True:
            # The reply's text would carry `citations` into this document; Chat
            # Completions returns none, so asking for them cannot be honoured.
            raise _anthropic_refusal(
                f"{where}.citations",
                "citations cannot be returned by this model: its deployment speaks OpenAI's "
                "Chat Completions, which cites no documents.",
                "unsupported_parameter",
            )
    if kind == "base64":
        file = {
            "type": "file",
            "file": {
                "filename": title or "document.pdf",
                "file_data": _anthropic_base64(
                    source, f"{where}.document", ANTHROPIC_DOCUMENT_TYPES
                ),
            },
        }
        context = block.get("context")
        return [*_text_parts([context] if isinstance(context, str) else []), file]
    if kind == "text":
        if source.get("media_type") != "text/plain":
            raise _anthropic_refusal(f"{where}.source.media_type", "Input should be 'text/plain'")
        data = source.get("data")
        if not isinstance(data, str):
            raise _anthropic_refusal(f"{where}.source.data", "Input should be a valid string")
        texts = [data]
    elif kind == "content":
        texts = _document_content_texts(source.get("content"), f"{where}.source.content")
    else:
        raise _anthropic_refusal(
            f"{where}.source.type",
            f"document sources of type {kind!r} cannot be sent to this model (Chat "
            "Completions takes inline files only).",
            "unsupported_parameter",
        )
    return [{"type": "text", "text": "\n\n".join(text for text in [*about, *texts] if text)}]


def _tool_result_parts(
    content: Any, where: str
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """(tool message content, image parts for the user message that follows): Chat
    Completions tool messages take text only, so images a tool returned are sent right
    after the tool messages, in a user message."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _anthropic_refusal(where, "Input should be a valid string or list")
    texts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.{index}"
        if not isinstance(block, dict):
            raise _anthropic_refusal(block_where, "Input should be a valid dictionary")
        kind = block.get("type")
        if kind == "text":
            texts.append({"type": "text", "text": _required_string(block, "text", block_where)})
        elif kind == "image":
            images.append(_anthropic_image_to_openai(block, block_where))
        elif kind == "document":
            for part in _anthropic_document_to_openai(block, block_where):
                (texts if part["type"] == "text" else images).append(part)
        else:
            raise _unsupported_block(kind, block_where, "Tool result")
    if len(texts) <= 1:
        return (texts[0]["text"] if texts else ""), images
    return texts, images


def _marked_as_error(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A tool message's content (a string or text parts) for a tool result with
    `is_error`, which Chat Completions has no field for: its text prefixed `Error: `
    (the first part's, when it has several), or `Error` when it has none."""
    if isinstance(content, str):
        return f"Error: {content}" if content else "Error"
    first = content[0]
    return [{**first, "text": f"Error: {first['text']}"}, *content[1:]]


def _unsupported_block(kind: Any, where: str, owner: str) -> TranslationError:
    if kind is None:
        return _anthropic_refusal(f"{where}.type", "Field required")
    return _anthropic_refusal(
        where,
        f"{owner} blocks of type {kind!r} cannot be sent to this model.",
        "unsupported_parameter",
    )


def _required_string(block: dict[str, Any], name: str, where: str) -> str:
    """A string field Anthropic requires of a block (a tool use's `id` and `name`, a tool
    result's `tool_use_id`): refused when missing rather than sent empty, for OpenAI to
    refuse under its own name."""
    value = block.get(name)
    if value is None:
        raise _anthropic_refusal(f"{where}.{name}", "Field required")
    if not isinstance(value, str):
        raise _anthropic_refusal(f"{where}.{name}", "Input should be a valid string")
    return value


def _anthropic_message_to_openai(
    message: Any, index: int, reasoning_origin: str | None = None
) -> list[dict[str, Any]]:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise _anthropic_refusal(where, "Input should be a valid dictionary")
    role = message.get("role")
    content = message.get("content")
    if role is None:
        raise _anthropic_refusal(f"{where}.role", "Field required")
    if role not in ("user", "assistant", "system"):
        raise _anthropic_refusal(f"{where}.role", "Input should be 'user' or 'assistant'")
    if content is None:
        raise _anthropic_refusal(f"{where}.content", "Field required")
    if role == "system":
        return [{"role": "system", "content": _system_text(content, f"{where}.content")}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _anthropic_refusal(f"{where}.content", "Input should be a valid string or list")

    if role == "assistant":
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        reasoning: dict[str, list[str]] = {}
        for position, block in enumerate(content):
            block_where = f"{where}.content.{position}"
            if not isinstance(block, dict):
                raise _anthropic_refusal(block_where, "Input should be a valid dictionary")
            kind = block.get("type")
            if kind == "text":
                texts.append(_required_string(block, "text", block_where))
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": upstream_tool_id(_required_string(block, "id", block_where)),
                        "type": "function",
                        "function": {
                            "name": _required_string(block, "name", block_where),
                            "arguments": _json_dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                # Signed reasoning only the model that wrote it can verify; Anthropic
                # itself ignores it in earlier turns. Chat Completions cannot carry it,
                # except the reasoning text of the server it goes to, given back as it
                # gave it (DeepSeek's and Kimi's thinking models need it in a tool loop).
                field = reasoning_field_for(block.get("signature"), reasoning_origin)
                text = block.get("thinking")
                if field is not None and isinstance(text, str) and text:
                    reasoning.setdefault(field, []).append(text)
                continue
            else:
                raise _unsupported_block(kind, block_where, "Assistant content")
        # Several text blocks stay apart, as text parts (joined, their words would run
        # together: "First.Second.").
        texts = [text for text in texts if text]
        result: dict[str, Any] = {
            "role": "assistant",
            "content": texts[0] if len(texts) == 1 else _text_parts(texts) or None,
        }
        if tool_calls:
            result["tool_calls"] = tool_calls
        elif result["content"] is None:
            result["content"] = ""
        for field, pieces in reasoning.items():
            result[field] = "".join(pieces)
        return [result]

    # user: tool results become tool messages (first, right after the assistant's calls)
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        block_where = f"{where}.content.{position}"
        if not isinstance(block, dict):
            raise _anthropic_refusal(block_where, "Input should be a valid dictionary")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _required_string(block, "text", block_where)})
        elif kind == "image":
            parts.append(_anthropic_image_to_openai(block, block_where))
        elif kind == "document":
            parts += _anthropic_document_to_openai(block, block_where)
        elif kind == "tool_result":
            tool_use_id = upstream_tool_id(_required_string(block, "tool_use_id", block_where))
            result_content, images = _tool_result_parts(
                block.get("content"), f"{block_where}.content"
            )
            if block.get("is_error"):
                result_content = _marked_as_error(result_content)
            tool_messages.append(
                {"role": "tool", "tool_call_id": tool_use_id, "content": result_content}
            )
            tool_images += images
        else:
            raise _unsupported_block(kind, block_where, "User content")
    messages = tool_messages
    parts = tool_images + parts
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            messages.append({"role": "user", "content": parts[0]["text"]})
        else:
            messages.append({"role": "user", "content": parts})
    elif not tool_messages:
        messages.append({"role": "user", "content": ""})
    return messages


# Fields of an Anthropic custom tool that Chat Completions carries (`cache_control` and
# `eager_input_streaming` have no effect there: OpenAI caches by itself, and streams
# tool arguments anyway), and the values of the others that ask for nothing (the
# defaults): any other value is refused by name.
_TRANSLATED_TOOL_FIELDS = frozenset(
    {"type", "name", "description", "input_schema", "strict", "cache_control"}
)
_DEFAULT_TOOL_VALUES: dict[str, tuple[Any, ...]] = {
    "eager_input_streaming": (None, False, True),
    "defer_loading": (None, False),
    "input_examples": (None, []),
    "allowed_callers": (None, ["direct"]),
}


# Anthropic-defined tools the client runs (its tool use docs: bash, the text editor,
# computer use, memory), each versioned by date (`bash_20250124`), unlike server tools
# (web search, code execution...), which Anthropic runs.
_ANTHROPIC_CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")


def _anthropic_tool_to_openai(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools.{index}"
    if not isinstance(tool, dict):
        raise _anthropic_refusal(where, "Input should be a valid dictionary")
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith(_ANTHROPIC_CLIENT_TOOL_PREFIXES):
        raise _anthropic_refusal(
            where,
            f"Anthropic-defined tools ({kind!r}) cannot be used with this model: the client "
            "runs them, but their schema is built into Claude's models, and this model's "
            "deployment speaks OpenAI's Chat Completions. Define the tool as a custom tool "
            "with an input_schema.",
            "unsupported_parameter",
        )
    if kind not in (None, "custom"):
        raise _anthropic_refusal(
            where,
            f"server tools ({kind!r}) cannot be used with this model: its deployment speaks "
            "OpenAI's Chat Completions, which runs no tools itself.",
            "unsupported_parameter",
        )
    for name, value in tool.items():
        if name in _TRANSLATED_TOOL_FIELDS or value in _DEFAULT_TOOL_VALUES.get(name, (None,)):
            continue
        raise _anthropic_refusal(
            f"{where}.{name}",
            f"'{name}' cannot be sent to this model: its deployment speaks OpenAI's Chat "
            "Completions, whose function tools have no such option.",
            "unsupported_parameter",
        )
    name = _required_string(tool, "name", where)
    if not _ANTHROPIC_TOOL_NAME.fullmatch(name):
        raise _anthropic_refusal(
            f"{where}.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'"
        )
    if len(name) > MAX_FUNCTION_NAME_LENGTH:
        raise _anthropic_refusal(
            f"{where}.name",
            f"a name of {len(name)} characters cannot be sent to this model: its deployment "
            f"speaks OpenAI's Chat Completions, whose tool names have at most "
            f"{MAX_FUNCTION_NAME_LENGTH}.",
            "unsupported_parameter",
        )
    input_schema = tool.get("input_schema")
    if input_schema is not None and not isinstance(input_schema, dict):
        raise _anthropic_refusal(f"{where}.input_schema", "Input should be a valid dictionary")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise _anthropic_refusal(f"{where}.description", "Input should be a valid string")
    function: dict[str, Any] = {
        "name": name,
        "parameters": input_schema or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = _openai_strict(tool["strict"], function["parameters"])
    return {"type": "function", "function": function}


def _openai_strict(strict: Any, schema: Any) -> Any:
    """The `strict` of an OpenAI function or `json_schema` format for a schema Anthropic
    takes strictly (`strict`: the tool's flag; True for `output_config.format`, which is
    always enforced): False for a schema OpenAI's strict mode refuses (a property left out
    of `required`, which Anthropic allows, or an object not closed), since OpenAI would
    answer 400 for a request Anthropic's API accepts; otherwise `strict` as it came."""
    if strict is True and isinstance(schema, dict) and strict_violation(schema) is not None:
        return False
    return strict


# Anthropic's tool names (its Messages reference: `^[a-zA-Z0-9_-]{1,128}$`).
_ANTHROPIC_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")


def _anthropic_tool_choice_to_openai(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {
            "type": "function",
            "function": {"name": _required_string(choice, "name", "tool_choice")},
        }
    if kind is None:
        raise _anthropic_refusal("tool_choice.type", "Field required")
    raise _anthropic_refusal(
        "tool_choice.type", f"Input should be 'auto', 'any', 'tool' or 'none', not {kind!r}"
    )


# ---------------------------------------------------------------- OpenAI -> Anthropic

_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "safety_identifier",
        "reasoning_effort",
        "n",
        "store",
        "metadata",
        "logprobs",
        "presence_penalty",
        "frequency_penalty",
        "service_tier",
        "prompt_cache_key",
    }
)
# OpenAI's bounds and values of fields read only for whether they ask for nothing
# (the openai SDK's `CompletionCreateParams`; `n` "between 1 and 128" in its reference).
MAX_OPENAI_N = 128
OPENAI_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
# Values that ask for nothing: accepted and not sent.
_CHAT_NO_OPS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
_BUDGET_BY_EFFORT = THINKING_BUDGET_BY_EFFORT
# An OpenAI reasoning effort as Anthropic's `output_config.effort`, for adaptive thinking
# (Anthropic has no `minimal`: its least is `low`).
ANTHROPIC_EFFORT_BY_EFFORT = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
}
# How a deployment's model takes thinking (`Deployment.thinking_type`): `enabled` with a
# `budget_tokens` (every Claude model with extended thinking until Claude Opus 4.6 and
# Sonnet 4.6, which deprecate it), or `adaptive` with an `output_config.effort` (those
# two, and the only way of Claude Opus 4.7 and later).
ThinkingType = Literal["enabled", "adaptive"]


def chat_request_to_messages(
    body: dict[str, Any],
    *,
    default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
    mid_conversation_system_messages: bool = False,
    thinking_type: ThinkingType = "enabled",
) -> dict[str, Any]:
    """An OpenAI Chat Completions request as an Anthropic Messages request, with
    `default_max_tokens` as its `max_tokens` when the client set no output limit, and
    `reasoning_effort` as thinking of `thinking_type` (`add_anthropic_thinking`).

    Leading system and developer messages become the top-level `system` blocks; later
    ones are appended to them, or, with `mid_conversation_system_messages` (the
    deployment's model takes `role: "system"` messages), stay system messages where
    Anthropic's placement rules allow (`place_system_turns`). Consecutive messages of the
    same role are merged, as Anthropic requires alternating turns; tool messages become
    `tool_result` blocks. Raises TranslationError, in OpenAI's words and with `param` in Chat
    Completions' notation (`messages.[0].content`), for what Messages cannot express
    (`logprobs`, `n` > 1, `seed`, `temperature` above 1, `reasoning_effort` with a forced
    tool...: `add_anthropic_thinking`) and for what OpenAI itself
    refuses in a field the translation renames or reshapes (a `max_tokens` below 1, a
    user message without `content`...)."""
    try:
        return _chat_request_to_messages(
            body, default_max_tokens, mid_conversation_system_messages, thinking_type
        )
    except TranslationError as exc:
        if exc.param is not None:
            exc.param = chat_param(exc.param)
        raise


def check_openai_values(body: dict[str, Any]) -> None:
    """Refuse, as OpenAI's API does (its type and range codes), a value of a field the
    translation reads only to see that it asks for nothing (`n`, `logprobs`, the penalties,
    `store`, `service_tier`): a value OpenAI itself refuses is not "one this model cannot
    take" (`unsupported_parameter`). Raises TranslationError."""
    n = body.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise invalid_type("n", "an integer", n)
        if n < 1:
            raise below_minimum("n", 1, n)
        if n > MAX_OPENAI_N:
            raise TranslationError(
                f"Invalid 'n': integer above maximum value. Expected a value <= "
                f"{MAX_OPENAI_N}, but got {n} instead.",
                "n",
                "integer_above_max_value",
            )
    for name in ("logprobs", "store"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise invalid_type(name, "a boolean", value)
    for name in ("presence_penalty", "frequency_penalty"):
        _number_between(body, name, 2, -2)
    tier = body.get("service_tier")
    if tier is not None and tier not in OPENAI_SERVICE_TIERS:
        raise not_one_of("service_tier", tier, OPENAI_SERVICE_TIERS)


def check_tool_messages(messages: list[dict[str, Any]]) -> None:
    """Refuse, in OpenAI's words, Chat Completions `messages` whose tool messages do not
    answer the calls before them (`switchyard.common.openai_request`): translated, an
    unpaired one would be refused by Anthropic under its own names (`tool_use` ids,
    `messages.2`). Raises TranslationError."""
    fault = tool_message_fault(messages)
    if fault is not None:
        raise TranslationError(
            fault.message, f"messages[{fault.index}].{fault.field}", "invalid_value"
        )


def _chat_request_to_messages(
    body: dict[str, Any],
    default_max_tokens: int,
    mid_conversation_system_messages: bool,
    thinking_type: ThinkingType,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    refuse_unknown(body, _CHAT_FIELDS, "Anthropic's Messages API")
    check_openai_values(body)
    for name, no_ops in _CHAT_NO_OPS.items():
        value = body.get(name)
        if value is not None and value not in no_ops:
            raise TranslationError(
                f"'{name}' = {json_value(value)} cannot be sent to this model: its deployment "
                "speaks Anthropic's Messages API, which has no equivalent.",
                name,
            )
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise missing_parameter("messages")
    if not isinstance(raw_messages, list):
        raise invalid_type("messages", "an array", raw_messages)

    system_blocks: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing_parameter(f"{where}.role")
        if role in ("system", "developer", "user", "tool") and message.get("content") is None:
            raise missing_parameter(f"{where}.content")
        if role in ("system", "developer"):
            blocks = anthropic_blocks(
                _openai_text_blocks(message.get("content"), f"{where}.content")
            )
            if not turns:
                system_blocks += blocks
            elif blocks and turns[-1]["role"] == "system":
                turns[-1]["content"].extend(blocks)
            elif blocks:
                turns.append({"role": "system", "content": blocks})
            continue
        if role == "user":
            blocks = _openai_user_blocks(message.get("content"), where)
            turn_role = "user"
        elif role == "assistant":
            blocks = _openai_assistant_blocks(message, where)
            turn_role = "assistant"
        elif role == "tool":
            blocks = [_openai_tool_result_block(message, where)]
            turn_role = "user"
        elif role == "function":
            raise TranslationError(
                f"'{where}.role' = 'function' (deprecated function messages) cannot be sent "
                "to this model; send 'tool' messages.",
                f"{where}.role",
            )
        else:
            raise not_one_of(
                f"{where}.role", role, ("system", "developer", "user", "assistant", "tool")
            )
        blocks = anthropic_blocks(blocks)
        if not blocks:
            continue  # Anthropic refuses empty turns
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    check_tool_messages(raw_messages)
    for content in place_system_turns(turns, kept=mid_conversation_system_messages):
        system_blocks += content
    unique_tool_use_ids(turns)
    for turn in turns:
        # Tool results must open a user turn; a plain string is the compact form.
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
        content = turn["content"]
        if len(content) == 1 and content[0].get("type") == "text" and len(content[0]) == 2:
            turn["content"] = content[0]["text"]
    trim_prefill(turns)
    if not turns:  # a system turn only ever follows another;
        # a prefill of only whitespace is trimmed away
        raise TranslationError(
            "'messages' has no user or assistant message with content, which this model "
            "needs: its deployment speaks Anthropic's Messages API.",
            "messages",
        )

    max_completion_tokens = positive_integer(body, "max_completion_tokens")
    max_tokens = positive_integer(body, "max_tokens")
    if max_completion_tokens is not None and max_tokens is not None:
        # OpenAI's own answer to both (its `invalid_parameter_combination`).
        raise TranslationError(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
            "max_tokens",
            "invalid_parameter_combination",
        )
    if max_completion_tokens is not None:
        max_tokens = max_completion_tokens
    result: dict[str, Any] = {
        "model": body.get("model"),
        "messages": turns,
        "max_tokens": max_tokens if max_tokens is not None else default_max_tokens,
    }
    if system_blocks:
        if len(system_blocks) == 1 and len(system_blocks[0]) == 2:
            result["system"] = system_blocks[0]["text"]
        else:
            result["system"] = system_blocks
    stop = body.get("stop")
    if isinstance(stop, str):
        _check_stop_sequence(stop, "stop")
        result["stop_sequences"] = [stop]
    elif isinstance(stop, list):
        for index, sequence in enumerate(stop):
            if not isinstance(sequence, str):
                raise invalid_type(f"stop[{index}]", "a string", sequence)
            _check_stop_sequence(sequence, f"stop[{index}]")
        if len(stop) > MAX_OPENAI_STOP:
            # OpenAI's own limit, which Anthropic's API (no such limit) would not enforce.
            raise TranslationError(
                f"Invalid 'stop': array too long. Expected an array with maximum length "
                f"{MAX_OPENAI_STOP}, but got an array with length {len(stop)} instead.",
                "stop",
                "array_above_max_length",
            )
        if stop:
            result["stop_sequences"] = list(stop)
    elif stop is not None:
        raise invalid_type("stop", "one of a string or array of strings", stop)
    add_anthropic_sampling(body, result)
    if body.get("stream"):
        result["stream"] = True

    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid_type("tools", "an array", tools)
    if tools == []:
        raise empty_array("tools")
    if tools:
        result["tools"] = [_openai_tool_to_anthropic(tool, i) for i, tool in enumerate(tools)]
    choice = anthropic_tool_choice(
        body.get("tool_choice"),
        body.get("parallel_tool_calls"),
        function_name="function.name",
        tools=result.get("tools", []),
    )
    if choice is not None and tools:
        result["tool_choice"] = choice
    offer_history_tools(result)

    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise invalid_type("response_format", "an object", response_format)
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            json_schema = response_format.get("json_schema")
            if json_schema is None:
                raise missing_parameter("response_format.json_schema")
            if not isinstance(json_schema, dict):
                raise invalid_type("response_format.json_schema", "an object", json_schema)
            check_json_schema_format(json_schema, "response_format.json_schema")
            schema = json_schema.get("schema")
            if schema is not None and not isinstance(schema, dict):
                raise invalid_type("response_format.json_schema.schema", "an object", schema)
            if schema is None:
                raise TranslationError(
                    "'response_format.json_schema.schema' is required by this model: its "
                    "deployment speaks Anthropic's Messages API, which takes a format only "
                    "with its schema.",
                    "response_format.json_schema.schema",
                )
            check_strict_format(json_schema, "response_format", None)
            result["output_config"] = anthropic_output_config(
                schema, json_schema.get("description")
            )
        elif kind == "json_object":
            # No format to send (see `anthropic_output_config`): the prompt asks for JSON,
            # as OpenAI requires of JSON mode, and is refused as OpenAI refuses it if not.
            if not mentions_json(body.get("messages")):
                raise TranslationError(JSON_MODE_CHAT_MESSAGE, "messages", "invalid_value")
        elif kind is None:
            raise missing_parameter("response_format.type")
        elif kind != "text":
            raise not_one_of("response_format.type", kind, ("text", "json_object", "json_schema"))
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise invalid_type("reasoning_effort", "a string", effort)
    if effort is not None and effort != "none":
        budget = _BUDGET_BY_EFFORT.get(effort)
        if budget is None:
            raise not_one_of(
                "reasoning_effort", effort, ("none", "minimal", "low", "medium", "high", "xhigh")
            )
        capped = max_completion_tokens is not None or max_tokens is not None
        add_anthropic_thinking(
            result,
            budget,
            capped=capped,
            effort_param="reasoning_effort",
            effort=effort,
            thinking_type=thinking_type,
        )
    return result


def anthropic_output_config(
    schema: dict[str, Any], description: str | None = None
) -> dict[str, Any]:
    """Anthropic's `output_config` for an OpenAI `json_schema` format's `schema`: its object
    schemas closed (`close_objects`), since Anthropic refuses an object schema without
    `additionalProperties: false`, which OpenAI's non-strict mode allows. The format's
    `description` ("used by the model to determine how to respond in the format",
    OpenAI's reference) has no field of its own there: it becomes the schema's own
    top-level `description` (before the one the schema had), which the model reads; a
    schema that is a `$ref` at its root (Anthropic's SDK keeps nothing beside one there)
    or whose own `description` is not a string is sent as written.

    OpenAI's JSON mode (`json_object`: any JSON object, no schema) has no counterpart: every
    Anthropic format is a schema, and a schema of any object would have to leave its
    properties open, which Anthropic refuses (closed, it allows only `{}`). Such a request is
    sent without a format; OpenAI takes JSON mode only from a prompt that asks for JSON in
    words (the translators refuse one that does not, in OpenAI's words), which the model
    then reads."""
    own = schema.get("description")
    if description and "$ref" not in schema and (own is None or isinstance(own, str)):
        both = f"{description}\n\n{own}" if own else description
        schema = {**schema, "description": both}
    return {"format": {"type": "json_schema", "schema": close_objects(schema)}}


def _check_stop_sequence(sequence: str, where: str) -> None:
    """Refuse (TranslationError naming `where`) a stop sequence of only whitespace, or
    empty: Anthropic's API refuses such a `stop_sequences` entry, and dropping it would
    change where the reply stops."""
    if not sequence.strip():
        raise TranslationError(
            f"'{where}' = {sequence!r} cannot be sent to this model: its deployment speaks "
            "Anthropic's Messages API, whose stop sequences must contain a character other "
            "than whitespace.",
            where,
        )


# Anthropic's ids of tool uses (its Messages reference: `^[a-zA-Z0-9_-]+$`); OpenAI takes
# any string (`functions.get_weather:0` from some servers).
_ANTHROPIC_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_OUTSIDE_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")


def anthropic_tool_id(call_id: str) -> str:
    """`call_id`, an OpenAI tool call id, as an id Anthropic takes: itself when it fits
    Anthropic's pattern, else its other characters replaced by `_` and a hash of it added
    (the same id always gives the same one, so a call and its result stay paired, and two
    ids differing only in those characters stay apart)."""
    if _ANTHROPIC_TOOL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:12]
    return f"{_OUTSIDE_TOOL_ID.sub('_', call_id)}_{digest}"


# The signature of a `thinking` block made from an OpenAI-compatible server's reasoning text
# (`reasoning_content`, vLLM's and DeepSeek's; `reasoning`): Anthropic's SDKs require one,
# and no Anthropic model would take it back (it is not Anthropic's), so such a block is
# left out of a request to an Anthropic deployment (`without_translated_thinking`), as it
# is towards a Chat Completions one (thinking is never sent there).
TRANSLATED_THINKING_SIGNATURE = "switchyard.reasoning.v1"


def reasoning_signature(origin: str | None) -> str:
    """The signature of a `thinking` block made from the reasoning text of the server at
    `origin` (`reasoning_origin`): `TRANSLATED_THINKING_SIGNATURE`, then a 16-hex digest
    of the origin. Sent back to a deployment of the same origin, the block goes as that
    server's `reasoning_content` (DeepSeek's and Kimi's thinking models refuse a tool loop
    without it; other servers refuse the field, so it goes to no other). None: no origin
    (the block is never sent back)."""
    if origin is None:
        return TRANSLATED_THINKING_SIGNATURE
    digest = hashlib.sha256(origin.encode()).hexdigest()[:16]
    return f"{TRANSLATED_THINKING_SIGNATURE}.{digest}"


def is_translated_thinking(block: Any) -> bool:
    """Whether `block` is a `thinking` block Switchyard made from another server's
    reasoning text (its signature is `reasoning_signature`'s, of any origin)."""
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return isinstance(signature, str) and (
        signature == TRANSLATED_THINKING_SIGNATURE
        or signature.startswith(TRANSLATED_THINKING_SIGNATURE + ".")
    )


# The fields OpenAI-compatible servers put their reasoning text in: vLLM's, DeepSeek's
# and Kimi's `reasoning_content`; `reasoning` (OpenRouter's, Groq's, newer vLLM's).
REASONING_FIELDS = ("reasoning_content", "reasoning")
# What a signature adds for reasoning read from `reasoning` (none for `reasoning_content`),
# so it goes back under the field its server wrote it in (`signed_for`).
_FIELD_MARKS = {"reasoning_content": "", "reasoning": ".r"}


def reasoning_of(message: dict[str, Any]) -> tuple[str, str] | None:
    """The reasoning text an OpenAI-compatible server put in a reply's `message` or a
    stream's `delta`, with the field it came in (`REASONING_FIELDS`, the first with
    text), as (field, text); None for none."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            return name, value
    return None


def reasoning_text(message: dict[str, Any]) -> str | None:
    """The reasoning text of `reasoning_of`, without its field; None for none."""
    found = reasoning_of(message)
    return found[1] if found is not None else None


def signed_for(signature: str, field: str) -> str:
    """`signature` (`reasoning_signature` of a server's origin) for reasoning that server
    wrote in `field`: the field's mark added, so the text goes back in that field
    (`reasoning_field_for`). The bare `TRANSLATED_THINKING_SIGNATURE` (no origin) stays
    as it is: such reasoning goes back to no server."""
    if signature == TRANSLATED_THINKING_SIGNATURE:
        return signature
    return signature + _FIELD_MARKS.get(field, "")


def reasoning_field_for(signature: Any, origin: str | None) -> str | None:
    """The field (`REASONING_FIELDS`) that reasoning signed `signature` goes back in to a
    server at `origin`: the one its server wrote it in, when that server was of `origin`;
    None otherwise (another server's, none's, or no origin given)."""
    if origin is None or not isinstance(signature, str):
        return None
    own = reasoning_signature(origin)
    for field, mark in _FIELD_MARKS.items():
        if signature == own + mark:
            return field
    return None


def without_translated_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic request `body` without the `thinking` blocks Switchyard made from
    another server's reasoning (`TRANSLATED_THINKING_SIGNATURE`), which an Anthropic model
    refuses ("Invalid signature"); `body` itself when it holds none.

    What their removal would leave Anthropic to refuse goes with them: a message that
    held nothing else (empty content), and, when the assistant turn in progress (a tool
    loop) opened with such a block, `thinking` itself (Anthropic refuses thinking on for
    a turn in progress that does not open with a thinking block, and lets a turn go
    without it, as a Chat Completions client's turn is sent) with the thinking-clearing
    edits of `context_management`, which need thinking on."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body

    translated = is_translated_thinking

    kept: list[Any] = []
    changed = False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(map(translated, content)):
            changed = True
            left = [block for block in content if not translated(block)]
            if not left:
                continue  # it held nothing else: an empty message would be refused
            message = {**message, "content": left}
        kept.append(message)
    if not changed:
        return body
    result = {**body, "messages": kept}
    thinking = body.get("thinking")
    if (
        isinstance(thinking, dict)
        and thinking.get("type") != "disabled"
        and not _current_turn_opens_with_thinking([m for m in kept if isinstance(m, dict)])
    ):
        del result["thinking"]
        context_management = _without_thinking_clearing(body.get("context_management"))
        if context_management is None:
            result.pop("context_management", None)
        else:
            result["context_management"] = context_management
    return result


def _without_thinking_clearing(context_management: Any) -> Any:
    """Anthropic's `context_management` without its thinking-clearing edits; None when
    nothing is left of it. Anything not shaped as expected is kept as it is (Anthropic
    judges it)."""
    if not isinstance(context_management, dict):
        return context_management
    edits = context_management.get("edits")
    if not isinstance(edits, list):
        return context_management
    others = [
        edit
        for edit in edits
        if not (isinstance(edit, dict) and edit.get("type") == CLEAR_THINKING_EDIT)
    ]
    if len(others) == len(edits):
        return context_management
    if not others and set(context_management) == {"edits"}:
        return None
    return {**context_management, "edits": others}


# The id of a `tool_use` given to an Anthropic client for an upstream's call id that Anthropic
# would refuse (outside its pattern, or used before in the conversation): the upstream's id,
# base64url without padding, after `toolu_sy` and the copy's number (none for the first).
# `upstream_tool_id` reads it back, so the upstream gets its own id in the next turn.
_TRANSLATED_TOOL_ID = re.compile(r"toolu_sy([0-9]*)_([A-Za-z0-9_-]+)")


def _tool_id_base64(call_id: str) -> str:
    return base64.urlsafe_b64encode(call_id.encode()).rstrip(b"=").decode()


def _translated_tool_id(call_id: str, copy: int) -> str:
    return f"toolu_sy{copy if copy > 1 else ''}_{_tool_id_base64(call_id)}"


def upstream_tool_id(tool_use_id: str) -> str:
    """The upstream's own id for `tool_use_id`, an id an Anthropic client sends back (a
    `tool_use` block's `id`, a `tool_result`'s `tool_use_id`): the one `AnthropicToolIds`
    translated it from, else `tool_use_id` itself. Servers that read their ids (Kimi-K2's
    chat template parses `functions.NAME:INDEX`) get them back unchanged."""
    match = _TRANSLATED_TOOL_ID.fullmatch(tool_use_id)
    if match is None:
        return tool_use_id
    encoded = match.group(2)
    try:
        decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return tool_use_id
    # Only an id this module wrote (the same encoding back) is read: a client's own id
    # that happens to look like one is kept.
    if not decoded or _tool_id_base64(decoded) != encoded:
        return tool_use_id
    return decoded


class AnthropicToolIds:
    """The `tool_use` ids of an Anthropic reply translated from an OpenAI one, each an id
    the client may send back: OpenAI-protocol servers name calls as they like
    (`functions.get_weather:0`, the same `call_0` for two parallel calls, or again in the
    next turn), while Anthropic takes only ids matching `^[a-zA-Z0-9_-]+$`, unique in the
    whole conversation. An upstream id that fits and is not `taken` (by a `tool_use` of
    the request's conversation, or earlier in this reply) is kept; another is written
    `toolu_sy[N]_<base64url of it>`, which `upstream_tool_id` reads back, so the upstream
    gets its own id for the call and its result in the next turn; a call without one gets
    a new `toolu_` id."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken = set(taken)

    def give(self, call_id: Any) -> str:
        """The id of the reply's next `tool_use`, for the upstream's `call_id` (any JSON
        value: one that is not a non-empty string gets a new id)."""
        if not isinstance(call_id, str) or not call_id:
            given = _new_id("toolu_")
            self._taken.add(given)
            return given
        if _ANTHROPIC_TOOL_ID.fullmatch(call_id) and not _TRANSLATED_TOOL_ID.fullmatch(call_id):
            given = call_id
        else:
            given = _translated_tool_id(call_id, 1)
        copy = 1
        while given in self._taken:
            copy += 1
            given = _translated_tool_id(call_id, copy)
        self._taken.add(given)
        return given


def thinking_enabled(body: dict[str, Any]) -> bool:
    """Whether an Anthropic request `body` lets the model think (`thinking.type` `enabled`
    or `adaptive`), so its reply may hold thinking blocks."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def tool_use_ids(body: dict[str, Any]) -> set[str]:
    """The ids of the `tool_use` blocks in an Anthropic request `body`'s messages."""
    ids: set[str] = set()
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                block_id = block.get("id")
                if isinstance(block_id, str):
                    ids.add(block_id)
    return ids


def anthropic_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic content blocks translated from an OpenAI message, as Anthropic takes
    them: a text of only whitespace left out (Anthropic refuses it; OpenAI takes it, as
    the `"\n\n"` a model writes before its tool calls, which the client sends back) and
    tool ids outside Anthropic's pattern mapped by `anthropic_tool_id`."""
    fitted = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str) and not block["text"].strip():
            continue
        if kind == "tool_use" and isinstance(block.get("id"), str):
            block = {**block, "id": anthropic_tool_id(block["id"])}
        elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
            block = {**block, "tool_use_id": anthropic_tool_id(block["tool_use_id"])}
            content = block.get("content")
            if isinstance(content, list):
                # A result's parts, as the turn's blocks: no text of only whitespace.
                content = anthropic_blocks(content)
                block = {**block, "content": content}
                if not content:
                    del block["content"]
        fitted.append(block)
    return fitted


def unique_tool_use_ids(turns: list[dict[str, Any]]) -> None:
    """Give each `tool_use` of Anthropic `turns` an id no earlier one has, in place, its
    results in the next turn following it: Anthropic refuses a conversation that uses an
    id twice, which OpenAI takes (a server numbering each turn's calls from 0,
    `functions.bash:0`, or an agent reusing ids), as it pairs a tool message only with the
    message before it. A repeated id gets a `_2`, `_3`... suffix."""
    seen: set[str] = set()
    current: dict[str, str] = {}  # an id as sent -> the id of its latest tool use
    for turn in turns:
        content = turn["content"]
        if not isinstance(content, list):
            continue
        for position, block in enumerate(content):
            if block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                sent = block["id"]
                unique, count = sent, 1
                while unique in seen:
                    count += 1
                    unique = f"{sent}_{count}"
                seen.add(unique)
                current[sent] = unique
                if unique != sent:
                    content[position] = {**block, "id": unique}
            elif block.get("type") == "tool_result" and block.get("tool_use_id") in current:
                unique = current[block["tool_use_id"]]
                if unique != block["tool_use_id"]:
                    content[position] = {**block, "tool_use_id": unique}


def trim_prefill(turns: list[dict[str, Any]]) -> None:
    """Strip the trailing whitespace of Anthropic `turns` ending in an assistant turn, in
    place: Anthropic continues such a turn (a prefill) and refuses one whose last text ends
    in whitespace ("final assistant content cannot end with trailing whitespace"); an
    OpenAI client's final assistant message carries no such meaning. A text left empty is
    removed (Anthropic refuses empty text blocks), and a turn left empty with it."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    last = turns[-1]
    content = last["content"]
    if isinstance(content, str):
        last["content"] = content.rstrip()
        if not last["content"]:
            turns.pop()
        return
    if not content or content[-1].get("type") != "text":
        return
    block = content[-1]
    text = block.get("text")
    if isinstance(text, str):
        block["text"] = text.rstrip()
        if not block["text"]:
            content.pop()
            if not content:
                turns.pop()


def place_system_turns(turns: list[dict[str, Any]], *, kept: bool) -> list[Any]:
    """Take out of Anthropic `turns` (in place) the system turns, made of an OpenAI
    client's system or developer messages after the conversation started, and return
    their contents in order (a turn's text blocks, or its text) for the caller to append
    to the request's top-level `system`: every model takes that, and reads them there
    with a system prompt's authority, which they would lose as user text. The turns of
    one role that were on either side of a system turn taken out are merged (Anthropic
    requires alternation).

    With `kept` (the deployment's model takes `role: "system"` messages: Claude Opus 4.8
    and later on Anthropic's API), a system turn stays where it is when Anthropic's
    placement rules ("Mid-conversation system messages") allow it there: right after a
    user turn, and last or followed by an assistant turn. Other models, and Claude on
    Amazon Bedrock and Vertex AI, refuse any ("role 'system' is not supported on this
    model"). A system turn ending `turns` after an assistant turn becomes the last user
    turn instead: taken out, it would leave the assistant turn last, which Anthropic
    continues (a prefill) where OpenAI's APIs write a new reply. `turns` hold no two
    system turns in a row (the callers merge them)."""
    hoisted: list[Any] = []
    placed: list[dict[str, Any]] = []
    for position, turn in enumerate(turns):
        if turn["role"] == "system":
            after_user = bool(placed) and placed[-1]["role"] == "user"
            following = turns[position + 1]["role"] if position + 1 < len(turns) else None
            if kept and after_user and following in (None, "assistant"):
                placed.append(turn)
            elif following is None and placed and placed[-1]["role"] == "assistant":
                # Ending the request after an assistant message: taken out, it would
                # leave that message last, which Anthropic continues (a prefill) where
                # OpenAI writes a new reply. As the user's last turn it asks for one.
                placed.append({"role": "user", "content": turn["content"]})
            else:
                hoisted.append(turn["content"])
            continue
        previous = placed[-1] if placed else None
        if previous is not None and previous["role"] == turn["role"]:
            previous["content"].extend(turn["content"])
        else:
            placed.append(turn)
    turns[:] = placed
    return hoisted


# Anthropic's least `budget_tokens`; a client's output cap must also leave at least this
# many tokens for the reply beside it, or the request is sent without thinking.
_MIN_THINKING_BUDGET = 1024
_MIN_REPLY_TOKENS = 1024


def add_anthropic_thinking(
    result: dict[str, Any],
    budget: int,
    *,
    capped: bool,
    effort_param: str,
    effort: str = "medium",
    thinking_type: ThinkingType = "enabled",
) -> None:
    """Turn on thinking for the OpenAI reasoning `effort` in the Anthropic request
    `result`, whose `max_tokens` is already set: the client's output cap when `capped`
    (Chat Completions' `max_completion_tokens` or `max_tokens`, the Responses API's
    `max_output_tokens`), else the deployment's default. With `thinking_type` `adaptive`
    (models that take only that: Claude Opus 4.7 and later), it is
    `{"type": "adaptive"}` and `output_config.effort` (`ANTHROPIC_EFFORT_BY_EFFORT`):
    the model decides how much to think within `max_tokens`, which is kept. With
    `enabled`, it is `budget` tokens (the effort's), as follows.

    OpenAI's caps count reasoning tokens too, so a capped request keeps its `max_tokens`
    and the budget is cut to fit inside it (Anthropic wants `budget_tokens` at least 1024
    and below `max_tokens`); a cap with no room for the least budget and a reply is sent
    without thinking rather than raised. Without a cap `max_tokens` is raised above the
    budget, as the default was never the client's limit.

    A request continuing an assistant turn (its tool loop, or a prefill) whose first
    message does not open with the turn's thinking is sent without thinking: Anthropic
    refuses thinking there ("a final assistant message must start with a thinking
    block"), and lets a turn go without it. A Chat Completions client never has that
    block (its API returns no thinking); a Responses client has it when it sends back
    the reasoning items an Anthropic deployment returned.

    Raises TranslationError (`unsupported_parameter`, in OpenAI's words, naming the
    client's field) when thinking is sent with what Anthropic refuses beside it: a
    `tool_choice` forcing a tool, a `temperature` other than 1, a `top_p` below 0.95.
    `effort_param` names the client's effort field in the message."""
    if not _current_turn_opens_with_thinking(result["messages"]):
        return
    if thinking_type == "adaptive":
        _refuse_thinking_conflict(result, effort_param)
        result["thinking"] = {"type": "adaptive"}
        output_config = dict(result.get("output_config") or {})
        output_config["effort"] = ANTHROPIC_EFFORT_BY_EFFORT.get(effort, "medium")
        result["output_config"] = output_config
        return
    max_tokens = result["max_tokens"]
    if capped:
        budget = min(budget, max_tokens - _MIN_REPLY_TOKENS)
        if budget < _MIN_THINKING_BUDGET:
            return
    elif max_tokens <= budget:
        result["max_tokens"] = budget + max_tokens
    _refuse_thinking_conflict(result, effort_param)
    result["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _refuse_thinking_conflict(result: dict[str, Any], effort_param: str) -> None:
    """Raise TranslationError naming the field of the Anthropic request `result` that
    Anthropic refuses beside thinking (`_thinking_conflict`), if any."""
    conflict = _thinking_conflict(result)
    if conflict is not None:
        name, what = conflict
        raise TranslationError(
            f"'{name}' {what} cannot be sent to this model with '{effort_param}': its "
            "deployment speaks Anthropic's Messages API, which refuses it with thinking on.",
            name,
        )


def _thinking_conflict(request: dict[str, Any]) -> tuple[str, str] | None:
    """(field, what is wrong with it) of the first thing in the Anthropic `request` that
    Anthropic refuses beside thinking (its extended thinking guide: forced tool use,
    `temperature` and `top_k` changes, a `top_p` below 0.95; OpenAI has no `top_k`), or
    None. The fields are named as the OpenAI client named them (the same names)."""
    choice = request.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return "tool_choice", "forcing a tool ('required' or a function)"
    temperature = request.get("temperature")
    if temperature is not None and temperature != 1:
        return "temperature", "other than 1"
    top_p = request.get("top_p")
    if top_p is not None and top_p < 0.95:
        return "top_p", "below 0.95"
    return None


def _current_turn_opens_with_thinking(turns: list[dict[str, Any]]) -> bool:
    """Whether thinking may be on for Anthropic `turns`: true when they end with a new
    user message (no assistant turn in progress), or when the assistant turn in progress
    (the assistant messages after the last user message without a tool result) opens
    with a thinking or redacted thinking block."""
    first_assistant: dict[str, Any] | None = None
    for turn in reversed(turns):
        role, content = turn.get("role"), turn.get("content")
        if role == "assistant":
            first_assistant = turn
        elif role == "user":
            blocks = content if isinstance(content, list) else []
            if not any(block.get("type") == "tool_result" for block in blocks):
                break
    if first_assistant is None:
        return True
    content = first_assistant.get("content")
    return (
        isinstance(content, list)
        and bool(content)
        and content[0].get("type") in ("thinking", "redacted_thinking")
    )


# A media type of a `data:` URL (RFC 2045, 5.1: type "/" subtype, tokens).
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")


_WHITESPACE = re.compile(r"[ \t\r\n]+")


def _checked_base64(data: str) -> str | None:
    """`data` without the line breaks some encoders wrap base64 in, when the rest is
    base64 (RFC 4648, 4: the standard alphabet, padded); None otherwise."""
    if " " in data or "\n" in data or "\r" in data or "\t" in data:
        data = _WHITESPACE.sub("", data)
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return data


def parse_data_url(url: str, where: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL (RFC 2397), or None for any other URL.
    Data not marked `;base64` is percent-decoded, then base64-encoded. Raises
    TranslationError (`invalid_value`, naming `where`) for a `data:` URL without a comma
    before its data, with empty data, a malformed media type, or data marked base64 that
    is not: the provider would refuse it in its own words, naming its own fields."""
    if url[:5].lower() != "data:":
        return None
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise invalid_value(where, "a data URL needs a comma before its data.")
    media_type, *parameters = header.split(";")
    if media_type and not _MEDIA_TYPE.fullmatch(media_type):
        raise invalid_value(where, f"the data URL's media type {media_type[:100]!r} is not valid.")
    # RFC 2397's tokens, like the media type's (RFC 2045, 5.1), are case-insensitive.
    media_type = media_type.lower()
    if parameters and parameters[-1].strip().lower() == "base64":
        checked = _checked_base64(data)
        if checked is None:
            raise invalid_value(where, "the data URL's data is not valid base64.")
        data = checked
    else:
        data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
    if not data:
        raise invalid_value(where, "the data URL holds no data.")
    return media_type or "application/octet-stream", data


def base64_data(data: str, where: str) -> str:
    """`data` when it is non-empty base64. Raises TranslationError (`invalid_value`,
    naming `where`) otherwise."""
    checked = _checked_base64(data)
    if checked is None:
        raise invalid_value(where, "expected a data URL or base64 data.")
    if not checked:
        raise invalid_value(where, "the file holds no data.")
    return checked


def document_source(media_type: str, data: str, where: str) -> dict[str, Any]:
    """Anthropic's document `source` for a file's base64 `data` of `media_type`: `base64`
    for a PDF, `text` for plain text (decoded; Anthropic takes text documents as text).
    Raises TranslationError (`invalid_value`, naming `where`) for any other media type or
    text that is not UTF-8."""
    if media_type == "application/pdf":
        return {"type": "base64", "media_type": media_type, "data": data}
    if media_type == "text/plain":
        try:
            text = base64.b64decode(data).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_value(where, "a text/plain file must be UTF-8 text.") from None
        return {"type": "text", "media_type": media_type, "data": text}
    raise not_one_of(where, media_type or "no media type", ("application/pdf", "text/plain"))


def image_media_type(data: str) -> str | None:
    """The media type of base64 image `data` (valid base64, `parse_data_url`'s) read from
    its first bytes: one of `ANTHROPIC_IMAGE_TYPES` when they are that format's signature,
    else None. Only the first 16 characters (12 bytes) are decoded, whatever the image's
    size.

    The signatures: JPEG's start-of-image marker and the first byte of the marker after
    it (ITU-T T.81: `FF D8`, then `FF`); PNG's file signature (RFC 2083, 3.1: `89 50 4E 47
    0D 0A 1A 0A`); GIF's header (the GIF89a specification, 17: `GIF87a` or `GIF89a`);
    WebP's RIFF header (RFC 9649: `RIFF`, the file's size in 4 bytes, `WEBP`)."""
    head = base64.b64decode(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_source(url: str, where: str) -> dict[str, Any]:
    """Anthropic's image `source` for an OpenAI image URL: `base64` for a `data:` URL
    (`parse_data_url`), `url` for an http(s) one. A data URL's media type is its bytes'
    (`image_media_type`) when they are one of `ANTHROPIC_IMAGE_TYPES`, whatever the URL
    declares: OpenAI reads the image itself, and Anthropic refuses an image whose bytes
    are not of the declared type. Raises TranslationError (`invalid_value`) for any other
    scheme, for a data URL whose bytes are none of those types and whose declared type is
    not one either, or for a malformed data URL."""
    data_url = parse_data_url(url, where)
    if data_url is not None:
        declared, data = data_url
        media_type = image_media_type(data) or declared
        if media_type not in ANTHROPIC_IMAGE_TYPES:
            raise not_one_of(where, declared or "no media type", ANTHROPIC_IMAGE_TYPES)
        return {"type": "base64", "media_type": media_type, "data": data}
    if not url.lower().startswith(("https://", "http://")):
        raise invalid_value(where, "expected an http(s) URL or a data URL.")
    return {"type": "url", "url": url}


def text_of(part: dict[str, Any], where: str, field: str = "text") -> str:
    """The text of a content part (its `field`): "" when it has none, and a 400 naming
    `<where>.<field>` when it holds anything but a string (a number sent on as text, or
    left out as empty, would change what the model reads). Raises TranslationError."""
    value = part.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid_type(f"{where}.{field}", "a string", value)
    return value


def required_text(part: dict[str, Any], where: str, field: str = "text") -> str:
    """The text of a text part, which both OpenAI APIs require (`text_of`, but a part
    without it is refused as OpenAI refuses it, `missing_required_parameter`, instead of
    being left out). Raises TranslationError."""
    if part.get(field) is None:
        raise missing_parameter(f"{where}.{field}")
    return text_of(part, where, field)


def _text_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    block = {"type": "text", "text": required_text(part, where)}
    if part.get("cache_control") is not None:  # some OpenAI clients mark cache points
        block["cache_control"] = part["cache_control"]
    return block


def _openai_parts(content: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, part) of each part of an array `content` at `where`, each an object with a
    `type` (refused in OpenAI's words otherwise)."""
    if not isinstance(content, list):
        raise invalid_type(where, "one of a string or array of objects", content)
    parts = []
    for position, part in enumerate(content):
        part_where = f"{where}[{position}]"
        if not isinstance(part, dict):
            raise invalid_type(part_where, "an object", part)
        if part.get("type") is None:
            raise missing_parameter(f"{part_where}.type")
        parts.append((part_where, part))
    return parts


def _openai_text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part_where, part in _openai_parts(content, where):
        if part.get("type") != "text":
            raise TranslationError(
                f"'{part_where}' is a {part.get('type')!r} part: only text parts can be sent "
                "here to this model.",
                part_where,
            )
        if required_text(part, part_where):
            blocks.append(_text_block(part, part_where))
    return blocks


def _openai_user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part_where, part in _openai_parts(content, f"{where}.content"):
        kind = part.get("type")
        if kind == "text":
            if required_text(part, part_where):
                blocks.append(_text_block(part, part_where))
        elif kind == "image_url":
            image = part.get("image_url")
            if image is None:
                raise missing_parameter(f"{part_where}.image_url")
            if not isinstance(image, dict):
                raise invalid_type(f"{part_where}.image_url", "an object", image)
            url = image.get("url")
            if url is None:
                raise missing_parameter(f"{part_where}.image_url.url")
            detail = image.get("detail")
            if detail is not None and detail not in IMAGE_DETAILS:
                raise not_one_of(f"{part_where}.image_url.detail", detail, IMAGE_DETAILS)
            if not isinstance(url, str):
                raise invalid_type(f"{part_where}.image_url.url", "a string", url)
            source = image_source(url, f"{part_where}.image_url.url")
            blocks.append({"type": "image", "source": source})
        elif kind == "file":
            file = part.get("file")
            if not isinstance(file, dict):
                raise invalid_type(f"{part_where}.file", "an object", file)
            file_data = file.get("file_data")
            if file_data is None or file_data == "":
                raise TranslationError(
                    f"'{part_where}.file': only inline files ('file_data') can be sent to this "
                    "model.",
                    f"{part_where}.file",
                )
            if not isinstance(file_data, str):
                raise invalid_type(f"{part_where}.file.file_data", "a string", file_data)
            data_url = parse_data_url(file_data, f"{part_where}.file.file_data")
            if data_url is None:
                raise invalid_value(f"{part_where}.file.file_data", "expected a data URL.")
            document: dict[str, Any] = {
                "type": "document",
                "source": document_source(*data_url, f"{part_where}.file.file_data"),
            }
            filename = file.get("filename")
            if filename is not None and not isinstance(filename, str):
                raise invalid_type(f"{part_where}.file.filename", "a string", filename)
            if filename:
                document["title"] = filename
            blocks.append(document)
        else:
            raise TranslationError(
                f"'{part_where}': content parts of type {kind!r} cannot be sent to this model.",
                part_where,
            )
    return blocks


def _openai_assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("audio") is not None:
        # A reference to an earlier spoken answer (`{"id": ...}`): Anthropic has no audio,
        # and leaving it out would drop the assistant's turn from the conversation.
        raise TranslationError(
            f"'{where}.audio': audio from an earlier turn cannot be sent to this model.",
            f"{where}.audio",
        )
    content = message.get("content")
    # Each text (or refusal) part its own text block: joined, their words would run
    # together.
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for part_where, part in _openai_parts(content, f"{where}.content"):
            # An assistant message's parts are text or refusal in Chat Completions: any
            # other part is refused as OpenAI refuses it, never dropped from the turn.
            kind = part.get("type")
            if kind not in ("text", "refusal"):
                raise not_one_of(f"{part_where}.type", kind, ("text", "refusal"))
            texts.append(required_text(part, part_where, kind))
    # A refusal the model answered with (`"content": null, "refusal": "..."`, as a reply's
    # message holds it) was its turn: it goes back as what the assistant said, like a
    # refusal part, never left out of the conversation.
    refusal = message.get("refusal")
    if refusal is not None:
        if not isinstance(refusal, str):
            raise invalid_type(f"{where}.refusal", "a string", refusal)
        texts.append(refusal)
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text} for text in texts if text]
    calls: Any = message.get("tool_calls")
    if calls == []:
        raise empty_array(f"{where}.tool_calls")
    calls = calls or []
    if not isinstance(calls, list):
        raise invalid_type(f"{where}.tool_calls", "an array", calls)
    for position, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{position}]"
        if not isinstance(call, dict):
            raise invalid_type(call_where, "an object", call)
        function = call.get("function")
        if function is None:
            raise TranslationError(
                f"'{call_where}': only function tool calls can be sent to this model.",
                call_where,
            )
        blocks.append(_tool_use_block(call.get("id"), function, call_where, f"{call_where}.id"))
    legacy = message.get("function_call")
    if legacy is not None:
        # The deprecated form has no id: one is made for its tool_use block.
        blocks.append(_tool_use_block(_new_id("toolu_"), legacy, f"{where}.function_call", ""))
    return blocks


def _tool_use_block(call_id: Any, function: Any, where: str, id_where: str) -> dict[str, Any]:
    """Anthropic's `tool_use` block for an OpenAI function call (its `id`, at `id_where`,
    and `function` at `where`): an id or name missing is refused here, where OpenAI would,
    rather than sent empty for Anthropic to refuse under its own field names."""
    function_where = where if where.endswith("function_call") else f"{where}.function"
    if call_id is None:
        raise missing_parameter(id_where)
    if not isinstance(call_id, str):
        raise invalid_type(id_where, "a string", call_id)
    if not isinstance(function, dict):
        raise invalid_type(function_where, "an object", function)
    name = function.get("name")
    if name is None:
        raise missing_parameter(f"{function_where}.name")
    if not isinstance(name, str):
        raise invalid_type(f"{function_where}.name", "a string", name)
    if not name:  # Anthropic refuses a tool use without a name
        raise empty_string(f"{function_where}.name")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": name,
        "input": tool_input_of_request(function.get("arguments"), f"{function_where}.arguments"),
    }


def _openai_tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    tool_call_id = message.get("tool_call_id")
    if tool_call_id is None:
        raise missing_parameter(f"{where}.tool_call_id")
    if not isinstance(tool_call_id, str):
        raise invalid_type(f"{where}.tool_call_id", "a string", tool_call_id)
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, str):
        result["content"] = content
    else:
        result["content"] = _openai_text_blocks(content, f"{where}.content")
    return result


def add_anthropic_sampling(body: dict[str, Any], result: dict[str, Any]) -> None:
    """Copy an OpenAI request's (Chat Completions or Responses) `temperature`, `top_p` and
    end user (`safety_identifier`, else `user`, as Anthropic's `metadata.user_id`: the
    identifier Anthropic uses to detect abuse, which OpenAI's `safety_identifier` is and
    its deprecated `user` was) into the Anthropic request `result`; a `top_p` of 1 (the
    default) is not sent, nor a `temperature` of 1 (the default too) beside another
    `top_p`. Raises TranslationError in OpenAI's words for a value OpenAI refuses (a
    `temperature` outside 0 to 2, a `top_p` outside 0 to 1, a `user` that is not a
    string: Anthropic would refuse it under its own field name), and for a `temperature`
    above 1, outside Anthropic's range."""
    temperature = _number_between(body, "temperature", 2)
    if temperature is not None:
        if temperature > 1:
            raise TranslationError(
                "'temperature' above 1 cannot be sent to this model (Anthropic's range is 0 to 1).",
                "temperature",
            )
        result["temperature"] = temperature
    top_p = _number_between(body, "top_p", 1)
    # 1, OpenAI's default, asks for nothing: sent beside `temperature` it would be refused
    # by the Claude models that take only one of the two (Claude Sonnet 4.5 and later).
    if top_p is not None and top_p != 1:
        result["top_p"] = top_p
        if result.get("temperature") == 1:
            # 1 is both APIs' default: sent beside `top_p` it would be refused by the
            # Claude models that take only one of the two.
            del result["temperature"]
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid_type(name, "a string", value)
    user = body.get("safety_identifier") or body.get("user")
    if user:
        result["metadata"] = {"user_id": user}


def _number_between(
    body: dict[str, Any], name: str, maximum: int, minimum: int = 0
) -> int | float | None:
    """The client's number `name` if set; TranslationError in OpenAI's words unless it is a
    number within [minimum, maximum]."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid_type(name, "a number", value)
    if value < minimum:
        raise TranslationError(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            name,
            "decimal_below_min_value",
        )
    if value > maximum:
        raise TranslationError(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            name,
            "decimal_above_max_value",
        )
    return value


def _openai_tool_to_anthropic(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise invalid_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise TranslationError(
            f"'{where}' is a {tool.get('type')!r} tool: only function tools can be used with "
            "this model.",
            where,
        )
    function = tool.get("function")
    if function is None:
        raise missing_parameter(f"{where}.function")
    if not isinstance(function, dict):
        raise invalid_type(f"{where}.function", "an object", function)
    return anthropic_tool(function, f"{where}.function")


# The fields of an OpenAI function definition Anthropic's tools carry (`type` is the
# Responses API's function tool's own, `function`).
FUNCTION_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})
# Options of an OpenAI function tool (`FunctionToolParam`) at the values that ask for
# nothing; any other value of them, or any other field, is refused by name.
_FUNCTION_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "defer_loading": (None, False),
    "allowed_callers": (None, ["direct"]),
}


def refuse_function_options(function: dict[str, Any], where: str, target: str) -> None:
    """Refuse (TranslationError naming `where.<field>`, OpenAI's words) the first field of
    an OpenAI function definition beyond `FUNCTION_FIELDS` that asks for something: the
    tools of `target`, the deployment's API, carry no such option in translation."""
    for field, value in function.items():
        if field in FUNCTION_FIELDS or value in _FUNCTION_DEFAULTS.get(field, (None,)):
            continue
        raise TranslationError(
            f"'{where}.{field}' cannot be sent to this model: its deployment speaks {target}, "
            "and the translated tool carries no such option.",
            f"{where}.{field}",
        )


def anthropic_tool(function: dict[str, Any], where: str) -> dict[str, Any]:
    """Anthropic's tool for an OpenAI function definition (`name`, `description`,
    `parameters`, `strict`): a Chat Completions tool's `function`, or a Responses function
    tool itself, at `where` in the client's request. No `parameters` is a tool taking an
    empty object. Raises TranslationError (OpenAI's words) for a missing `name`, and for
    any other field (a tool option Anthropic's tools have no equivalent for)."""
    check_function(function, where)
    refuse_function_options(function, where, "Anthropic's Messages API")
    result: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        result["description"] = function["description"]
    if function.get("strict") is not None:
        result["strict"] = function["strict"]
    return result


def check_function(function: dict[str, Any], where: str) -> None:
    """Refuse, in OpenAI's words (TranslationError naming the field under `where`), an
    OpenAI function definition (a Chat Completions tool's `function`, or a Responses
    function tool) OpenAI itself refuses and a translation would reshape: no `name`, a
    name OpenAI does not take (`check_function_name`), `parameters` that is not an
    object, a `description` that is not a string, a `strict` that is not a boolean."""
    name = function.get("name")
    if name is None:
        raise missing_parameter(f"{where}.name")
    if not isinstance(name, str):
        raise invalid_type(f"{where}.name", "a string", name)
    check_function_name(name, f"{where}.name")
    for field, expected, kind in (
        ("parameters", "an object", dict),
        ("description", "a string", str),
        ("strict", "a boolean", bool),
    ):
        value = function.get(field)
        if value is not None and not isinstance(value, kind):
            raise invalid_type(f"{where}.{field}", expected, value)
    parameters = function.get("parameters")
    if function.get("strict") is True and isinstance(parameters, dict):
        # OpenAI checks a strict schema itself; the other API (Anthropic's takes optional
        # properties) would not, and the client would learn of it only from OpenAI.
        violation = strict_violation(parameters)
        if violation is not None:
            raise TranslationError(
                f"Invalid schema for function '{name}': In context=(), {violation}",
                f"{where}.parameters",
                "invalid_function_parameters",
            )


def check_strict_format(fmt: dict[str, Any], param: str, code: str | None) -> None:
    """Refuse, in OpenAI's words, a `json_schema` format (`fmt`: Chat Completions'
    `response_format.json_schema`, or the Responses API's `text.format`) with
    `strict: true` whose schema OpenAI's strict mode refuses (`strict_violation`): an
    object not closed, or a property not required. TranslationError with `param` and
    `code` as OpenAI answers them (Chat Completions names `response_format`, no code;
    the Responses API `text.format.schema`, `invalid_json_schema`)."""
    schema = fmt.get("schema")
    if fmt.get("strict") is not True or not isinstance(schema, dict):
        return
    violation = strict_violation(schema)
    if violation is not None:
        raise TranslationError(
            f"Invalid schema for response_format '{fmt.get('name')}': In context=(), {violation}",
            param,
            code,
        )


# OpenAI's function names (its reference: "a-z, A-Z, 0-9, or contain underscores and
# dashes, with a maximum length of 64"), which Anthropic's tool names also take.
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]+")
MAX_FUNCTION_NAME_LENGTH = 64


def check_function_name(name: str, where: str) -> None:
    """Refuse, in OpenAI's words (TranslationError naming `where`), a function name OpenAI
    refuses: a name outside `^[a-zA-Z0-9_-]+$` or longer than 64 characters."""
    if len(name) > MAX_FUNCTION_NAME_LENGTH:
        raise TranslationError(
            f"Invalid '{where}': string too long. Expected a string with maximum length "
            f"{MAX_FUNCTION_NAME_LENGTH}, but got a string with length {len(name)} instead.",
            where,
            "string_above_max_length",
        )
    if not _FUNCTION_NAME.fullmatch(name):
        raise TranslationError(
            f"Invalid '{where}': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            where,
            "invalid_value",
        )


# What a tool of `offer_history_tools` says of itself to the model.
HISTORY_TOOL_DESCRIPTION = "A tool called earlier in this conversation; not offered now."


def offer_history_tools(request: dict[str, Any]) -> None:
    """Give an Anthropic Messages `request` without `tools` whose turns hold `tool_use`
    blocks (a tool-calling conversation continued without its tools, which OpenAI's APIs
    take) a tool of each name those blocks call, in the order first called, with
    `tool_choice: none`: Anthropic refuses `tool_use` and `tool_result` blocks in a
    request that defines no tools, and without tools the model may call none, as in the
    OpenAI request. Each tool takes any object (`input_schema: {"type": "object"}`).
    Changes `request` in place; a request with tools, or no `tool_use`, is left as it is."""
    if request.get("tools"):
        return
    names: dict[str, None] = {}
    for turn in request.get("messages", ()):
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                name = block.get("name")
                if isinstance(name, str) and name:
                    names.setdefault(name, None)
    if names:
        request["tools"] = [
            {
                "name": name,
                "description": HISTORY_TOOL_DESCRIPTION,
                "input_schema": {"type": "object"},
            }
            for name in names
        ]
        request["tool_choice"] = {"type": "none"}


# OpenAI's `tool_choice` words and Anthropic's `tool_choice.type` for each.
_ANTHROPIC_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def anthropic_tool_choice(
    choice: Any, parallel_tool_calls: Any, *, function_name: str, tools: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Anthropic's `tool_choice` for OpenAI's `tool_choice` and `parallel_tool_calls` (of
    Chat Completions or Responses): None when neither asks for anything; `auto`,
    `required` and `none` as Anthropic's `auto`, `any` and `none`; a function choice as
    that tool, its name at `tool_choice.<function_name>` (`function.name` in Chat
    Completions, `name` in Responses); `parallel_tool_calls: false` as
    `disable_parallel_tool_use` (never with `none`, where it means nothing).

    Raises TranslationError naming `tool_choice` in OpenAI's words: a choice other than
    those (unsupported), a function choice without its name or naming no tool of `tools`
    (the request's tools, translated), or one that requires a tool when the request has
    none, which OpenAI refuses too; and naming `parallel_tool_calls` when it is not a
    boolean."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise invalid_type("parallel_tool_calls", "a boolean", parallel_tool_calls)
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif isinstance(choice, str) and choice in _ANTHROPIC_TOOL_CHOICES:
        result = {"type": _ANTHROPIC_TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        node: Any = choice
        for key in function_name.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            raise missing_parameter(f"tool_choice.{function_name}")
        if not isinstance(node, str):
            raise invalid_type(f"tool_choice.{function_name}", "a string", node)
        if tools and node not in {tool.get("name") for tool in tools}:
            raise invalid_value(
                f"tool_choice.{function_name}", f"no function named '{node}' is in 'tools'."
            )
        result = {"type": "tool", "name": node}
    else:
        raise unusable_tool_choice(choice)
    if result is not None and result["type"] in ("any", "tool") and not tools:
        raise invalid_value(
            "tool_choice", "'tool_choice' is only allowed when 'tools' are specified."
        )
    if parallel_tool_calls is False:
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
        if result["type"] == "none":
            result.pop("disable_parallel_tool_use")
    return result


# =========================================================================== replies


def message_to_chat_completion(message: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic `message` as an OpenAI `chat.completion` for the public `model`.
    Thinking blocks are not part of a Chat Completions reply (OpenAI returns no
    reasoning text there either); their tokens are in `completion_tokens_details`."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(joined_text(None, block.get("text")))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": _json_dumps(block.get("input") or {}),
                    },
                }
            )
    content = "".join(texts)
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": _recast_id(message.get("id"), COMPLETION_ID_PREFIX, MESSAGE_ID_PREFIX),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": openai_finish_reason(message.get("stop_reason")) or "stop",
            }
        ],
        "usage": chat_usage_from_messages(message.get("usage")),
    }


def _matched_stop_sequence(choice: dict[str, Any]) -> str | None:
    """The stop sequence an OpenAI-compatible server says it stopped on (vLLM reports it
    as the choice's `stop_reason`, SGLang as its `matched_stop`; either may be a token id
    instead, an end of text rather than a sequence; OpenAI itself does not say)."""
    for name in ("stop_reason", "matched_stop"):
        value = choice.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls of a Chat Completions reply `message` or stream `delta`: its
    `tool_calls`, else its legacy `function_call` (OpenAI's deprecated functions API,
    which some servers still answer with) as one call at index 0 without an id (the
    translations make one up, as for any call without one)."""
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return [call for call in calls if isinstance(call, dict)]
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        return [{"index": 0, "type": "function", "function": legacy}]
    return []


def _continuing(call: dict[str, Any]) -> dict[str, Any]:
    """A `tool_calls` delta continuing a call already started: without its `id`, `type`
    and function `name`."""
    function = call.get("function")
    kept = {key: value for key, value in call.items() if key not in ("id", "type")}
    if isinstance(function, dict):
        kept["function"] = {key: value for key, value in function.items() if key != "name"}
    return kept


def _without_id(call: dict[str, Any]) -> dict[str, Any]:
    """A `tool_calls` delta continuing a call it gives an index of: without the `id` and
    `type` its first delta gave (stream readers join what each delta repeats: the openai
    SDK makes `call_acall_a` of an id repeated). Its function name stays: servers stream
    a long name in pieces, which readers join, and the translations read the name
    whichever way it comes."""
    if "id" not in call and "type" not in call:
        return call
    return {key: value for key, value in call.items() if key not in ("id", "type")}


def _function_name(call: dict[str, Any]) -> str | None:
    """The function name a `tool_calls` delta gives, or None when it gives none (or an
    empty one)."""
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


class ToolCallIndexes:
    """Gives each `tool_calls` delta of one Chat Completions stream the `index` of the call
    it belongs to, one index a call:

    - for servers that leave it out (Gemini's OpenAI-compatible API sends each call, or
      pieces of its arguments, without one): a delta with an id not seen before starts
      the next call, one with an id seen before belongs to that call (its id, type and
      name, already given, left out, as OpenAI's continuing deltas leave them: stream
      readers join what each delta repeats), one without an id (or an empty one)
      continues the last call;
    - for servers that give parallel calls one index (Ollama gives each call of a turn
      index 0): a delta with an id other than that of the call its index holds, and a
      function name, starts a new call, at the next free index; the deltas after it at
      that index continue it (one with the id of an earlier call at that index belongs to
      it). A delta with a new id but no name continues the call (some servers change the
      id from chunk to chunk). Calls at different indexes stay apart whatever their ids
      (some servers give parallel calls one id, `call_0`).

    A delta continuing a call given with an index loses the id and type its first delta
    gave (`_without_id`), as OpenAI's continuing deltas carry none: a server repeating
    them (vLLM repeats the id) would otherwise have them joined (`call_acall_a`) by stream
    readers, the openai SDK's among them. Other deltas keep their index, as they are."""

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}
        # The upstream's index -> the id of the latest call given at it (None: it came
        # without one) and that call's index here; and each (upstream's index, id) seen.
        self._by_index: dict[int, tuple[str | None, int]] = {}
        self._by_index_and_id: dict[tuple[int, str], int] = {}
        self._taken: set[int] = set()
        self._last: int | None = None
        self._count = 0

    def _new_call(self, wanted: int | None) -> int:
        """The index of a new call: `wanted` (the upstream's) when no call has it, else
        the next free one."""
        index = wanted if wanted is not None and wanted not in self._taken else self._count
        self._taken.add(index)
        self._count = max(self._count, index + 1)
        return index

    def indexed(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`calls` (a delta's `tool_calls`), each with the `index` of its call: the same
        dicts where the upstream's index is that, copies where it is given or changed."""
        out = []
        for call in calls:
            given = call.get("index")
            raw_id = call.get("id")
            call_id = raw_id if isinstance(raw_id, str) and raw_id else None
            if isinstance(given, int) and not isinstance(given, bool):
                latest = self._by_index.get(given)
                if call_id is not None and (given, call_id) in self._by_index_and_id:
                    index = self._by_index_and_id[given, call_id]
                    call = _without_id(call)  # vLLM repeats the id in each delta
                elif latest is None or (
                    call_id is not None
                    and _function_name(call) is not None
                    and latest[0] not in (None, call_id)
                ):
                    # A call not seen yet; at an index in use, another call given it (it
                    # names its function: a delta of the same call with a new id, as some
                    # servers send, names none and continues the call).
                    index = self._new_call(given)
                    self._by_index[given] = (call_id, index)
                    if call_id is not None:
                        self._by_index_and_id[given, call_id] = index
                else:
                    index = latest[1]
                    call = _without_id(call)
                if index != given:
                    call = {**call, "index": index}
            else:
                if call_id is not None and call_id in self._by_id:
                    index = self._by_id[call_id]
                    call = _continuing(call)
                elif call_id is not None or self._last is None:
                    index = self._new_call(None)
                    # Deltas that give this index later (a server mixing both) continue it.
                    self._by_index.setdefault(index, (call_id, index))
                    if call_id is not None:
                        self._by_index_and_id.setdefault((index, call_id), index)
                else:
                    index = self._last
                    call = _continuing(call)
                call = {**call, "index": index}
            if call_id is not None:
                self._by_id.setdefault(call_id, index)
            self._last = index
            out.append(call)
        return out


def chat_completion_to_message(
    completion: dict[str, Any],
    model: str,
    tool_ids: AnthropicToolIds | None = None,
    *,
    thinking: bool = False,
    signature: str = TRANSLATED_THINKING_SIGNATURE,
) -> dict[str, Any]:
    """An OpenAI `chat.completion` (its first choice) as an Anthropic `message`, its tool
    calls' ids given by `tool_ids` (the request's own `tool_use` ids taken: see
    `AnthropicToolIds`; none taken when not given). With `thinking` (the request enabled
    it), the server's reasoning text (`reasoning_text`) comes first as a `thinking` block;
    without, it is left out, as Anthropic sends no thinking unless asked. `signature`:
    that block's (`reasoning_signature` of the server's origin)."""
    tool_ids = tool_ids if tool_ids is not None else AnthropicToolIds()
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message) if thinking else None
    if reasoning is not None:
        field, text = reasoning
        content.append(
            {"type": "thinking", "thinking": text, "signature": signed_for(signature, field)}
        )
    text = _text_of(message.get("content"))
    refusal = message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in tool_calls_of(message):
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_ids.give(call.get("id")),
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason = anthropic_stop_reason(choice.get("finish_reason")) or "end_turn"
    stop_sequence = _matched_stop_sequence(choice)
    if stop_sequence is not None and stop_reason == "end_turn":
        stop_reason = "stop_sequence"
    if stop_reason == "end_turn" and any(block["type"] == "tool_use" for block in content):
        # Gemini's OpenAI-compatible API ends a reply that calls tools with "stop", not
        # "tool_calls": Anthropic clients' agent loops run a reply's tools only when it
        # stopped for `tool_use`.
        stop_reason = "tool_use"
    if not text and isinstance(refusal, str) and refusal:
        stop_reason = "refusal"
    return {
        "id": _recast_id(completion.get("id"), MESSAGE_ID_PREFIX, COMPLETION_ID_PREFIX),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": messages_usage_from_chat(completion.get("usage")),
    }


# =========================================================================== streams


# The whitespace JSON allows around a value (RFC 8259, section 2); `str.strip()` alone
# would also take Unicode spaces, which are not JSON's.
JSON_WHITESPACE = " \t\n\r"


def whole_json(pieces: list[str]) -> bool:
    """Whether a tool call's argument pieces so far join into one whole JSON value. Only
    parsed when they end as an object or array can (arguments are a JSON object), so a
    long call streamed in small pieces is not parsed again with every piece."""
    last = next(
        (
            piece.rstrip(JSON_WHITESPACE)
            for piece in reversed(pieces)
            if piece.strip(JSON_WHITESPACE)
        ),
        "",
    )
    if not last.endswith(("}", "]")):
        return False
    try:
        orjson.loads("".join(pieces))
    except orjson.JSONDecodeError:
        return False
    return True


@dataclasses.dataclass
class PendingCall:
    """A tool call of a Chat Completions stream whose block or item is not open yet: its
    id, its `function.name` (see `add`), and its argument pieces so far.

    A call opens once its arguments begin (a name comes before them, whole by then) or
    when anything else is streamed (text, another call's block, the finish): a block's or
    item's name cannot change once it has been sent."""

    call_id: Any
    name: str = ""
    pieces: list[str] = dataclasses.field(default_factory=list)

    def add(self, function: dict[str, Any]) -> None:
        """Adds one `tool_calls[].function` delta (`name` and `arguments` pieces; either may
        be absent)."""
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(name, str) and name:
            # Most servers send a name once; some in pieces (joined), some whole again
            # in every delta or as the name so far (vLLM with some tool parsers, models
            # served through NVIDIA NIM): a piece that starts with the name so far
            # replaces it.
            self.name = name if name.startswith(self.name) else self.name + name
        if isinstance(arguments, str) and arguments:
            self.pieces.append(arguments)

    @property
    def begun(self) -> bool:
        """Whether its arguments have begun: a piece holds more than JSON whitespace."""
        return any(piece.strip(JSON_WHITESPACE) for piece in self.pieces)


def _prologue(chunk: dict[str, Any]) -> bool:
    """Whether `chunk` only precedes the message (Azure OpenAI's first chunk: an empty
    `id`, no choices, its `prompt_filter_results`): nothing to relay, and the message's
    id comes with the next chunk."""
    return not chunk.get("id") and not chunk.get("choices") and chunk.get("usage") is None


class ChatChunksToMessageEvents:
    """Turns OpenAI `chat.completion.chunk` dicts into Anthropic stream events (dicts
    with their `type`; the SSE event name is that type).

    `feed(chunk)` returns the events the chunk produces (the first call also returns
    `message_start`); `finish()` closes the stream with `message_delta` (stop reason and
    the upstream's token counts, input included: a Chat Completions stream reports usage
    only at its end, so `message_start` cannot carry them) and `message_stop`. Only the
    first choice is translated (Anthropic has no `n`)."""

    def __init__(
        self,
        model: str,
        tool_ids: AnthropicToolIds | None = None,
        *,
        thinking: bool = False,
        signature: str = TRANSLATED_THINKING_SIGNATURE,
    ) -> None:
        self.model = model
        # The request enabled thinking: reasoning text streams as a thinking block, signed
        # `signature` (`reasoning_signature` of the server's origin).
        self._thinking = thinking
        self._signature = signature
        # The field the server's reasoning came in (the first delta's).
        self._reasoning_field: str | None = None
        # The ids of the tool_use blocks (see `AnthropicToolIds`).
        self._tool_ids = tool_ids if tool_ids is not None else AnthropicToolIds()
        self.message_id: str | None = None
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._started = False
        self._finished = False
        self._next_index = 0
        # ("text", index), ("thinking", index) or ("tool", tool index)
        self._open: tuple[str, int] | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_call index -> block index
        self._arguments: list[str] = []  # the open tool call's arguments so far
        # A reply that is a refusal alone stops for `refusal`, as a whole reply does.
        self._content_seen = False
        self._refusal_seen = False
        # Calls not opened yet (see `PendingCall`), in the order they started: index ->
        # the call. Also those that started while the open call's arguments were not whole.
        self._held: dict[int, PendingCall] = {}
        # Per OpenAI tool_call index, whether its arguments are a JSON object, once their
        # first character has come (`_arguments_deltas`).
        self._object_arguments: dict[int, bool] = {}
        self._indexes = ToolCallIndexes()
        # Text and thinking pieces (kind, piece) that came while a call was unfinished
        # (`_calls_unfinished`): some servers send a whitespace `content` beside argument
        # pieces, and the call's block cannot be closed before its arguments are whole,
        # nor take deltas after its stop.
        self._text: list[tuple[str, str]] = []

    def _start(self, chunk: dict[str, Any] | None) -> list[dict[str, Any]]:
        self._started = True
        chunk_id = chunk.get("id") if chunk else None
        self.message_id = _recast_id(chunk_id, MESSAGE_ID_PREFIX, COMPLETION_ID_PREFIX)
        return [
            {
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }
        ]

    def _close_block(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        kind, key = self._open
        index = self._tool_blocks[key] if kind == "tool" else key
        self._open = None
        events: list[dict[str, Any]] = []
        if kind == "thinking":
            # As Anthropic ends a thinking block: its signature, then the stop.
            signed = signed_for(self._signature, self._reasoning_field or REASONING_FIELDS[0])
            signature = {"type": "signature_delta", "signature": signed}
            events.append({"type": "content_block_delta", "index": index, "delta": signature})
        events.append({"type": "content_block_stop", "index": index})
        return events

    def _open_block(self, block: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        events = self._close_block()
        index = self._next_index
        self._next_index += 1
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        return index, events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The Anthropic stream events (dicts with `type`) one OpenAI `chat.completion.chunk`
        dict produces, possibly none; `message_start` comes with the first. Nothing after
        `finish()`."""
        if self._finished:
            return []
        if not self._started and _prologue(chunk):
            return []
        events = [] if self._started else self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = messages_usage_from_chat(usage)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_of(delta) if self._thinking else None
            if reasoning is not None:
                self._reasoning_field = self._reasoning_field or reasoning[0]
                self._text.append(("thinking", reasoning[1]))
            text = delta.get("content") or delta.get("refusal")
            if delta.get("content"):
                self._content_seen = True
            elif text:
                self._refusal_seen = True
            if text:
                self._text.append(("text", text))
            events += self._write_text(force=False)
            for call in self._indexes.indexed(tool_calls_of(delta)):
                events += self._tool_delta(call)
            events += self._write_text(force=False)
            finish = choice.get("finish_reason")
            if finish:
                self.stop_reason = anthropic_stop_reason(finish)
                self.stop_sequence = _matched_stop_sequence(choice)
                if self.stop_sequence is not None and self.stop_reason == "end_turn":
                    self.stop_reason = "stop_sequence"
                events += self._release_held(until_incomplete=False)
                events += self._write_text(force=True)
                events += self._close_block()
        return events

    def _open_call_unfinished(self) -> bool:
        """Whether a call's block is open and more of its arguments can still come: they
        are not a whole JSON value yet, and are an object (nothing of other arguments is
        streamed, see `_arguments_deltas`)."""
        if self._open is None or self._open[0] != "tool":
            return False
        if self._object_arguments.get(self._open[1]) is False:
            return False
        return not self._whole_arguments()

    def _calls_unfinished(self) -> bool:
        """Whether the open call is unfinished (`_open_call_unfinished`), or a call's
        arguments have not begun: text and thinking wait until they are."""
        if self._open_call_unfinished():
            return True
        return any(not call.begun for call in self._held.values())

    def release(self) -> list[dict[str, Any]]:
        """The events held back (calls not opened yet, text waiting for a call's
        arguments), released as they are, the stream left open: for a stream the upstream
        ended early, so that what it sent reaches the client before the error."""
        if not self._started or self._finished:
            return []
        return self._release_held(until_incomplete=False) + self._write_text(force=True)

    def _write_text(self, *, force: bool) -> list[dict[str, Any]]:
        """The events of the text and thinking pieces gathered, after the calls held (see
        `_piece`); none while a call is unfinished unless `force` (the stream ends)."""
        if not self._text or not force and self._calls_unfinished():
            return []
        events: list[dict[str, Any]] = []
        for kind, piece in self._text:
            events += self._piece(kind, piece)
        self._text.clear()
        return events

    def _piece(self, kind: str, piece: str) -> list[dict[str, Any]]:
        """The events of a piece of text or thinking (`kind`): the calls held released, its
        block opened unless it is the open one, then its delta (`text_delta`,
        `thinking_delta`)."""
        events = self._release_held(until_incomplete=False)
        if self._open is None or self._open[0] != kind:
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            index, opened = self._open_block(block)
            events += opened
            self._open = (kind, index)
        delta = {"type": f"{kind}_delta", kind: piece}
        events.append({"type": "content_block_delta", "index": self._open[1], "delta": delta})
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one `tool_calls` delta. A call's block opens once its arguments
        begin (its name may come in pieces before them, see `PendingCall`) and streams
        live while it is the open one; a call that starts while the open call's arguments
        are not yet a whole JSON value (parallel calls interleaved, as OpenAI's format
        allows) is held until they are, or the stream ends: an Anthropic block gets all its
        deltas between its `content_block_start` and `content_block_stop`, and a block
        cannot be reopened."""
        key = call.get("index", 0)
        function = call.get("function") or {}
        if key not in self._tool_blocks:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = PendingCall(self._tool_ids.give(call.get("id")))
            held.add(function)
            return self._release_held(until_incomplete=True)
        events: list[dict[str, Any]] = []
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if self._open == ("tool", key):
                self._arguments.append(arguments)
                events += self._arguments_deltas(key, arguments)
            elif arguments.strip(JSON_WHITESPACE):
                # More than whitespace after a whole JSON value (a malformed call): it
                # still goes to the block it belongs to, closed as it is, since Anthropic
                # blocks cannot be reopened and dropping it would change the call.
                events += self._arguments_deltas(key, arguments)
            # Whitespace after a call's whole JSON value (servers send a trailing newline
            # as a piece of its own) means nothing in JSON: once its block is closed it is
            # dropped, so that no delta reaches a block after its `content_block_stop`.
        if self._held and not self._open_call_unfinished():
            events += self._release_held(until_incomplete=True)
        return events

    def _open_tool(self, key: int, call: PendingCall) -> list[dict[str, Any]]:
        block = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
        index, events = self._open_block(block)
        self._tool_blocks[key] = index
        self._open = ("tool", key)
        self._arguments = []
        return events

    def _arguments_deltas(self, key: int, arguments: str) -> list[dict[str, Any]]:
        """The `input_json_delta` of a piece of call `key`'s arguments, none for a call
        whose arguments are not a JSON object: Anthropic's `input` is one (the SDK would
        build a list or a string), and a reply's arguments that are not become `{}`, as
        the non-streamed translation gives (`_tool_input`). Whitespace before the first
        value is dropped too (JSON ignores it) until that is known."""
        is_object = self._object_arguments.get(key)
        if is_object is None:
            arguments = arguments.lstrip(JSON_WHITESPACE)
            if not arguments:
                return []
            is_object = self._object_arguments[key] = arguments.startswith("{")
        if not is_object:
            return []
        return [
            {
                "type": "content_block_delta",
                "index": self._tool_blocks[key],
                "delta": {"type": "input_json_delta", "partial_json": arguments},
            }
        ]

    def _whole_arguments(self) -> bool:
        return whole_json(self._arguments)

    def _release_held(self, *, until_incomplete: bool) -> list[dict[str, Any]]:
        """Opens the calls held in the order they started, each with the arguments held for
        it. With `until_incomplete`, only while the open call's arguments are whole (or no
        call is open) and the next call's arguments have begun: one whose arguments are
        not whole yet stays open and streams live from then on."""
        events: list[dict[str, Any]] = []
        while self._held:
            key = next(iter(self._held))
            call = self._held[key]
            if until_incomplete and (not call.begun or self._open_call_unfinished()):
                break
            del self._held[key]
            events += self._open_tool(key, call)
            arguments = "".join(call.pieces)
            if arguments:
                self._arguments.append(arguments)
                events += self._arguments_deltas(key, arguments)
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events that close the stream: the open block's `content_block_stop`,
        `message_delta` (stop reason, token counts) and `message_stop`; nothing if already
        finished."""
        if self._finished:
            return []
        events = [] if self._started else self._start(None)
        events += self._release_held(until_incomplete=False)
        events += self._write_text(force=True)
        events += self._close_block()
        self._finished = True
        if self._tool_blocks and self.stop_reason in (None, "end_turn"):
            self.stop_reason = "tool_use"  # Gemini's "stop": see chat_completion_to_message
        if self._refusal_seen and not self._content_seen:
            self.stop_reason = "refusal"
        usage = self.usage or {"input_tokens": 0, "output_tokens": 0}
        events.append(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": self.stop_reason or "end_turn",
                    "stop_sequence": self.stop_sequence,
                },
                "usage": usage,
            }
        )
        events.append({"type": "message_stop"})
        return events


class MessageEventsToChatChunks:
    """Turns Anthropic stream events (dicts) into OpenAI `chat.completion.chunk` dicts.

    The first chunk carries the assistant role; text deltas become `content`, tool-use
    blocks become `tool_calls` (id and name first, then argument pieces); thinking blocks
    are not part of a Chat Completions stream; `message_delta` gives the chunk with
    `finish_reason`; with `include_usage`, every chunk carries `usage: null` and
    `message_stop` gives the final usage chunk with empty `choices` (cache reads in
    `prompt_tokens_details`). `error` events are the
    caller's to handle."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self._tool_index_by_block: dict[int, int] = {}
        # Tool blocks whose arguments have not had a piece yet: Anthropic streams a call
        # without input as `input: {}` and an empty `partial_json` (or none), whose
        # arguments in OpenAI's shape are "{}", as the non-streamed translation gives.
        self._tool_without_arguments: set[int] = set()
        self._started = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            # "All other chunks will also include a usage field, but with a null value"
            # (Chat Completions' `stream_options.include_usage`).
            chunk["usage"] = None
        return chunk

    def _role_chunk(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _tool_call_chunk(self, call: dict[str, Any]) -> dict[str, Any]:
        """The chunk opening a tool call; the stream's first (a reply that starts with a
        tool call) carries the role and `content: null`, as OpenAI's do: an empty string
        there would open a text part that never comes."""
        if self._started:
            return self._chunk({"tool_calls": [call]})
        self._started = True
        return self._chunk({"role": "assistant", "content": None, "tool_calls": [call]})

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI `chat.completion.chunk` dicts one Anthropic stream event (a dict with
        `type`) produces, possibly none; the first carries the assistant role."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if isinstance(message.get("id"), str):
                self.id = _recast_id(message["id"], COMPLETION_ID_PREFIX, MESSAGE_ID_PREFIX)
            self.usage = dict(message.get("usage") or {})
            # The role comes with the first block: its content is "" before text and
            # null before a tool call, which only the block tells.
            return []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool_index = len(self._tool_index_by_block)
                self._tool_index_by_block[event.get("index", 0)] = tool_index
                arguments = _json_dumps(block["input"]) if block.get("input") else ""
                if not arguments:
                    self._tool_without_arguments.add(event.get("index", 0))
                call = {
                    "index": tool_index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
                return [self._tool_call_chunk(call)]
            if block.get("type") != "text":
                return []  # thinking, which a Chat Completions stream does not carry
            chunks = self._role_chunk()
            if block.get("text"):
                chunks.append(self._chunk({"content": block["text"]}))
            return chunks
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type not in ("text_delta", "input_json_delta"):
                return []  # thinking, signatures and citations: not in a Chat stream
            chunks = self._role_chunk()
            if delta_type == "text_delta" and delta.get("text"):
                chunks.append(self._chunk({"content": delta["text"]}))
            elif delta_type == "input_json_delta" and delta.get("partial_json"):
                known_index = self._tool_index_by_block.get(event.get("index", 0))
                self._tool_without_arguments.discard(event.get("index", 0))
                if known_index is not None:
                    chunks.append(
                        self._chunk(
                            {
                                "tool_calls": [
                                    {
                                        "index": known_index,
                                        "function": {"arguments": delta["partial_json"]},
                                    }
                                ]
                            }
                        )
                    )
            return chunks
        if kind == "content_block_stop" and event.get("index", 0) in self._tool_without_arguments:
            block_index = event.get("index", 0)
            self._tool_without_arguments.discard(block_index)
            return [
                *self._role_chunk(),
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": self._tool_index_by_block[block_index],
                                "function": {"arguments": "{}"},
                            }
                        ]
                    }
                ),
            ]
        if kind == "message_delta":
            usage = event.get("usage") or {}
            for name, value in usage.items():
                if value is not None:
                    self.usage[name] = value  # cumulative totals: overwrite
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason is None:
                return []
            self.finish_reason = openai_finish_reason(stop_reason)
            return [*self._role_chunk(), self._chunk({}, self.finish_reason)]
        if kind == "message_stop" and self.include_usage:
            return [
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": chat_usage_from_messages(self.usage),
                }
            ]
        return []  # ping, content_block_stop, thinking and citation deltas, unknown types


# =========================================================================== accumulators


class CompletionAccumulator:
    """Assembles OpenAI chunks into the `chat.completion` they stream (every choice,
    content, refusal, tool calls, finish reasons, usage)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None
        self.deltas = 0  # content and tool-argument pieces: a token estimate without usage
        self.chars = 0  # the characters they carried (and reasoning text's)
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        """Take the next OpenAI `chat.completion.chunk` dict: its id, model and usage, and each
        choice's content, refusal, tool-call pieces and finish reason."""
        # Each taken from the first chunk that has it: Azure's first chunk (its
        # `prompt_filter_results`) has an empty id, no model and `created` 0.
        if not self.id:
            self.id = chunk.get("id") or None
        if not self.created:
            self.created = chunk.get("created") or None
        if not self.model:
            self.model = chunk.get("model") or None
        if chunk.get("system_fingerprint"):
            self.system_fingerprint = chunk["system_fingerprint"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = {
                    "role": "assistant",
                    "content": [],
                    "refusal": [],
                    "tool_calls": {},
                    "finish_reason": None,
                }
            delta = choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
                self._count(delta["content"])
            if delta.get("refusal"):
                state["refusal"].append(delta["refusal"])
                self._count(delta["refusal"])
            for name in ("reasoning_content", "reasoning"):
                # Generated and billed as output, though not part of the reply.
                if isinstance(delta.get(name), str) and delta[name]:
                    self._count(delta[name])
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(state["tool_calls"], call)
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    def _add_tool_call(self, calls: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        state = calls.get(index)
        if state is None:
            state = calls[index] = {"id": None, "type": "function", "name": [], "arguments": []}
        if call.get("id"):
            state["id"] = call["id"]
        if call.get("type"):
            state["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            state["name"].append(function["name"])
        if function.get("arguments"):
            state["arguments"].append(function["arguments"])
            self._count(function["arguments"])

    def _count(self, piece: Any) -> None:
        """Count one content delta and its characters (`str` pieces only)."""
        self.deltas += 1
        self.chars += len(piece) if isinstance(piece, str) else 0

    def response(self, unfinished: str | None = "stop") -> dict[str, Any]:
        """The `chat.completion` streamed so far. A choice no chunk gave a finish reason
        has `unfinished`: "stop" for a stream that ended (a server may leave the reason
        out), None for one cut short (what a failure midway keeps: it did not stop)."""
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                "content": "".join(state["content"]) or None,
                "refusal": "".join(state["refusal"]) or None,
            }
            if state["tool_calls"]:
                message["tool_calls"] = [
                    {
                        "id": call["id"] or _new_id("call_"),
                        "type": call["type"],
                        "function": {
                            "name": "".join(call["name"]),
                            "arguments": "".join(call["arguments"]),
                        },
                    }
                    for _, call in sorted(state["tool_calls"].items())
                ]
            elif message["content"] is None and message["refusal"] is None:
                message["content"] = ""
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": state["finish_reason"] or unfinished,
                }
            )
        result: dict[str, Any] = {
            "id": self.id or _new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": self.created or int(time.time()),
            "model": self.model,
            "choices": choices,
        }
        if self.system_fingerprint:
            result["system_fingerprint"] = self.system_fingerprint
        if self.usage is not None:
            result["usage"] = self.usage
        return result


def joined_text(text: Any, more: Any) -> str:
    """`text` followed by `more`, either of them a string or missing (None or not a
    string: an upstream's null): the text a stream's deltas add up to."""
    return (text if isinstance(text, str) else "") + (more if isinstance(more, str) else "")


class MessageAccumulator:
    """Assembles Anthropic stream events into the `message` they stream: text, thinking
    (with its signature), tool use (input parsed from its JSON pieces), citations, stop
    reason and sequence, usage (`message_delta` counts are cumulative and overwrite).

    A block's text, thinking, signature and citations are kept as the pieces their deltas
    bring and joined only by `response`: adding each delta to the string so far copies
    the whole text every time, which for a stream of 200,000 deltas held the event loop
    for seconds."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.deltas = 0
        self.chars = 0  # the characters of generated text the deltas carried
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        # block index -> "text" | "thinking" | "signature" -> the pieces of that string
        self._pieces: dict[int, dict[str, list[str]]] = {}
        self._citations: dict[int, list[Any]] = {}

    def add(self, event: dict[str, Any]) -> None:
        """Take the next Anthropic stream event (a dict with `type`): the message of
        `message_start`, blocks and their deltas, and `message_delta`'s stop reason, usage
        and other members of the message."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            self.message = dict(message) if isinstance(message, dict) else {}
            self.message["usage"] = dict(self.message.get("usage") or {})
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict):
                index = event.get("index", len(self._blocks))
                self._blocks[index] = dict(block)
                # A block started again at an index replaces what was there, pieces too.
                self._pieces.pop(index, None)
                self._citations.pop(index, None)
                self._json.pop(index, None)
        elif kind == "content_block_delta":
            self._add_delta(event.get("index", 0), event.get("delta") or {})
        elif kind == "content_block_stop":
            index = event.get("index", 0)
            pieces = self._json.pop(index, None)
            block = self._blocks.get(index)
            if pieces is not None and block is not None:
                # Cut off by the token limit, it keeps what it holds whole, as the
                # anthropic SDK reads it.
                block["input"] = _tool_input("".join(pieces))
        elif kind == "message_delta" and self.message is not None:
            delta = event.get("delta") or {}
            for name, value in delta.items():
                self.message[name] = value
            # The message's other members the event brings (`context_management`,
            # `input_transformations`, what the API adds next), as the SDK keeps them.
            for name, value in event.items():
                if name not in ("type", "delta", "usage"):
                    self.message[name] = value
            for name, value in (event.get("usage") or {}).items():
                if value is not None:
                    self.message["usage"][name] = value

    def _add_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        self.deltas += 1
        self.chars += delta_chars(delta)
        # A member the upstream sent as null (`"citations": null` on a text block, as the
        # SDKs' own types allow) is as good as absent: never appended to as it is.
        if kind == "text_delta":
            self._piece(index, block, "text", delta.get("text"))
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(joined_text(None, delta.get("partial_json")))
        elif kind == "thinking_delta":
            self._piece(index, block, "thinking", delta.get("thinking"))
        elif kind == "signature_delta":
            self._piece(index, block, "signature", delta.get("signature"))
        elif kind == "citations_delta":
            citations = self._citations.get(index)
            if citations is None:
                before = block.get("citations")
                citations = list(before) if isinstance(before, list) else []
                self._citations[index] = citations
            citations.append(delta.get("citation"))

    def _piece(self, index: int, block: dict[str, Any], name: str, piece: Any) -> None:
        """Keep `piece` (a string, or an upstream's null) of `block`'s member `name`."""
        members = self._pieces.setdefault(index, {})
        pieces = members.get(name)
        if pieces is None:
            before = block.get(name)
            pieces = members[name] = [before] if isinstance(before, str) else []
        if isinstance(piece, str):
            pieces.append(piece)

    def _block(self, index: int) -> dict[str, Any]:
        """Block `index` as streamed so far, its pieces joined."""
        block = self._blocks[index]
        joined: dict[str, Any] = {
            name: "".join(pieces) for name, pieces in self._pieces.get(index, {}).items()
        }
        if index in self._citations:
            joined["citations"] = list(self._citations[index])
        return {**block, **joined} if joined else block

    def response(self) -> dict[str, Any]:
        """The `message` streamed so far."""
        message = dict(self.message or {"type": "message", "role": "assistant"})
        message["content"] = [self._block(index) for index in sorted(self._blocks)]
        message.setdefault("id", _new_id("msg_"))
        return message
