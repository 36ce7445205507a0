"""Reading model request bodies on the hot path: one orjson parse, then a look at only the
fields the gateway itself needs, and the parsed dict travels on exactly as the client sent
it (never validated into a model, never re-serialised, never translated).

What the gateway checks, per API, is what it reads or what the API cannot do without:
a JSON object, `model` (a string, to route), `stream` (a boolean, to answer), and the
presence and type of the top-level fields the API requires (`messages` as a non-empty
array; `max_tokens` as an integer on Anthropic's Messages, but not on its count_tokens;
`input` on Embeddings; OpenAI's `metadata` limits). On OpenAI's Responses API Switchyard
itself keeps the conversation state, so the gateway checks what it stores: `input` (a
string, or items whose shape it can store and continue), `previous_response_id` (never
with `conversation`), `store` and `background`, naming the field at fault in OpenAI's
notation (`input[2].call_id`).
Everything else (content blocks, roles, a `system` message inside `messages`, unknown
or brand-new parameters) is left to inference and the provider to judge, so a client
gets what the provider itself would answer. A refusal is a 400 in the called API's
error format naming the field, with OpenAI's error codes (`missing_required_parameter`,
`invalid_type`, `empty_array`, `mutually_exclusive_parameters`); a body nesting deeper than
`switchyard.common.jsonbody.MAX_JSON_DEPTH` is refused too (`json_too_deep`).

The pydantic models in `schemas.py` only document the request bodies in Swagger
(`openapi_body`, `install_openapi_models`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from switchyard.common import jsonbody
from switchyard.common.errors import APIError, invalid_json, json_type, unsupported_value
from switchyard.common.events import ClientAPI
from switchyard.common.exactjson import has_long_digit_run
from switchyard.common.jsonbody import (
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    JsonTooDeep,
    JsonTooManyValues,
    check_value_count,
    scan_json,
)
from switchyard.common.offloop import off_loop

# Longest model name accepted (history stores it in a column of this size).
MAX_MODEL_LENGTH = 256


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A model request as the client sent it, with what the gateway reads from it (and,
    for a Responses request continuing another, the items of that conversation)."""

    api: ClientAPI
    body: dict[str, Any]
    model: str
    stream: bool
    previous_items: list[dict[str, Any]] | None = None

    @property
    def admission_body(self) -> dict[str, Any]:
        """The body whose size budgets and rate limits reserve for: the body as sent, with
        the items of the conversation a Responses request continues ahead of its `input`
        (they reach the model too, so they count as prompt tokens)."""
        if not self.previous_items:
            return self.body
        current = self.body.get("input")
        if isinstance(current, str):
            current = [{"role": "user", "content": current}]
        return {**self.body, "input": [*self.previous_items, *(current or [])]}


_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson (and so every event) carries exactly


# Read in place of a number no 64-bit integer or float holds (`_out_of_range_number`).
_TOO_LONG_INTEGER = object()
_INFINITE_FLOAT = object()


def _out_of_range_number(raw: bytes) -> tuple[str, bool] | None:
    """Where the first number in JSON `raw` that 64 bits cannot hold is (OpenAI's
    notation, `messages[0].content`), and whether it is an integer (else a float beyond a
    double's range, such as `1e999`); None when there is none, or when `raw` is not JSON
    at all. Reads `raw` exactly (Python's `json`, never converting an integer literal
    longer than 20 digits, which Python refuses beyond 4,300), and walks it for the path
    only when it holds such a number."""
    found = False

    def integer(literal: str) -> Any:
        nonlocal found
        if len(literal.lstrip("-")) > 20:
            found = True
            return _TOO_LONG_INTEGER
        value = int(literal)
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            found = True
        return value

    def number(literal: str) -> Any:
        nonlocal found
        value = float(literal)
        if math.isinf(value):
            found = True
            return _INFINITE_FLOAT
        return value

    try:
        value = json.loads(raw, parse_int=integer, parse_float=number)
    except (ValueError, RecursionError):
        return None
    if not found:
        return None
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            stack.extend(
                (child, f"{path}.{key}" if path else str(key)) for key, child in item.items()
            )
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
        elif item is _TOO_LONG_INTEGER or (
            isinstance(item, int) and not _INT_RANGE[0] <= item <= _INT_RANGE[1]
        ):
            return path, True
        elif item is _INFINITE_FLOAT:
            return path, False
    return None


class NumberOutOfRange(APIError):
    """400 `invalid_value`: the body holds a number 64 bits cannot hold, at `path`
    (OpenAI's notation, `messages[1].content[0].input.n`); `what` names its kind
    ("integers beyond 64 bits")."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(
            400,
            f"Invalid value for '{path}': {what} are not supported.",
            param=path or None,
            code="invalid_value",
        )
        self.path = path
        self.what = what

    def in_anthropics_words(self) -> APIError:
        """The same refusal as Anthropic's API words one: the field's path first, dotted
        (`messages.1.content.0.input.n: integers beyond 64 bits are not supported`)."""
        dotted = re.sub(r"\[(\d+)\]", r".\1", self.path)
        return APIError(
            400,
            f"{dotted}: {self.what} are not supported"
            if dotted
            else f"{self.what} are not supported",
            param=dotted or None,
            code=self.code,
        )


def _number_out_of_range(raw: bytes) -> NumberOutOfRange | None:
    """The 400 naming the first number in `raw` that 64 bits cannot hold, if any."""
    found = _out_of_range_number(raw)
    if found is None:
        return None
    path, integer = found
    what = "integers beyond 64 bits" if integer else "numbers beyond a 64-bit float's range"
    return NumberOutOfRange(path, what)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`; APIError 400 if it is not valid JSON or not an object,
    holds more than `MAX_JSON_VALUES` values (judged before parsing, `check_value_count`),
    nests deeper than `MAX_JSON_DEPTH`, or holds an integer beyond 64 bits (orjson would
    read it as a float, changing its digits; such a body is refused rather than sent on
    altered). Blocking, and a few milliseconds a megabyte: `parse_json_object_off_loop`
    keeps a large body off the event loop."""
    try:
        check_value_count(raw)
    except JsonTooManyValues as exc:
        raise APIError(400, str(exc), code="json_too_many_values") from None
    try:
        data = jsonbody.parse(raw)
    except JsonTooDeep as exc:
        raise APIError(400, str(exc), code="json_too_deep") from None
    except orjson.JSONDecodeError as exc:
        # Valid JSON all the same when orjson only refuses a number beyond a double (its
        # message says so): that number is named, as an integer beyond 64 bits is.
        out_of_range = _number_out_of_range(raw) if "number is infinity" in str(exc) else None
        if out_of_range is not None:
            raise out_of_range from None
        raise invalid_json(exc) from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    too_deep, huge_float, too_many = scan_json(data, max_values=MAX_JSON_VALUES)
    if too_deep:
        raise APIError(400, str(JsonTooDeep(MAX_JSON_DEPTH)), code="json_too_deep")
    if too_many:
        raise APIError(400, str(JsonTooManyValues(MAX_JSON_VALUES)), code="json_too_many_values")
    # Rare: only a float beyond 64-bit integers and a run of 19 digits can be an integer
    # orjson read inexactly; only then is the body read a second time, exactly.
    if huge_float and has_long_digit_run(raw):
        out_of_range = _number_out_of_range(raw)
        if out_of_range is not None:
            raise out_of_range
    return data


async def parse_json_object_off_loop(raw: bytes) -> dict[str, Any]:
    """`parse_json_object(raw)`, in a worker thread when `raw` is large (`off_loop`)."""
    return await off_loop(parse_json_object, raw)


def _missing(param: str) -> APIError:
    return APIError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def invalid_type(param: str, expected: str, value: Any) -> APIError:
    """The 400 `invalid_type` for `param` holding `value` where `expected` (e.g. "a
    string") belongs, in OpenAI's wording."""
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if not 0 < len(model) <= MAX_MODEL_LENGTH:
        raise APIError(
            400,
            f"Invalid 'model': must be 1 to {MAX_MODEL_LENGTH} characters long.",
            param="model",
            code="invalid_value",
        )
    return model


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise invalid_type("stream", "a boolean", stream)
    return stream


def _messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise APIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            param="messages",
            code="empty_array",
        )


def _stream_options(body: dict[str, Any], flag: str, *, streamed_only: bool) -> None:
    """Check `stream_options`, which inference rewrites or drops when it translates a
    request or records a stream's usage (so the provider never judges what the client
    sent): an object whose `flag` is a boolean; with `streamed_only` (Chat Completions)
    only on a streamed request, as OpenAI's API answers otherwise
    (https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options).
    APIError 400 in OpenAI's words."""
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
    value = options.get(flag)
    if value is not None and not isinstance(value, bool):
        raise invalid_type(f"stream_options.{flag}", "a boolean", value)
    if streamed_only and not _stream(body):
        raise APIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def read_chat_completions(body: dict[str, Any]) -> ClientRequest:
    """An OpenAI Chat Completions request body; `stream_options` as `_stream_options`
    checks it, `metadata` within OpenAI's limits (`_metadata`: a deployment speaking
    another API does not carry it, so the gateway judges it for every deployment alike)."""
    model = _model(body)
    _messages(body)
    stream = _stream(body)
    _stream_options(body, "include_usage", streamed_only=True)
    _metadata(body)
    return ClientRequest(ClientAPI.OPENAI_CHAT_COMPLETIONS, body, model, stream)


# OpenAI's words for a JSON type -> Anthropic's (its errors are pydantic's:
# "max_tokens: Input should be a valid integer").
_ANTHROPIC_TYPE_WORDS = {
    "an array": "list",
    "an integer": "integer",
    "a string": "string",
    "a boolean": "boolean",
    "an object": "dictionary",
}


def _in_anthropics_words(exc: APIError, expected: str | None = None) -> APIError:
    """`exc` (a refusal of `read_*`) worded as Anthropic's API words it: the field's path
    first (`max_tokens: Field required`); `expected` is the OpenAI phrase of the type a
    type refusal wanted. Param and code are kept."""
    if exc.code == "missing_required_parameter":
        message = f"{exc.param}: Field required"
    elif exc.code == "invalid_type" and expected is not None:
        message = f"{exc.param}: Input should be a valid {_ANTHROPIC_TYPE_WORDS[expected]}"
    elif exc.code == "empty_array":
        message = f"{exc.param}: at least one message is required"
    else:
        return exc
    return APIError(exc.status, message, param=exc.param, code=exc.code)


def _anthropic_checks(body: dict[str, Any], *, max_tokens: bool) -> tuple[str, bool]:
    """The model and `stream` of an Anthropic request body, after the checks the gateway
    makes (`max_tokens` an integer on Messages); APIError 400 in Anthropic's words."""
    expected = {"model": "a string", "messages": "an array", "max_tokens": "an integer"}
    try:
        model = _model(body)
        _messages(body)
        if max_tokens:
            value = body.get("max_tokens")
            if value is None:
                raise _missing("max_tokens")
            if not isinstance(value, int) or isinstance(value, bool):
                raise invalid_type("max_tokens", "an integer", value)
        return model, _stream(body) if max_tokens else False
    except APIError as exc:
        expected["stream"] = "a boolean"
        raise _in_anthropics_words(exc, expected.get(exc.param or "")) from None


def read_messages(body: dict[str, Any]) -> ClientRequest:
    """An Anthropic Messages request body."""
    model, stream = _anthropic_checks(body, max_tokens=True)
    return ClientRequest(ClientAPI.ANTHROPIC_MESSAGES, body, model, stream)


# Parameters of Anthropic's Messages that its count_tokens does not take (the `anthropic`
# SDK's `messages.create` parameters missing from `messages.count_tokens`, and the
# sampling ones; https://docs.anthropic.com/en/api/messages-count-tokens). Anthropic's
# API refuses them ("Extra inputs are not permitted"); an estimate would ignore them, so
# the gateway refuses them for every deployment alike.
_NOT_TOKEN_COUNTED = (
    "container",
    "diagnostics",
    "inference_geo",
    "max_tokens",
    "metadata",
    "service_tier",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
)


def read_count_tokens(body: dict[str, Any]) -> ClientRequest:
    """An Anthropic count_tokens request body (a Messages body without `max_tokens`;
    never streamed). A Messages parameter count_tokens does not take
    (`_NOT_TOKEN_COUNTED`) is a 400 in Anthropic's words naming it."""
    model, _ = _anthropic_checks(body, max_tokens=False)
    for name in _NOT_TOKEN_COUNTED:
        if name in body:
            raise APIError(
                400,
                f"{name}: Extra inputs are not permitted",
                param=name,
                code="unknown_parameter",
            )
    return ClientRequest(ClientAPI.ANTHROPIC_COUNT_TOKENS, body, model, False)


def read_embeddings(body: dict[str, Any]) -> ClientRequest:
    """An OpenAI Embeddings request body (never streamed)."""
    model = _model(body)
    value = body.get("input")
    if value is None:
        raise _missing("input")
    if not isinstance(value, str | list):
        raise invalid_type("input", "a string or an array", value)
    return ClientRequest(ClientAPI.OPENAI_EMBEDDINGS, body, model, False)


READERS = {
    ClientAPI.OPENAI_CHAT_COMPLETIONS: read_chat_completions,
    ClientAPI.ANTHROPIC_MESSAGES: read_messages,
    ClientAPI.OPENAI_EMBEDDINGS: read_embeddings,
    ClientAPI.ANTHROPIC_COUNT_TOKENS: read_count_tokens,
}

# Responses API input items whose fields the gateway checks (others are the provider's).
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_ITEM_STRINGS = {
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id",),
    # Resolved by the gateway from stored responses before publishing (api/responses.py).
    "item_reference": ("id",),
}


# Content parts one side of a conversation has that OpenAI's Responses API refuses on the
# other: a user, system or developer message and a function call's output hold input
# parts, an assistant message output parts. Refused for every deployment alike (a
# translating one would otherwise take them), in OpenAI's words: "Invalid value:
# 'input_text'. Supported values are: 'output_text' and 'refusal'." naming the part.
# Chat Completions' own part types (`text`, `image_url`, `file`), which a client moving
# to the Responses API may keep, are refused on both sides alike, as OpenAI refuses them
# (a translating deployment would otherwise take `text` as text). Types unknown here
# pass, for the provider to judge.
_OUTPUT_PARTS = ("output_text", "refusal")
_INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio")
_CHAT_COMPLETIONS_PARTS = ("text", "image_url", "file")
_SUPPORTED_PARTS = {"input": ("input_text", "input_image", "input_file"), "output": _OUTPUT_PARTS}
# The `status` an input item may carry (the Responses API reference: messages, function
# calls and their outputs, reasoning items).
_ITEM_STATUSES = ("in_progress", "completed", "incomplete")
_ITEMS_WITH_STATUS = ("message", "function_call", "function_call_output", "reasoning")


def _content_parts(parts: list[Any], where: str, side: str) -> None:
    """Check a message's content or a call output's parts (`where`: `input[0].content`):
    objects with a string `type`, none of the other `side`'s (`input` or `output`).
    Raises APIError 400 naming the part."""
    refused = (_OUTPUT_PARTS if side == "input" else _INPUT_PARTS) + _CHAT_COMPLETIONS_PARTS
    for position, part in enumerate(parts):
        part_where = f"{where}[{position}]"
        if not isinstance(part, dict):
            raise invalid_type(part_where, "an object", part)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise _missing(f"{part_where}.type")
        if kind in refused:
            raise APIError(
                400,
                unsupported_value(kind, _SUPPORTED_PARTS[side]),
                param=part_where,
                code="invalid_value",
            )


def _invalid_value(param: str, message: str) -> APIError:
    return APIError(
        400, f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


def _response_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    kind = item.get("type")
    if kind is None:
        if "role" not in item:
            raise _missing(f"{where}.type")
        kind = "message"
    elif not isinstance(kind, str):
        raise invalid_type(f"{where}.type", "a string", kind)
    if kind == "message":
        role = item.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in _MESSAGE_ROLES:
            raise _invalid_value(f"{where}.role", f"must be one of {', '.join(_MESSAGE_ROLES)}.")
        content = item.get("content")
        if content is None:
            raise _missing(f"{where}.content")
        if not isinstance(content, str | list):
            raise invalid_type(f"{where}.content", "a string or an array", content)
        if isinstance(content, list):
            side = "output" if role == "assistant" else "input"
            _content_parts(content, f"{where}.content", side)
    if kind in _ITEMS_WITH_STATUS and item.get("status") is not None:
        status = item["status"]
        if not isinstance(status, str):
            raise invalid_type(f"{where}.status", "a string", status)
        if status not in _ITEM_STATUSES:
            raise APIError(
                400,
                unsupported_value(status, _ITEM_STATUSES),
                param=f"{where}.status",
                code="invalid_value",
            )
    for name in _ITEM_STRINGS.get(kind, ()):
        value = item.get(name)
        if value is None:
            raise _missing(f"{where}.{name}")
        if not isinstance(value, str):
            raise invalid_type(f"{where}.{name}", "a string", value)
    if kind == "function_call_output":
        output = item.get("output")
        if output is None:
            raise _missing(f"{where}.output")
        if not isinstance(output, str | list):
            raise invalid_type(f"{where}.output", "a string or an array", output)
        if isinstance(output, list):
            _content_parts(output, f"{where}.output", "input")


def _boolean(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid_type(name, "a boolean", value)
    return value


# OpenAI's limits on `metadata` (the Responses API reference: at most 16 pairs, keys of at
# most 64 characters, string values of at most 512).
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512


def _metadata(body: dict[str, Any]) -> None:
    """Check an OpenAI request's `metadata` (Responses, which Switchyard keeps and echoes
    itself on every deployment, and Chat Completions): an object of at most 16 string
    values, in OpenAI's words."""
    value = body.get("metadata")
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_type("metadata", "an object", value)
    if len(value) > MAX_METADATA_PAIRS:
        raise APIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(value)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise APIError(
                400,
                f"Invalid 'metadata': key too long. Expected a key with maximum length "
                f"{MAX_METADATA_KEY_LENGTH}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise invalid_type(f"metadata.{key}", "a string", item)
        if len(item) > MAX_METADATA_VALUE_LENGTH:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {MAX_METADATA_VALUE_LENGTH}, but got a string with length "
                f"{len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )


def read_responses(body: dict[str, Any]) -> ClientRequest:
    """An OpenAI Responses request body: `input` a string or an array of items whose
    shape Switchyard can store and continue (messages with a role and content, function
    calls and their outputs with their `call_id`...; item references are refused),
    `previous_response_id` a string, `store` and `background` booleans, `metadata` within
    OpenAI's limits (`_metadata`: Switchyard keeps and echoes it), a background response
    stored and not streamed (as OpenAI requires)."""
    model = _model(body)
    stream = _stream(body)
    _stream_options(body, "include_obfuscation", streamed_only=False)
    value = body.get("input")
    if value is not None:
        if not isinstance(value, str | list):
            raise invalid_type("input", "a string or an array", value)
        if isinstance(value, list):
            for index, item in enumerate(value):
                _response_item(item, f"input[{index}]")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise invalid_type("previous_response_id", "a string", previous)
    if previous is not None and body.get("conversation") is not None:
        # The gateway resolves `previous_response_id` itself, so the provider never sees
        # the pair OpenAI's API refuses; refused here in its words.
        raise APIError(
            400,
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            code="mutually_exclusive_parameters",
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str | list):
        raise invalid_type("instructions", "a string or an array", instructions)
    _metadata(body)
    store = _boolean(body, "store")
    if _boolean(body, "background"):
        if store is False:
            raise _invalid_value(
                "background", "a background response must be stored; remove 'store: false'."
            )
        if stream:
            raise _invalid_value(
                "background",
                "background responses are not streamed here; poll GET /v1/responses/{id} "
                "instead, or remove 'stream'.",
            )
    return ClientRequest(ClientAPI.OPENAI_RESPONSES, body, model, stream)


# Parameters of `POST /v1/responses` that its input token count does not take (the
# `openai` SDK's `responses.create` parameters missing from `responses.input_tokens.count`;
# https://platform.openai.com/docs/api-reference/responses/input-tokens). OpenAI's API
# refuses them; a deployment translating the request would ignore them, so the gateway
# refuses them for every deployment alike. Parameters unknown here still pass through.
_NOT_COUNTED = (
    "access_programs",
    "background",
    "context_management",
    "image",
    "include",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "moderation",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "top_logprobs",
    "top_p",
    "user",
)


def read_responses_input_tokens(body: dict[str, Any]) -> ClientRequest:
    """An OpenAI Responses input token count body: a Responses body, checked as
    `read_responses` checks one, without the parameters a count does not take
    (`_NOT_COUNTED`: 400 `unknown_parameter` naming it, as OpenAI's API answers an unknown
    parameter); never streamed."""
    for name in _NOT_COUNTED:
        if name in body:
            raise APIError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    checked = read_responses(body)
    return ClientRequest(ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS, body, checked.model, False)


def read_request(api: ClientAPI, raw: bytes) -> ClientRequest:
    """The request in `raw` (the HTTP body) for `api`; APIError 400 naming the field at
    fault if the gateway cannot route or answer it. Blocking: `read_request_off_loop`
    keeps a large body's parsing and checks off the event loop."""
    try:
        body = parse_json_object(raw)
    except NumberOutOfRange as exc:
        if api.vendor == "anthropic":
            raise exc.in_anthropics_words() from None
        raise
    if api is ClientAPI.OPENAI_RESPONSES:
        return read_responses(body)
    if api is ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS:
        return read_responses_input_tokens(body)
    return READERS[api](body)


async def read_request_off_loop(api: ClientAPI, raw: bytes) -> ClientRequest:
    """`read_request(api, raw)`, in a worker thread when `raw` is large (`off_loop`), so
    that one large body's parsing and checks do not hold up every other request."""
    return await off_loop(functools.partial(read_request, api), raw)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model` (see `install_openapi_models`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def install_openapi_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add models referenced by `openapi_body` to the app's OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
