"""OpenAI's Responses API vocabulary shared by the services: response ids, the input items
a response is generated from, and the `response` object around its output.

- The gateway answers a background request at once with a `queued` response
  (`response_object`) and refuses requests whose `input` it cannot store;
- inference names every reply it shapes with `response_id` and echoes the request's
  parameters with `response_object`;
- history keeps each response's input items (`input_items`: the conversation it
  continued, then its own `input`, each with an id) and output items, so that
  `previous_response_id` works on every model, and answers `GET /v1/responses/{id}`.

A response id is `resp_` + the creation time (8 hexadecimal digits of Unix seconds) + the
request id. The request id finds the stored state; the creation time tells a response
purged by its tenant's retention from one that never existed. The format follows the
Responses API reference (https://platform.openai.com/docs/api-reference/responses); only
OpenAI's own ids are opaque, these are Switchyard's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from switchyard.common.events import TokenUsage

RESPONSE_ID_PREFIX = "resp_"
_TIME_DIGITS = 8

# Roles of message items the client writes (`assistant` messages are earlier output).
INPUT_ROLES = ("user", "system", "developer")
MESSAGE_ROLES = (*INPUT_ROLES, "assistant")


@dataclass(frozen=True)
class ResponseRef:
    """What a response id says: the request that produced it, and when it was created."""

    request_id: str
    created_at: datetime


def response_id(request_id: str, created_at: datetime) -> str:
    """The id of the response a request produces (`resp_<8 hex digits of Unix seconds>
    <request id>`)."""
    return f"{RESPONSE_ID_PREFIX}{int(created_at.timestamp()):0{_TIME_DIGITS}x}{request_id}"


def parse_response_id(value: str) -> ResponseRef | None:
    """The request and creation time of a response id made by `response_id`; None for
    anything else (another format, or no request id after the time)."""
    if not value.startswith(RESPONSE_ID_PREFIX):
        return None
    rest = value[len(RESPONSE_ID_PREFIX) :]
    stamp, request_id = rest[:_TIME_DIGITS], rest[_TIME_DIGITS:]
    if len(stamp) != _TIME_DIGITS or not request_id:
        return None
    try:
        seconds = int(stamp, 16)
    except ValueError:
        return None
    return ResponseRef(request_id, datetime.fromtimestamp(seconds, UTC))


# --------------------------------------------------------------------------- input items


def _item_id(kind: str, request_id: str, position: int) -> str:
    prefix = {
        "message": "msg",
        "function_call": "fc",
        "function_call_output": "fco",
        "reasoning": "rs",
    }.get(kind, "item")
    return f"{prefix}_{request_id}_{position}"


def _message_content(role: str, content: Any) -> Any:
    """A message's content as a list of parts (a string is one text part)."""
    if isinstance(content, str):
        if role == "assistant":
            return [{"type": "output_text", "text": content, "annotations": []}]
        return [{"type": "input_text", "text": content}]
    return content


def input_items(value: Any, request_id: str) -> list[dict[str, Any]]:
    """The items of a request's `input` as history stores and lists them: a string is one
    user message; a message without `type` gets `type: message`; string contents become
    one text part; every item without an `id` gets one derived from the request id and
    its position (the same on every replica). Items are otherwise kept as sent."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return []
    items: list[dict[str, Any]] = []
    for position, raw in enumerate(value):
        if not isinstance(raw, dict):
            continue
        item = dict(raw)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = item["type"] = "message"
        if kind == "message":
            role = item.get("role")
            role = role if isinstance(role, str) else ""
            item["content"] = _message_content(role, item.get("content"))
            item.setdefault("status", "completed")
        if not isinstance(item.get("id"), str) or not item["id"]:
            item["id"] = _item_id(str(kind), request_id, position)
        items.append(item)
    return items


# --------------------------------------------------------------------------- responses


# Items of the tools an OpenAI upstream runs itself that are not `*_call`s (OpenAI's
# Responses reference, the output item types).
_UPSTREAM_TOOL_ITEMS = frozenset({"mcp_list_tools", "mcp_approval_request"})
# The calls whose ids a client or Switchyard may give (the caller's own tools).
_CALLER_CALLS = frozenset({"function_call", "custom_tool_call"})


def upstream_named(kind: Any) -> bool:
    """Whether an output item of type `kind` carries an id only its upstream could give
    and its API requires when the item is sent back: a reasoning item, and the items of
    the tools an OpenAI upstream runs itself (`web_search_call`, `file_search_call`,
    `computer_call`, `code_interpreter_call`, `image_generation_call`, `mcp_call`,
    `mcp_list_tools`... any `*_call` but `function_call` and `custom_tool_call`)."""
    if not isinstance(kind, str):
        return False
    return (
        kind == "reasoning"
        or kind in _UPSTREAM_TOOL_ITEMS
        or (kind.endswith("_call") and kind not in _CALLER_CALLS)
    )


# The ids Switchyard gives Responses items: `<prefix>_<request id>_<position>` for an
# input item sent without one (`input_items`; request ids are 32 hex digits), and
# `<prefix>_<32 hex digits>` for an item of a reply it translated from another API.
_SWITCHYARD_ITEM_ID = re.compile(r"[a-z]+_[0-9a-f]{32}(?:_[0-9]+)?")


def switchyard_item_id(value: Any) -> bool:
    """Whether `value` is an item id Switchyard made (`_SWITCHYARD_ITEM_ID`), as opposed
    to one an upstream or the client gave (OpenAI's are longer: `fc_` and 50 hex
    digits)."""
    return isinstance(value, str) and _SWITCHYARD_ITEM_ID.fullmatch(value) is not None


# An item of a cached answer reused for another request is renamed `<its id>_<that
# request's id>` (the gateway's response cache, `cache._new_item_id`).
_REUSED_ITEM_ID = re.compile(r"(?P<original>.+)_[0-9a-f]{32}")


def upstream_item_id(value: Any) -> str | None:
    """The id an upstream may be sent for a stored item's id `value`: `value` itself when
    an upstream or the client gave it; for an item a cached answer reused
    (`<id>_<request id>`), the id it was first given, when that one is; None for an id
    Switchyard made (`switchyard_item_id`), or none at all."""
    if not isinstance(value, str) or not value or switchyard_item_id(value):
        return None
    reused = _REUSED_ITEM_ID.fullmatch(value)
    if reused is None:
        return value
    original = reused["original"]
    return None if switchyard_item_id(original) else original


def upstream_item(item: dict[str, Any]) -> dict[str, Any]:
    """A stored Responses item (of a previous response, or named by an `item_reference`)
    as an upstream Responses API gets it: without an id Switchyard made
    (`upstream_item_id`: the upstream would look it up in its own store and not find
    it), nor a message's `status`. An id the upstream gave stays (the first one, for an
    item a cached answer reused under another), first among its fields: OpenAI pairs a
    reasoning item with the item after it by their ids, and refuses the reasoning "without
    its required following item" when the function call or message after it comes back
    without its own. The items only an upstream makes (`upstream_named`: reasoning, its
    built-in tools' calls) are kept whole."""
    if upstream_named(item.get("type")):
        return item
    sent = {
        name: value
        for name, value in item.items()
        if name != "id" and not (name == "status" and item.get("type", "message") == "message")
    }
    item_id = upstream_item_id(item.get("id"))
    return sent if item_id is None else {"id": item_id, **sent}


# The Responses stream events carrying the whole `response` (OpenAI's Responses streaming
# reference: its lifecycle events).
LIFECYCLE_EVENTS = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)

# The `include` value asking for reasoning items' `encrypted_content` (OpenAI's Responses
# reference: "populated when a response is generated with reasoning.encrypted_content in
# the include parameter").
ENCRYPTED_REASONING = "reasoning.encrypted_content"

# The `include` values OpenAI's Responses API takes (its API reference, `include`; the
# `openai` SDK's `ResponseIncludable`, which a test compares this with), in a create
# request's array and a retrieve's query alike. Services without the SDK read them here.
RESPONSE_INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        ENCRYPTED_REASONING,
        "message.output_text.logprobs",
    }
)


def unknown_includable(include: str) -> str | None:
    """The first value of `include`, a query parameter's comma-separated values, that is
    not in `RESPONSE_INCLUDABLE`; None when all are known (an empty value asks for
    nothing, as an empty array does)."""
    for value in include.split(","):
        if value.strip() and value.strip() not in RESPONSE_INCLUDABLE:
            return value
    return None


def includes_encrypted_reasoning(include: Any) -> bool:
    """Whether `include` (a request body's array, or a query parameter's comma-separated
    values) asks for reasoning items' `encrypted_content`."""
    if isinstance(include, str):
        return ENCRYPTED_REASONING in (value.strip() for value in include.split(","))
    return isinstance(include, list) and ENCRYPTED_REASONING in include


def item_without_encrypted_reasoning(item: Any) -> Any:
    """A Responses item without `encrypted_content` if it is a reasoning item holding one
    (a shallow copy); `item` itself otherwise."""
    if isinstance(item, dict) and item.get("type") == "reasoning" and "encrypted_content" in item:
        return {name: value for name, value in item.items() if name != "encrypted_content"}
    return item


def without_encrypted_reasoning(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a `response` object, or a Responses stream event's data: its `item` or its
    `response`) with its reasoning items' `encrypted_content` left out, as OpenAI shows
    them to a request that did not include `reasoning.encrypted_content`. Returns `data`
    itself when it holds none, a shallow copy otherwise (`data` is never changed)."""
    changed: dict[str, Any] | None = None
    item = data.get("item")
    if isinstance(item, dict):
        stripped = item_without_encrypted_reasoning(item)
        if stripped is not item:
            changed = {"item": stripped}
    output = data.get("output")
    if isinstance(output, list):
        items = [item_without_encrypted_reasoning(entry) for entry in output]
        if any(new is not old for new, old in zip(items, output, strict=True)):
            changed = {**(changed or {}), "output": items}
    response = data.get("response")
    if isinstance(response, dict):
        shown = without_encrypted_reasoning(response)
        if shown is not response:
            changed = {**(changed or {}), "response": shown}
    return {**data, **changed} if changed else data


def usage_object(usage: TokenUsage) -> dict[str, Any]:
    """A Responses `usage` object from Switchyard's TokenUsage (input counts cached
    tokens too; `cached_tokens` and `cache_write_tokens` say how many; reasoning is a
    part of output)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _reasoning(body: dict[str, Any]) -> dict[str, Any]:
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        return {"effort": None, "summary": None}
    return {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}


def _text(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    text = dict(text) if isinstance(text, dict) else {}
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    return text


def response_object(
    body: dict[str, Any],
    *,
    id: str,
    created_at: datetime,
    model: str,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    completed_at: datetime | None = None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """A Responses `response` object for request `body`: the request's parameters as the
    Responses API echoes them (defaults where the request left them out), with the given
    status, output, usage and error. `service_tier`: the tier the upstream says served the
    request, which the response reports instead of the one asked for ("This response value
    may be different from the value set in the parameter", OpenAI's `Response.service_tier`)."""
    metadata = body.get("metadata")
    return {
        "id": id,
        "object": "response",
        "created_at": int(created_at.timestamp()),
        "status": status,
        "background": body.get("background") is True,
        "completed_at": int(completed_at.timestamp()) if completed_at else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output if output is not None else [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": _reasoning(body),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": service_tier or body.get("service_tier") or "default",
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": _text(body),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def error_object(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """The `error` ({"code", "message"}) of a failed response, from the failure's HTTP
    `status`, `message` and `code`. OpenAI's Responses API names few codes there
    (`ResponseError.code`: `server_error`, `rate_limit_exceeded`, `invalid_prompt` and
    image-specific ones): a 429 is `rate_limit_exceeded`, any 5xx `server_error`, a
    refused request (4xx) keeps its own code, or is `invalid_prompt` without one (an
    upstream's 400 `invalid_request_error` carries no code)."""
    if status == 429:
        code = "rate_limit_exceeded"
    elif status >= 500:
        code = "server_error"
    elif code is None:
        code = "invalid_prompt"
    return {"code": code, "message": message}
