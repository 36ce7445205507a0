"""The provider simulator: a local, deterministic stand-in for OpenAI and Anthropic that
speaks their wire protocols exactly as the official SDKs expect, so every part of
Switchyard can be developed, tested and benchmarked without credentials or cost.

Replies are `"Simulated reply to: " + <last user message>` (plus `" (with N images)"` when
that turn holds images, tool results included); token counts are word counts (a simulated
token is a word and the whitespace after it). What the
real APIs do that Switchyard must carry faithfully is simulated too:
- stop sequences: a reply containing one stops before it (Anthropic reports
  `stop_reason: "stop_sequence"` and the `stop_sequence`; OpenAI `finish_reason: "stop"`);
- prompt caching: Anthropic caches the prompt up to its last `cache_control` marker (the
  first request writes it, `cache_creation_input_tokens`; later ones read it,
  `cache_read_input_tokens`); OpenAI caches every prompt but its last message
  (`prompt_tokens_details.cached_tokens` from the second request on);
- extended thinking: with Anthropic's `thinking` enabled, the reply opens with a
  thinking block carrying a `signature` (streamed as `thinking_delta` and
  `signature_delta`), and a thinking block sent back without its signature is refused as
  the real API does; OpenAI's `reasoning_effort` adds reasoning tokens to the usage;
- system messages inside `messages` (where Anthropic's placement rules allow them:
  right after a user message, and last or followed by an assistant message), system as
  blocks, documents (base64, text, URL sources) and images inside tool results are
  accepted;
- structured outputs: a `json_schema` format (Chat's `response_format`, what
  `chat.completions.parse` sends; Responses' `text.format`, what `responses.parse` sends;
  Anthropic's `output_config.format`, what `messages.parse` sends) makes the reply a
  deterministic JSON instance of the schema (every property, strings the user's words fitted
  to `format`/`minLength`/`maxLength`, numbers 0 or their `minimum`, `enum`/`const` first
  value, arrays of `minItems` items but at least one, first `anyOf`/`oneOf` branch, `$ref`
  to `$defs`/`definitions`); `json_object` makes it `{"text": <user's words>}` (refused,
  as OpenAI refuses it, when the prompt does not say "json"). A schema
  is refused as each real API refuses it: by Anthropic when an object schema lacks
  `additionalProperties: false`, by OpenAI in strict mode (`strict: true`) when an object
  is not closed that way or leaves a property out of `required`;
- output token limits: `max_tokens`/`max_completion_tokens` (Chat), `max_output_tokens`
  (Responses) and `max_tokens` (Messages) cut a longer text reply to that many simulated
  tokens, reasoning and thinking tokens counted, and report it as the APIs do
  (`finish_reason: "length"`; `status: "incomplete"` with `incomplete_details.reason:
  "max_output_tokens"`; `stop_reason: "max_tokens"`); tool calls are never cut;
- Chat's `n` returns that many (identical) choices, streamed one after the other, the usage
  counting every choice's tokens; `logprobs` (with `top_logprobs`, 0-20) gives each choice a
  `logprobs.content` entry per simulated token (a deterministic logprob between -0.1 and 0,
  its `bytes`, then the token and fixed alternatives as `top_logprobs`), streamed with the
  text it belongs to;
- embeddings take strings, token ids or arrays of token ids and honour `dimensions`
  (default 8) and `encoding_format` (`float` or `base64`);
- OpenAI's Responses API (`/v1/responses`): a string or item list `input`, `instructions`,
  function tools (the weather question calls the first one; a `function_call_output`
  last in the input is answered with its output), reasoning items and summaries, and the
  complete typed event stream with `sequence_number`; with `include:
  ["message.output_text.logprobs"]`, the text's log probabilities (`top_logprobs`
  alternatives each, as in Chat) in its `output_text` part and text events. It keeps no
  state: a `previous_response_id` is refused as OpenAI refuses an id it does not know, so
  a test sees whether a caller relied on the upstream's store.
Every route judges the types and ranges of its documented parameters as the real API does
(`temperature`, `top_p`, `n`, `max_tokens`, `stop`, `thinking.budget_tokens`...; the table is
`switchyard.simulator.parameters`) and refuses a broken one with that API's 400: OpenAI's
names the `param` and its `code`, Anthropic's names the field in its message. It refuses
the same way a field Anthropic does not know, base64 image data that does not decode, an
output limit above the model's and an argument the Embeddings API does not take.
A control API under `/_sim/` injects faults (error statuses, Retry-After, hangs, failures
in the middle of a stream with a chosen error type), changes latency at run time and
reports how many upstream calls were made and how many streams their client abandoned.

Built on bare Starlette and orjson: the simulator must never be the bottleneck of a
benchmark, so request bodies are read as plain dicts, never as pydantic models; only their
parameters go through validators built once per route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from switchyard.common import errorformat
from switchyard.common.anthropic_request import (
    AnthropicRequestError,
    check_system_message_placement,
)
from switchyard.common.errors import APIError
from switchyard.common.http import ClientDisconnectGuard
from switchyard.common.output_schema import (
    JSON_MODE_CHAT_MESSAGE,
    JSON_MODE_RESPONSES_MESSAGE,
    mentions_json,
    open_object,
    strict_violation,
)
from switchyard.common.responses import response_object
from switchyard.simulator import parameters
from switchyard.simulator.parameters import BadRequest

REPLY_PREFIX = "Simulated reply to: "
DEFAULT_EMBEDDING_DIMENSIONS = 8
STREAM_PIECES = 4
# Longer than any client timeout, so a "hang" is seen as a timeout, never as an answer.
HANG_SECONDS = 3600.0
SIMULATED_MODELS = ("sim-small", "sim-large")

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


# --------------------------------------------------------------------------- state


@dataclass
class Fault:
    """One injected fault, served to the next matching request and then dropped.

    `status` is the HTTP error status answered (400-599); `retry_after` the Retry-After header
    in seconds (None: no header); `hang` holds the request open until faults are cleared or the
    client gives up; `model` restricts the fault to requests for that model (None: any);
    `should_retry` the `x-should-retry` header (None: no header)."""

    status: int = 500
    retry_after: float | None = None
    should_retry: bool | None = None
    hang: bool = False
    model: str | None = None
    # Streaming requests: answer 200, send this many chunks (events), then an error event
    # in the stream, as providers do when they fail mid-generation. Other requests get
    # `status`.
    stream_error_after: int | None = None
    # The error `type` of that event (default: overloaded_error, server_error for OpenAI).
    error_type: str | None = None

    def applies_to(self, model: str | None, streaming: bool = False) -> bool:
        """Whether this fault is for a request naming `model` (None when the request names
        none) that is `streaming`: a mid-stream fault (`stream_error_after`) waits for a
        streaming request, and requests that are not streamed pass it by."""
        if self.stream_error_after is not None and not streaming:
            return False
        return self.model is None or self.model == model


@dataclass
class SimulatorState:
    """Everything the simulator remembers between requests: base latency (ms),
    pending faults, call counters by route and by model, and the simulated prompt cache."""

    latency_ms: float = 0.0
    faults: deque[Fault] = field(default_factory=deque)
    requests_by_route: Counter[str] = field(default_factory=Counter)
    requests_by_model: Counter[str] = field(default_factory=Counter)
    faults_served: int = 0
    # Streams the client stopped reading before their end (e.g. a cancelled request).
    streams_aborted: int = 0
    # Set to release every hanging request (faults cleared, reset, shutdown).
    release_hangs: asyncio.Event = field(default_factory=asyncio.Event)
    # Prompt prefixes seen (their hash): the simulated prompt cache.
    prompt_cache: set[str] = field(default_factory=set)

    def record(self, route: str, model: str | None) -> None:
        """Count one call of `route` (a path such as `/v1/messages`), and of `model` when given."""
        self.requests_by_route[route] += 1
        if model:
            self.requests_by_model[model] += 1

    def take_fault(self, model: str | None, streaming: bool = False) -> Fault | None:
        """Remove and return the first pending fault that applies to a request for `model`,
        `streaming` or not (`Fault.applies_to`), or None when no fault applies."""
        for fault in self.faults:
            if fault.applies_to(model, streaming):
                self.faults.remove(fault)
                self.faults_served += 1
                return fault
        return None

    def clear_faults(self) -> None:
        """Drop every pending fault and release every request held by a hang fault."""
        self.faults.clear()
        self.release_hangs.set()
        self.release_hangs = asyncio.Event()

    def reset(self) -> None:
        """Clear faults, the prompt cache and every counter; latency stays as set."""
        self.clear_faults()
        self.prompt_cache.clear()
        self.requests_by_route.clear()
        self.requests_by_model.clear()
        self.faults_served = 0
        self.streams_aborted = 0

    def stats(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict: `routes` and `models` (name to calls),
        `total`, `faults_served`, `faults_pending`, `streams_aborted` and `latency_ms`."""
        return {
            "routes": dict(self.requests_by_route),
            "models": dict(self.requests_by_model),
            "total": sum(self.requests_by_route.values()),
            "faults_served": self.faults_served,
            "faults_pending": len(self.faults),
            "streams_aborted": self.streams_aborted,
            "latency_ms": self.latency_ms,
        }


# --------------------------------------------------------------------------- helpers


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> Response:
    """An OpenAI error response: `{"error": {"message", "type", "param", "code"}}` with
    `status`, the `type` OpenAI uses for that status (OpenAI API reference, "Error codes"),
    `param` (the field at fault, None when none is), `code` (OpenAI's error code, e.g.
    `invalid_value`; None when it has none) and `headers` (header name to value) added to the
    response."""
    error_type = _OPENAI_ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return _json(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status,
        headers,
    )


def anthropic_error(
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    details: dict[str, Any] | None = None,
) -> Response:
    """An Anthropic error response: `{"type": "error", "error": {"type", "message"}}` with
    `status`, the error type Anthropic documents for it ("Errors" in the Anthropic API
    reference, as `switchyard.common.errorformat` holds it: `invalid_request_error` for a
    4xx it does not list, `api_error` for any other status), `details` when given
    (`{"error_code": ...}`, which Anthropic's SDKs read) and `headers` (header name to
    value).
    Anthropic's error object names no parameter and has no code, so `param` and `code` (taken
    as every error writer of the simulator takes them) are not sent."""
    error: dict[str, Any] = {
        "type": errorformat.error_type("anthropic", status),
        "message": message,
    }
    if details is not None:
        error["details"] = details
    return _json({"type": "error", "error": error}, status, headers)


async def _read_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _require_model(body: dict[str, Any]) -> str:
    # `parameters.check` words this for each API; a body built without it still gets a 400.
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    return model


def _require_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    # As `_require_model`: `parameters.check` has judged the list and its roles already.
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"Missing required parameter: 'messages[{index}].role'.",
                f"messages[{index}].role",
                "missing_required_parameter",
            )
    return messages


def content_text(content: Any) -> str:
    """The text of a message's content: a string or a list of parts (both protocols),
    documents with a text source and tool results included."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "tool_result":
                texts.append(content_text(part.get("content")))
            elif part.get("type") == "document":
                source = part.get("source") or {}
                if source.get("type") == "text" and isinstance(source.get("data"), str):
                    texts.append(source["data"])
        return " ".join(text for text in texts if text)
    return ""


def count_images(content: Any) -> int:
    """Images in a message's content, those inside tool results included."""
    if not isinstance(content, list):
        return 0
    count = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") in ("image", "image_url"):
            count += 1
        elif part.get("type") == "tool_result":
            count += count_images(part.get("content"))
    return count


def last_turn_images(messages: list[dict[str, Any]]) -> int:
    """Images the client sent since the assistant last spoke."""
    count = 0
    for message in reversed(messages):
        if message.get("role") == "assistant":
            break
        count += count_images(message.get("content"))
    return count


def reply_text(messages: list[dict[str, Any]]) -> str:
    """The simulated reply to `messages` (Chat/Messages message dicts): the reply prefix,
    the last user text and, when the last turn held images, how many."""
    text = REPLY_PREFIX + last_user_text(messages)
    images = last_turn_images(messages)
    if images:
        text += f" (with {images} image{'s' if images > 1 else ''})"
    return text


def apply_stop(text: str, stops: Any) -> tuple[str, str | None]:
    """The text up to the first stop sequence it contains, and that sequence."""
    if isinstance(stops, str):
        stops = [stops]
    if not isinstance(stops, list):
        return text, None
    found: tuple[int, str] | None = None
    for stop in stops:
        if isinstance(stop, str) and stop:
            at = text.find(stop)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
    if found is None:
        return text, None
    return text[: found[0]], found[1]


def _prefix_key(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last `user` message in `messages` (message dicts with `role` and
    `content`); the user's own words before the tool results it carries; "" when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                # The user's own words, not the tool results they carry back.
                own = [p for p in content if isinstance(p, dict) and p.get("type") != "tool_result"]
                return content_text(own) or content_text(content)
            return content_text(content)
    return ""


def count_words(text: str) -> int:
    """The simulated token count of `text`: its whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def prompt_words(messages: list[dict[str, Any]], system: Any = None) -> int:
    """The simulated prompt tokens of `messages` (message dicts) plus `system` (a string or
    a list of content blocks): their words, at least 1."""
    texts = [content_text(message.get("content")) for message in messages]
    texts.append(content_text(system))
    return count_words(" ".join(texts))


def split_tokens(text: str) -> list[str]:
    """The simulated tokens of `text`: its words, each with the whitespace after it (any
    leading whitespace goes with the first), so they concatenate back to `text`."""
    tokens = re.findall(r"\S+\s*", text)
    lead = text[: len(text) - len(text.lstrip())]
    if tokens and lead:
        tokens[0] = lead + tokens[0]
    return tokens


def split_pieces(text: str, pieces: int = STREAM_PIECES) -> list[str]:
    """Split at word boundaries into at most `pieces` parts that concatenate back to `text`."""
    words = split_tokens(text) or [text]
    size = max(1, -(-len(words) // pieces))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def cut_to_budget(text: str, budget: int, spent: int = 0) -> tuple[str, int, bool]:
    """`text` limited to a `budget` of output tokens (a `max_tokens` value) of which `spent`
    (reasoning or thinking tokens) are used already: (the text, the output tokens reported,
    whether it was cut). A reply that fits reports its words (at least 1) plus `spent`; a cut
    one keeps the words the budget leaves and reports exactly `budget`."""
    words = split_tokens(text)
    if len(words) + spent <= budget:
        return text, count_words(text) + spent, False
    keep = max(0, budget - spent)
    return "".join(words[:keep]).rstrip(), budget, True


# Tokens offered as the less likely alternatives of a simulated token's `top_logprobs`.
_ALTERNATIVE_TOKENS = tuple(
    " the| a| and| of| to| in| is| it| that|.|,| for| on| with| as| this| be| at| by| or".split("|")
)


def token_logprobs(token: str, top: int) -> dict[str, Any]:
    """The log-probability entry of a simulated `token` (OpenAI's `ChatCompletionTokenLogprob`:
    `token`, `logprob`, `bytes` and `top` `top_logprobs`): a deterministic logprob between
    -0.1 and 0 derived from the token, the token itself as the most likely choice, then
    fixed alternatives each 2 lower."""
    logprob = -round(hashlib.sha256(token.encode()).digest()[0] / 2550, 4)
    candidates = [token, *(alt for alt in _ALTERNATIVE_TOKENS if alt != token)]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {
                "token": choice,
                "logprob": round(logprob - 2.0 * rank, 4),
                "bytes": list(choice.encode()),
            }
            for rank, choice in enumerate(candidates[:top])
        ],
    }


def text_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """One `token_logprobs` entry per simulated token of `text`, in order."""
    return [token_logprobs(token, top) for token in split_tokens(text)]


# --------------------------------------------------------------------------- structured output

# How deep schema_instance follows nested schemas before choosing the shortest instance (an
# empty array, a null branch), so a recursive schema still ends.
_SCHEMA_DEPTH = 12
# Where it stops even so: past this depth a value is null.
_SCHEMA_LIMIT = 64
_STRING_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def schema_instance(schema: Any, text: str) -> Any:
    """A deterministic JSON value valid against the JSON Schema `schema` (as structured
    outputs accept them): every property of an object, strings `text` (or "simulated" when
    empty) fitted to `format`, `minLength` and `maxLength`, numbers 0 or their `minimum`,
    booleans true, the first `enum` value or the `const`, arrays of `minItems` items (at
    least 1 unless `maxItems` is 0), the first branch of `anyOf`/`oneOf`, `allOf` merged,
    `$ref` followed into `$defs`/`definitions` (or `#`, the root), the first non-null type of
    a nullable one."""
    root = schema if isinstance(schema, dict) else {}
    return _instance(schema, text or "simulated", root, 0)


def _resolve(ref: Any, root: dict[str, Any]) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    target: Any = root
    for part in ref[1:].split("/"):
        if part:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
    return target


def _instance(schema: Any, text: str, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict):
        return text  # `true` or a missing schema: anything goes
    if depth > _SCHEMA_LIMIT:
        # A schema with no finite instance (a required, non-nullable reference to itself):
        # the value stops here rather than recursing until Python's stack runs out.
        return None
    deep = depth > _SCHEMA_DEPTH
    if "$ref" in schema:
        merged = {
            **_resolve(schema["$ref"], root),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
        return _instance(merged, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            nulls = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
            branch = nulls[0] if deep and nulls else branches[0]
            rest = {k: v for k, v in schema.items() if k != key}
            return _instance(
                {**rest, **branch} if isinstance(branch, dict) else branch, text, root, depth + 1
            )
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = (
                _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            )
            if isinstance(part, dict):
                merged.update(part)
        return _instance(merged, text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = "null" if not kinds or (deep and "null" in kind) else kinds[0]
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "null":
        return None
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        if deep:  # past the depth to fill, only what the schema requires
            required = schema.get("required")
            wanted = set(required) if isinstance(required, list) else set()
            properties = {name: sub for name, sub in properties.items() if name in wanted}
        return {name: _instance(sub, text, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        low: int = schema["minItems"] if isinstance(schema.get("minItems"), int) else 0
        high: int | None = schema["maxItems"] if isinstance(schema.get("maxItems"), int) else None
        prefix: list[Any] = (
            schema["prefixItems"] if isinstance(schema.get("prefixItems"), list) else []
        )
        count = max(low if deep else max(1, low), len(prefix))
        if high is not None:
            count = min(count, high)
        return [
            _instance(prefix[i] if i < len(prefix) else schema.get("items"), text, root, depth + 1)
            for i in range(count)
        ]
    return _string(schema, text)


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    value: float = 0
    if isinstance(schema.get("minimum"), int | float):
        value = schema["minimum"]
    elif isinstance(schema.get("exclusiveMinimum"), int | float):
        value = schema["exclusiveMinimum"] + 1
    elif isinstance(schema.get("maximum"), int | float) and schema["maximum"] < 0:
        value = schema["maximum"]
    elif (
        isinstance(schema.get("exclusiveMaximum"), int | float) and schema["exclusiveMaximum"] <= 0
    ):
        value = schema["exclusiveMaximum"] - 1
    if integer:
        return int(-(-value // 1))  # the smallest integer >= value
    return float(value)


def _string(schema: dict[str, Any], text: str) -> str:
    value = _STRING_FORMATS.get(str(schema.get("format")), text)
    low = schema.get("minLength")
    if isinstance(low, int) and len(value) < low:
        value = (value + " ") * (low // (len(value) + 1) + 1)
    high = schema.get("maxLength")
    if isinstance(high, int):
        value = value[:high]
    return value


def structured_text(schema: dict[str, Any] | None, text: str) -> str:
    """The reply text of a structured output: an instance of `schema` (see `schema_instance`)
    as JSON, or, for JSON mode (`schema` None), `{"text": <text>}`."""
    value = {"text": text} if schema is None else schema_instance(schema, text)
    return json.dumps(value, ensure_ascii=False)


def output_schema(fmt: Any, param: str) -> tuple[bool, dict[str, Any] | None]:
    """Read a requested output format `fmt` (`{"type": "text" | "json_object" |
    "json_schema", ...}`; the schema under `schema`, or under `json_schema.schema` as Chat
    Completions nests it): (whether the reply is JSON, the schema or None for JSON mode).

    Raises:
        BadRequest: `fmt` is not such an object, or its `json_schema` has no object `schema`
            (`param` names the field in the message)."""
    if fmt is None:
        return False, None
    if not isinstance(fmt, dict):
        raise BadRequest(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    if "type" not in fmt:
        raise BadRequest(
            f"Missing required parameter: '{param}.type'.",
            f"{param}.type",
            "missing_required_parameter",
        )
    if fmt["type"] not in ("text", "json_object", "json_schema"):
        raise BadRequest(
            f"Invalid value: {fmt['type']!r}. Supported values are: 'json_object', "
            "'json_schema', and 'text'.",
            f"{param}.type",
            "invalid_value",
        )
    if fmt["type"] == "text":
        return False, None
    if fmt["type"] == "json_object":
        return True, None
    nested = fmt.get("json_schema")
    holder: dict[str, Any] = nested if isinstance(nested, dict) else fmt
    schema = holder.get("schema", {})
    if not isinstance(schema, dict):
        raise BadRequest(
            f"Invalid type for '{param}.schema': expected an object.",
            f"{param}.schema",
            "invalid_type",
        )
    violation = strict_violation(schema) if holder.get("strict") is True else None
    if violation is not None:
        # OpenAI's strict mode (Chat names the whole format, Responses its schema).
        chat = isinstance(nested, dict)
        raise BadRequest(
            f"Invalid schema for response_format {holder.get('name')!r}: In context=(), "
            f"{violation}",
            param if chat else f"{param}.schema",
            None if chat else "invalid_json_schema",
        )
    return True, schema


def called_tool(
    tools: list[dict[str, Any]],
    choice: Any,
    user_text: str,
    name_of: Callable[[dict[str, Any]], Any],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tool, arguments) the simulated model calls from `tools` (the request's client tools,
    in order), or None when it answers in text. `choice` is the request's `tool_choice` in
    any of the three APIs' shapes: `none` (`"none"`, `{"type": "none"}`) never calls one; a
    forced call (`"required"`, `{"type": "any"}`) calls the first tool and a named one
    (`{"type": "function", "function": {"name"}}`, `{"type": "function", "name"}`,
    `{"type": "tool", "name"}`) that tool; otherwise a weather question calls the first.
    The arguments are an instance of the tool's schema (`schema_instance`), the place a
    weather question names in its place property (`_place_property`); `{"location": ...}`
    for a weather question to a tool without properties. `name_of(tool)` is a tool's name."""
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if not tools or kind == "none":
        return None
    weather = re.search(r"\bweather\b", user_text, re.I) is not None
    tool = tools[0]
    if kind in ("function", "tool") and isinstance(choice, dict):
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else choice.get("name")
        tool = next((t for t in tools if name_of(t) == wanted), tool)
    elif kind not in ("required", "any") and not weather:
        return None
    function = tool.get("function")
    schema = (function if isinstance(function, dict) else tool).get("parameters")
    schema = schema or tool.get("input_schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if weather and not (isinstance(properties, dict) and properties):
        return tool, {"location": weather_location(user_text)}
    instance = schema_instance(schema, user_text) if isinstance(schema, dict) else {}
    instance = instance if isinstance(instance, dict) else {}
    if weather and isinstance(properties, dict):
        # The place goes in the property that names one (`location`, `city`...), else the
        # first text property: the rest of the instance keeps the call valid against the
        # tool's schema (an SDK's tool runner validates it).
        place = _place_property(properties)
        if place is not None:
            instance[place] = weather_location(user_text)
    return tool, instance


def _place_property(properties: dict[str, Any]) -> str | None:
    """The property of a tool's schema that takes the place a weather question names: a
    free-text string (no enum, const, format or pattern) named `location`, `city`, `place`
    or `where` (in that order), else the first such string; None when there is none."""

    def free_text(name: str) -> bool:
        spec = properties.get(name)
        return (
            isinstance(spec, dict)
            and spec.get("type") == "string"
            and not {"enum", "const", "format", "pattern"} & spec.keys()
        )

    named = (name for name in ("location", "city", "place", "where") if free_text(name))
    return next(named, None) or next((name for name in properties if free_text(name)), None)


def forces_tool(choice: Any) -> bool:
    """Whether `tool_choice` (any of the three APIs' shapes) makes the model call a tool:
    `required`, Anthropic's `any`, or a named tool. Then a turn answering tool results
    calls one again, as the real APIs do (an SDK's structured output over a forced tool
    relies on it); otherwise such a turn is answered in text."""
    kind = choice.get("type") if isinstance(choice, dict) else choice
    return kind in ("required", "any") or (
        kind in ("function", "tool") and isinstance(choice, dict)
    )


def weather_location(user_text: str) -> str:
    """The place named after "in", "for" or "at" in `user_text`, used as the tool call's
    `location` argument; "unknown" when there is none."""
    match = re.search(r"\b(?:in|for|at)\s+([^?.!,;]+)", user_text, re.I)
    return match.group(1).strip() if match else "unknown"


def _short_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sse_data(payload: Any) -> bytes:
    """One server-sent event holding `payload` as JSON in a `data:` line (OpenAI's streaming
    format)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(name: str, payload: Any) -> bytes:
    """One server-sent event named `name` holding `payload` as JSON (Anthropic's and the
    Responses API's streaming format: `event:` then `data:`)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# --------------------------------------------------------------------------- OpenAI


@dataclass
class OpenAIReply:
    """One simulated Chat Completions reply: the text or the tool call (an OpenAI
    `tool_calls` entry) of each of its `n` choices (all alike), and its usage in simulated
    tokens (`completion_tokens` and `reasoning_tokens` are those of one choice)."""

    model: str
    text: str | None
    tool_call: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    n: int = 1
    # `max_tokens`/`max_completion_tokens` cut the text.
    truncated: bool = False
    # `top_logprobs` asked for when `logprobs` is on (None: no log probabilities).
    top_logprobs: int | None = None
    id: str = field(default_factory=lambda: _short_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        """`tool_calls` when the reply calls a tool, `length` when the token limit cut it,
        else `stop`."""
        if self.tool_call:
            return "tool_calls"
        return "length" if self.truncated else "stop"

    def usage(self) -> dict[str, Any]:
        """The reply's `usage` object as OpenAI reports it: prompt, completion (of every
        choice) and total tokens, cached prompt tokens and reasoning tokens."""
        completion = self.completion_tokens * self.n
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens * self.n},
        }

    def tool_call_of(self, index: int) -> dict[str, Any] | None:
        """The tool call of choice `index` (each choice's call has its own id)."""
        if self.tool_call is None or index == 0:
            return self.tool_call
        return {**self.tool_call, "id": f"{self.tool_call['id']}{index}"}

    def logprobs(self, text: str | None) -> dict[str, Any] | None:
        """A choice's `logprobs` object for `text` (its content or a streamed piece of it),
        None when the request did not ask for log probabilities."""
        if self.top_logprobs is None:
            return None
        content = text_logprobs(text, self.top_logprobs) if text is not None else []
        return {"content": content, "refusal": None}

    def completion(self) -> dict[str, Any]:
        """The whole non-streamed `chat.completion` object (OpenAI API reference)."""
        choices = []
        for index in range(self.n):
            message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
            tool_call = self.tool_call_of(index)
            if tool_call:
                message["tool_calls"] = [tool_call]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": self.logprobs(self.text),
                    "finish_reason": self.finish_reason,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        choices: bool = True,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One `chat.completion.chunk` holding `delta` (the message fields it adds),
        `finish_reason` and `logprobs` for choice `index`; with `choices=False`, an empty
        choices list (the final usage chunk)."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            ]
            if choices
            else [],
        }

    def content_deltas(self, index: int = 0) -> list[dict[str, Any]]:
        """The streamed deltas of choice `index`, in order: pieces of the text, or the tool
        call's head and then pieces of its JSON arguments."""
        tool_call = self.tool_call_of(index)
        if tool_call:
            function = tool_call["function"]
            head = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            return [{"tool_calls": [head]}] + [
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                for piece in split_pieces(function["arguments"])
            ]
        return [{"content": piece} for piece in split_pieces(self.text or "")]


def _chat_options(body: dict[str, Any]) -> tuple[int, int | None, int | None]:
    """(n, the output token limit, top_logprobs or None without `logprobs`) of a Chat
    Completions body whose parameters `parameters.check` has judged."""
    n = body.get("n")
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if body.get("logprobs") is not True:
        return n or 1, limit, None
    return n or 1, limit, body.get("top_logprobs") or 0


def build_openai_reply(body: dict[str, Any], cache: set[str] | None = None) -> OpenAIReply:
    """The simulated reply to a Chat Completions request `body` (the JSON object as a
    dict). `cache` is the set of prompt-prefix hashes already seen (None: no prompt caching); it
    is updated. A `response_format` of `json_schema` or `json_object` makes the text JSON
    (`structured_text`); `max_completion_tokens`/`max_tokens` cut the text; `n` and
    `logprobs`/`top_logprobs` shape the choices.

    The parameters' types and ranges are `parameters.check`'s to judge, before this.

    Raises:
        BadRequest: the body is one the real API refuses (no model, no messages, a tool
            without a name, a bad `response_format`)."""
    model = _require_model(body)
    messages = _require_messages(body)
    n, limit, top_logprobs = _chat_options(body)
    json_reply, schema = output_schema(body.get("response_format"), "response_format")
    if json_reply and schema is None and not mentions_json(messages):
        raise BadRequest(JSON_MODE_CHAT_MESSAGE, "messages")
    fmt = body.get("response_format")
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and not isinstance((fmt.get("json_schema") or {}).get("name"), str)
    ):
        raise BadRequest(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    user_text = last_user_text(messages)
    prompt_tokens = prompt_words(messages)
    cached = 0
    if cache is not None and len(messages) > 1:
        key = _prefix_key("openai", model, messages[:-1])
        if key in cache:
            cached = min(prompt_tokens, prompt_words(messages[:-1]))
        cache.add(key)
    reasoning = 8 if body.get("reasoning_effort") not in (None, "none") else 0
    if limit is not None:
        reasoning = min(reasoning, limit)
    last = messages[-1] if messages else {}
    # Tool results to answer (an agent loop's next turn): answered in text, as the
    # Messages and Responses simulations do, never by calling the tool again.
    tool_results = isinstance(last, dict) and last.get("role") == "tool"
    call = None
    if not tool_results or forces_tool(body.get("tool_choice")):
        call = called_tool(
            body.get("tools") or [],
            body.get("tool_choice"),
            user_text,
            lambda tool: (tool.get("function") or {}).get("name"),
        )
    if call is not None:
        tool, tool_arguments = call
        name = (tool.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest(
                "Missing required parameter: 'tools[0].function.name'.",
                "tools[0].function.name",
                "missing_required_parameter",
            )
        arguments = orjson.dumps(tool_arguments).decode()
        tool_call = {
            "id": _short_id("call_"),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return OpenAIReply(
            model,
            None,
            tool_call,
            prompt_tokens,
            count_words(arguments) + reasoning,
            cached,
            reasoning,
            n=n,
            top_logprobs=top_logprobs,
        )
    if tool_results:
        answered = content_text(last.get("content"))
        text = structured_text(schema, answered) if json_reply else REPLY_PREFIX + answered
    else:
        text = structured_text(schema, user_text) if json_reply else reply_text(messages)
    text, _ = apply_stop(text, body.get("stop"))
    if limit is None:
        return OpenAIReply(
            model,
            text,
            None,
            prompt_tokens,
            count_words(text) + reasoning,
            cached,
            reasoning,
            n=n,
            top_logprobs=top_logprobs,
        )
    text, tokens, cut = cut_to_budget(text, limit, reasoning)
    return OpenAIReply(
        model,
        text,
        None,
        prompt_tokens,
        tokens,
        cached,
        reasoning,
        truncated=cut,
        n=n,
        top_logprobs=top_logprobs,
    )


def _openai_events(reply: OpenAIReply, include_usage: bool) -> tuple[list[bytes], set[int]]:
    """The SSE events of a streamed reply without the final `[DONE]` (each choice in turn:
    its role, its content, its finish), and the positions of the content events."""
    events: list[bytes] = []
    content: set[int] = set()
    for index in range(reply.n):
        role = {"role": "assistant", "content": None if reply.tool_call else ""}
        events.append(sse_data(reply.chunk(role, index=index, logprobs=reply.logprobs(None))))
        for delta in reply.content_deltas(index):
            content.add(len(events))
            logprobs = reply.logprobs(delta.get("content")) if "content" in delta else None
            if logprobs is None and reply.top_logprobs is not None:
                logprobs = reply.logprobs(None)
            events.append(sse_data(reply.chunk(delta, index=index, logprobs=logprobs)))
        events.append(sse_data(reply.chunk({}, reply.finish_reason, index=index)))
    if include_usage:
        events.append(sse_data({**reply.chunk({}, choices=False), "usage": reply.usage()}))
    return events, content


def openai_stream_events(reply: OpenAIReply, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed reply, without the final `[DONE]`."""
    return _openai_events(reply, include_usage)[0]


async def stream_openai(
    reply: OpenAIReply,
    include_usage: bool,
    latency_s: float,
    state: SimulatorState | None = None,
    error_after: int | None = None,
    error_type: str | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streamed Chat Completions reply, `[DONE]` last.

    `latency_s` (seconds) is spread over the content chunks; `include_usage` adds the usage
    chunk; with `error_after`, that many events are sent and then an error event of type
    `error_type` (default `server_error`) instead of the rest. Aborted streams are counted in
    `state`."""
    events, paced = _openai_events(reply, include_usage)
    error = sse_data(
        {
            "error": {
                "message": "Simulated failure mid-stream.",
                "type": error_type or "server_error",
                "param": None,
                "code": None,
            }
        }
    )
    async for event in _paced(events, paced, latency_s, state, error_after, error):
        yield event
    if error_after is None:
        yield b"data: [DONE]\n\n"


async def _paced(
    events: list[bytes],
    paced: set[int],
    latency_s: float,
    state: SimulatorState | None,
    error_after: int | None,
    error: bytes,
) -> AsyncIterator[bytes]:
    """The events, the latency spread over the content events (positions `paced`); or
    the first `error_after` of them and then `error`. Counts streams the client abandoned."""
    pause = latency_s / max(1, len(paced)) if latency_s else 0
    try:
        for position, event in enumerate(events):
            if error_after is not None and position >= error_after:
                yield error
                return
            if pause and position in paced:
                await asyncio.sleep(pause)
            yield event
    except (asyncio.CancelledError, GeneratorExit):
        if state is not None:
            state.streams_aborted += 1
        raise


# --------------------------------------------------------------------------- Anthropic


@dataclass
class AnthropicReply:
    """One simulated Messages reply: text or tool_use block, optional thinking, stop
    sequence hit, and usage in simulated tokens (cache writes and reads included)."""

    model: str
    text: str | None
    tool_use: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    thinking: str | None = None
    stop_sequence: str | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # `max_tokens` cut the text.
    truncated: bool = False
    # Of `cache_creation_input_tokens`, those written for an hour (the rest for 5 minutes).
    cache_creation_1h_input_tokens: int = 0
    id: str = field(default_factory=lambda: _short_id("msg_"))

    @property
    def stop_reason(self) -> str:
        """`tool_use`, `max_tokens`, `stop_sequence` or `end_turn`, as Anthropic reports it."""
        if self.tool_use:
            return "tool_use"
        if self.truncated:
            return "max_tokens"
        return "stop_sequence" if self.stop_sequence is not None else "end_turn"

    @property
    def signature(self) -> str:
        """The thinking block's signature: a hash of the thinking text, stable for the same text."""
        return "sig_" + hashlib.sha256((self.thinking or "").encode()).hexdigest()[:32]

    @property
    def thinking_tokens(self) -> int:
        """Simulated tokens of the thinking text (0 without thinking)."""
        return count_words(self.thinking) if self.thinking else 0

    def blocks(self) -> list[dict[str, Any]]:
        """The reply's content blocks: the thinking block when enabled, then the text or tool_use
        block."""
        blocks: list[dict[str, Any]] = []
        if self.thinking is not None:
            blocks.append(
                {"type": "thinking", "thinking": self.thinking, "signature": self.signature}
            )
        if self.tool_use is None and self.output_tokens == 0 and not blocks:
            return blocks  # `max_tokens: 0`: nothing generated, no block at all
        blocks.append(self.tool_use or {"type": "text", "text": self.text or ""})
        return blocks

    def usage(self, output_tokens: int) -> dict[str, Any]:
        """The `usage` object of the Messages API with `output_tokens` as given (streams
        report 1 at `message_start`), thinking tokens detailed when thinking is on."""
        hour = self.cache_creation_1h_input_tokens
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens - hour,
                "ephemeral_1h_input_tokens": hour,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if self.thinking is not None:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        return usage

    def message(
        self, *, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int
    ) -> dict[str, Any]:
        """A Messages API `message` object with the given `content` blocks, `stop_reason`
        (None while streaming) and `output_tokens`."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": self.stop_sequence if stop_reason else None,
            "usage": self.usage(output_tokens),
        }

    def complete(self) -> dict[str, Any]:
        """The whole non-streamed `message` object (Anthropic API reference, Messages)."""
        return self.message(
            content=self.blocks(), stop_reason=self.stop_reason, output_tokens=self.output_tokens
        )

    def stream_blocks(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """(content_block_start block, deltas) of each block, in order."""
        result: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if self.thinking is not None:
            deltas = [
                {"type": "thinking_delta", "thinking": piece}
                for piece in split_pieces(self.thinking)
            ]
            deltas.append({"type": "signature_delta", "signature": self.signature})
            result.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        if self.tool_use:
            arguments = orjson.dumps(self.tool_use["input"]).decode()
            result.append(
                (
                    {**self.tool_use, "input": {}},
                    [
                        {"type": "input_json_delta", "partial_json": piece}
                        for piece in split_pieces(arguments)
                    ],
                )
            )
        else:
            result.append(
                (
                    {"type": "text", "text": ""},
                    [
                        {"type": "text_delta", "text": piece}
                        for piece in split_pieces(self.text or "")
                    ],
                )
            )
        return result

    def deltas(self) -> list[dict[str, Any]]:
        """Every content_block_delta payload of the stream, all blocks in order."""
        return [delta for _, deltas in self.stream_blocks() for delta in deltas]


def _validate_anthropic(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(model, messages) of a Messages or count_tokens body, its roles checked as Anthropic
    checks them: `user` and `assistant`, and `system` (accepted, as documented above, as
    Claude Opus 4.8 takes it) where Anthropic's placement rules for mid-conversation
    system messages allow it, right after a user message and last or followed by an
    assistant message (`check_system_message_placement`). The parameters and every
    content block are `parameters.check`'s to judge, before this."""
    messages = body["messages"]
    for message in messages:
        if message["role"] not in ("user", "assistant", "system"):
            raise BadRequest(
                f'messages: Unexpected role "{message["role"]}". Allowed roles are "user" or '
                '"assistant"'
            )
    try:
        check_system_message_placement(body)
    except AnthropicRequestError as exc:
        raise BadRequest(str(exc)) from None
    return body["model"], messages


def _cache_segments(body: dict[str, Any]) -> list[tuple[Any, bool]]:
    """The prompt in cache order (tools, system, messages) as (segment, cache point?)."""
    segments: list[tuple[Any, bool]] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            segments.append((tool, tool.get("cache_control") is not None))
    system = body.get("system")
    if isinstance(system, list):
        segments += [
            (b, isinstance(b, dict) and b.get("cache_control") is not None) for b in system
        ]
    elif system:
        segments.append((system, False))
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            segments += [
                (b, isinstance(b, dict) and b.get("cache_control") is not None) for b in content
            ]
        else:
            segments.append((content, False))
    if body.get("cache_control") is not None and segments:  # automatic: the whole prompt
        segments[-1] = (segments[-1][0], True)
    return segments


def _segment_words(segment: Any) -> int:
    if isinstance(segment, dict) and segment.get("type") not in (None, "custom"):
        text = content_text([segment])
    elif isinstance(segment, dict):
        text = f"{segment.get('name', '')} {segment.get('description', '')}".strip()
    else:
        text = content_text(segment)
    return len(text.split())


def _anthropic_cache(
    body: dict[str, Any], model: str, cache: set[str] | None
) -> tuple[int, int, int]:
    """(tokens written to, tokens read from, tokens of those written for an hour) the
    simulated prompt cache. Written tokens up to the last breakpoint asking for `ttl: 1h`
    are an hour's, the rest five minutes' (Anthropic's `usage.cache_creation`)."""
    if cache is None:
        return 0, 0, 0
    segments = _cache_segments(body)
    marked = [i for i, (_, is_point) in enumerate(segments) if is_point]
    if not marked:
        return 0, 0, 0
    last = marked[-1]
    prefix = [segment for segment, _ in segments[: last + 1]]
    words = sum(_segment_words(segment) for segment in prefix)
    key = _prefix_key("anthropic", model, prefix)
    if key in cache:
        return 0, words, 0
    cache.add(key)
    hour_points = [i for i in marked if _cache_ttl(segments[i][0], body) == "1h"]
    hour = (
        sum(_segment_words(segment) for segment, _ in segments[: hour_points[-1] + 1])
        if hour_points
        else 0
    )
    return words, 0, hour


def _cache_ttl(segment: Any, body: dict[str, Any]) -> str:
    """The `ttl` of the cache point on `segment` (or of the request's automatic one)."""
    control = segment.get("cache_control") if isinstance(segment, dict) else None
    if not isinstance(control, dict):
        control = body.get("cache_control")
    ttl = control.get("ttl") if isinstance(control, dict) else None
    return ttl if isinstance(ttl, str) else "5m"


def _anthropic_output_format(body: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(whether the reply is JSON, its schema) from `output_config.format` (or the older
    top-level `output_format`): Anthropic's structured outputs take only `json_schema`."""
    config = body.get("output_config")
    param = "output_config.format"
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt, param = body.get("output_format"), "output_format"
    if fmt is None:
        return False, None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest(f"{param}.type: Input should be 'json_schema'")
    if not isinstance(fmt.get("schema"), dict):
        raise BadRequest(f"{param}.schema: Field required")
    if open_object(fmt["schema"]) is not None:
        raise BadRequest(
            f"{param}.schema: For 'object' type, 'additionalProperties' must be explicitly "
            "set to false"
        )
    return True, fmt["schema"]


def _betas(request: Request) -> frozenset[str]:
    """The request's `anthropic-beta` values (comma-separated, on one or several lines)."""
    return frozenset(
        value.strip()
        for line in request.headers.getlist("anthropic-beta")
        for value in line.split(",")
        if value.strip()
    )


def build_anthropic_reply(body: dict[str, Any], cache: set[str] | None = None) -> AnthropicReply:
    """The simulated reply to a Messages request `body` (the JSON object as a dict).
    `cache` is the set of prompt-prefix hashes already seen (None: no prompt caching); it is
    updated. A `json_schema` in `output_config.format` makes the text a JSON instance of it
    (`structured_text`); `max_tokens` cuts the text (`stop_reason: "max_tokens"`).

    Raises:
        BadRequest: the body is one the real API refuses (no model, messages or `max_tokens`, a
            bad role, a thinking block without signature, an unknown document source, a tool
            without a name, an output format other than a `json_schema`)."""
    model, messages = _validate_anthropic(body)
    json_reply, schema = _anthropic_output_format(body)
    user_text = last_user_text(messages)
    total = prompt_words(messages, body.get("system"))
    written, read, hour = _anthropic_cache(body, model, cache)
    cached = min(total, written + read)
    written, read = min(written, cached), min(read, cached - min(written, cached))
    hour = min(hour, written)
    thinking_config = body.get("thinking")
    thinking = None
    if isinstance(thinking_config, dict) and thinking_config.get("type") in ("enabled", "adaptive"):
        thinking = f"Considering: {user_text}"
    thinking_words = count_words(thinking) if thinking else 0
    usage = {
        "input_tokens": total - written - read,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }
    if body["max_tokens"] == 0:
        # Pre-warming the prompt cache: the prompt is read (and cached), nothing generated.
        return AnthropicReply(
            model,
            "",
            None,
            usage["input_tokens"],
            0,
            None,
            None,
            written,
            read,
            truncated=True,
            cache_creation_1h_input_tokens=hour,
        )
    client_tools = [t for t in body.get("tools") or () if t.get("type") in (None, "custom")]
    call = called_tool(client_tools, body.get("tool_choice"), user_text, lambda t: t["name"])
    last = messages[-1]["content"]
    # Tool results to answer are answered in text, never by calling a tool again.
    answering = isinstance(last, list) and any(b["type"] == "tool_result" for b in last)
    if call is not None and (not answering or forces_tool(body.get("tool_choice"))):
        tool, tool_input = call
        name = tool["name"]
        tool_use = {
            "type": "tool_use",
            "id": _short_id("toolu_"),
            "name": name,
            "input": tool_input,
        }
        output = count_words(orjson.dumps(tool_input).decode()) + thinking_words
        return AnthropicReply(
            model,
            None,
            tool_use,
            usage["input_tokens"],
            output,
            thinking,
            None,
            written,
            read,
            cache_creation_1h_input_tokens=hour,
        )
    text = structured_text(schema, user_text) if json_reply else reply_text(messages)
    text, stop = apply_stop(text, body.get("stop_sequences"))
    text, output, cut = cut_to_budget(text, body["max_tokens"], thinking_words)
    return AnthropicReply(
        model,
        text,
        None,
        usage["input_tokens"],
        output,
        thinking,
        None if cut else stop,
        written,
        read,
        truncated=cut,
        cache_creation_1h_input_tokens=hour,
    )


def anthropic_stream_events(reply: AnthropicReply) -> list[bytes]:
    """Every event of a streamed reply, in protocol order (a `ping` after the first block
    opens)."""
    start = reply.message(content=[], stop_reason=None, output_tokens=1)
    events = [sse_event("message_start", {"type": "message_start", "message": start})]
    for index, (block, deltas) in enumerate(reply.stream_blocks()):
        events.append(
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        if index == 0:
            events.append(sse_event("ping", {"type": "ping"}))
        events += [
            sse_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            for delta in deltas
        ]
        events.append(
            sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    events += [
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": reply.usage(reply.output_tokens),
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    ]
    return events


async def stream_anthropic(
    reply: AnthropicReply,
    latency_s: float,
    state: SimulatorState | None = None,
    error_after: int | None = None,
    error_type: str | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streamed Messages reply (Anthropic's event sequence).

    `latency_s` (seconds) is spread over the content_block_delta events; with `error_after`,
    that many events are sent and then an `error` event of type `error_type` (default
    `overloaded_error`). Aborted streams are counted in `state`."""
    error = sse_event(
        "error",
        {
            "type": "error",
            "error": {
                "type": error_type or "overloaded_error",
                "message": "Simulated failure mid-stream.",
            },
        },
    )
    events = anthropic_stream_events(reply)
    paced = {i for i, e in enumerate(events) if e.startswith(b"event: content_block_delta")}
    async for event in _paced(events, paced, latency_s, state, error_after, error):
        yield event


# --------------------------------------------------------------------------- Responses API

_RESPONSES_ITEM_TYPES = (
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "item_reference",
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
)


_CALL_FIELDS = ("call_id", "name", "arguments")


def _responses_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as items, checked as the real API checks them."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise BadRequest(
            "Invalid type for 'input': expected one of a string or array of input items.",
            "input",
            "invalid_type",
        )
    items = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(
                f"Invalid type for '{where}': expected an object.", where, "invalid_type"
            )
        kind = item.get("type", "message" if "role" in item else None)
        if kind not in _RESPONSES_ITEM_TYPES:
            raise BadRequest(
                f"Invalid value: {kind!r}. Supported values are: "
                + ", ".join(repr(name) for name in _RESPONSES_ITEM_TYPES)
                + ".",
                f"{where}.type",
                "invalid_value",
            )
        if kind == "message":
            roles = ("user", "assistant", "system", "developer")
            if item.get("role") not in roles:
                raise BadRequest(
                    f"Invalid value: {item.get('role')!r}. Supported values are: 'assistant', "
                    "'system', 'developer', and 'user'.",
                    f"{where}.role",
                    "invalid_value",
                )
            if not isinstance(item.get("content"), str | list):
                raise BadRequest(
                    f"Missing required parameter: '{where}.content'.",
                    f"{where}.content",
                    "missing_required_parameter",
                )
        elif kind in ("function_call_output", "function_call"):
            required = ("call_id", "output") if kind == "function_call_output" else _CALL_FIELDS
            for name in required:
                # A function call's fields are strings; a tool's output may be content parts.
                given = name in item if name == "output" else isinstance(item.get(name), str)
                if not given:
                    raise BadRequest(
                        f"Missing required parameter: '{where}.{name}'.",
                        f"{where}.{name}",
                        "missing_required_parameter",
                    )
        elif kind == "item_reference":
            raise BadRequest(f"Item with id {item.get('id')!r} not found.", f"{where}.id")
        items.append({**item, "type": kind})
    return items


def _item_text(item: dict[str, Any]) -> str:
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else content_text(output)
    return content_text(item.get("content"))


@dataclass
class ResponsesReply:
    """One simulated Responses reply: its output items and usage."""

    body: dict[str, Any]
    model: str
    output: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    incomplete: bool = False
    # `top_logprobs` of the text's log probabilities, None when `include` does not ask for
    # them (`message.output_text.logprobs`).
    top_logprobs: int | None = None
    id: str = field(default_factory=lambda: _short_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, status: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The Responses API `response` object in `status` (`in_progress`, `completed`,
        `incomplete` or `failed`); `output` replaces the reply's items (default: the items once
        finished, none before)."""
        finished = status in ("completed", "incomplete")
        response = response_object(
            self.body,
            id=self.id,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            model=self.model,
            status=status,
            output=output if output is not None else (self.output if finished else []),
            usage=self.usage() if finished else None,
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            completed_at=datetime.now(UTC) if status == "completed" else None,
        )
        # OpenAI echoes what it was sent (Switchyard never sends these).
        response["previous_response_id"] = self.body.get("previous_response_id")
        return response

    @property
    def status(self) -> str:
        """`incomplete` when `max_output_tokens` cut the reply, else `completed`."""
        return "incomplete" if self.incomplete else "completed"

    def usage(self) -> dict[str, Any]:
        """The response's `usage` object (input, cached, output, reasoning and total tokens)."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


# Parameters of `POST /v1/responses` that its input token count does not take
# (https://platform.openai.com/docs/api-reference/responses/input-tokens).
_NOT_COUNTED = (
    "stream",
    "store",
    "background",
    "max_output_tokens",
    "temperature",
    "top_p",
    "metadata",
)


def build_responses_reply(body: dict[str, Any], cache: set[str] | None = None) -> ResponsesReply:
    """The simulated reply to a Responses API request `body` (the JSON object as a
    dict). `cache` is the set of prompt-prefix hashes already seen (None: no prompt caching); it
    is updated.

    The parameters' types and ranges are `parameters.check`'s to judge, before this.

    Raises:
        BadRequest: the body is one the real API refuses, including any
            `previous_response_id` (the simulator stores nothing) and an `item_reference`."""
    model = _require_model(body)
    if body.get("previous_response_id") is not None:
        raise BadRequest(
            f"Previous response with id {body['previous_response_id']!r} not found.",
            "previous_response_id",
            "previous_response_not_found",
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str | list):
        raise BadRequest(
            "Invalid type for 'instructions': expected one of a string or array of input items.",
            "instructions",
            "invalid_type",
        )
    text_config = body.get("text")
    json_reply, schema = output_schema(
        text_config.get("format") if isinstance(text_config, dict) else None, "text.format"
    )
    if json_reply and schema is None and not mentions_json(body.get("input"), instructions):
        raise BadRequest(JSON_MODE_RESPONSES_MESSAGE, "input")
    items = _responses_items(body)
    texts = [_item_text(item) for item in items]
    input_tokens = count_words(" ".join([*texts, content_text(instructions)]))
    cached = 0
    if cache is not None and len(items) > 1:
        key = _prefix_key("responses", model, instructions, items[:-1])
        if key in cache:
            cached = min(input_tokens, count_words(" ".join(texts[:-1])))
        cache.add(key)
    user_text = next(
        (
            content_text(item.get("content"))
            for item in reversed(items)
            if item["type"] == "message" and item.get("role") == "user"
        ),
        "",
    )
    output: list[dict[str, Any]] = []
    reasoning: Any = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    reasoning_tokens = 0
    if reasoning.get("effort") not in (None, "none"):
        reasoning_tokens = 8
        summary = []
        if reasoning.get("summary") is not None:
            summary = [{"type": "summary_text", "text": f"Considering: {user_text}"}]
        output.append({"id": _short_id("rs_"), "type": "reasoning", "summary": summary})
    last = items[-1] if items else {}
    functions = [
        t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]
    call = None
    if last.get("type") != "function_call_output" or forces_tool(body.get("tool_choice")):
        call = called_tool(functions, body.get("tool_choice"), user_text, lambda t: t.get("name"))
    if call is not None:
        tool, tool_arguments = call
        if not isinstance(tool.get("name"), str):
            raise BadRequest(
                "Missing required parameter: 'tools[0].name'.",
                "tools[0].name",
                "missing_required_parameter",
            )
        arguments = orjson.dumps(tool_arguments).decode()
        output.append(
            {
                "id": _short_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": _short_id("call_"),
                "name": tool["name"],
            }
        )
        return ResponsesReply(
            body,
            model,
            output,
            input_tokens,
            count_words(arguments) + reasoning_tokens,
            cached,
            reasoning_tokens,
        )
    answered = _item_text(last) if last.get("type") == "function_call_output" else user_text
    text = structured_text(schema, answered) if json_reply else REPLY_PREFIX + answered
    output_tokens = count_words(text) + reasoning_tokens
    incomplete = False
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        text, output_tokens, incomplete = cut_to_budget(text, max_output, reasoning_tokens)
    top_logprobs = _responses_top_logprobs(body)
    logprobs = text_logprobs(text, top_logprobs) if top_logprobs is not None else []
    output.append(
        {
            "id": _short_id("msg_"),
            "type": "message",
            "status": "incomplete" if incomplete else "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
            ],
        }
    )
    return ResponsesReply(
        body,
        model,
        output,
        input_tokens,
        output_tokens,
        cached,
        reasoning_tokens,
        incomplete,
        top_logprobs,
    )


def _responses_top_logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives each token's log probability lists (`top_logprobs`, default 0)
    when `include` asks for the text's log probabilities; None when it does not (OpenAI's
    `output_text.logprobs` is then empty)."""
    include = body.get("include")
    if not isinstance(include, list) or "message.output_text.logprobs" not in include:
        return None
    top = body.get("top_logprobs")
    return top if isinstance(top, int) else 0


def _event_logprobs(text: str, top: int | None) -> list[dict[str, Any]]:
    """The `logprobs` of a streamed text event (`response.output_text.delta` and `.done`):
    those of the text without their `bytes`, which these events do not carry; empty when the
    request did not ask for them."""
    if top is None:
        return []
    return [
        {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "top_logprobs": [
                {"token": alt["token"], "logprob": alt["logprob"]} for alt in entry["top_logprobs"]
            ],
        }
        for entry in text_logprobs(text, top)
    ]


def responses_stream_events(reply: ResponsesReply) -> list[bytes]:
    """Every event of a streamed Responses reply, in the API's order, numbered."""
    events: list[dict[str, Any]] = []

    def add(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    add("response.created", response=reply.response("in_progress"))
    add("response.in_progress", response=reply.response("in_progress"))
    for index, item in enumerate(reply.output):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            add(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            part = item["content"][0]
            add(
                "response.content_part.added",
                **at,
                content_index=0,
                part={**part, "text": "", "logprobs": []},
            )
            top = reply.top_logprobs
            for piece in split_pieces(part["text"]):
                logprobs = _event_logprobs(piece, top)
                add(
                    "response.output_text.delta",
                    **at,
                    content_index=0,
                    delta=piece,
                    logprobs=logprobs,
                )
            logprobs = _event_logprobs(part["text"], top)
            add(
                "response.output_text.done",
                **at,
                content_index=0,
                text=part["text"],
                logprobs=logprobs,
            )
            add("response.content_part.done", **at, content_index=0, part=part)
        elif item["type"] == "function_call":
            add(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in split_pieces(item["arguments"]):
                add("response.function_call_arguments.delta", **at, delta=piece)
            add("response.function_call_arguments.done", **at, arguments=item["arguments"])
        else:  # reasoning
            add("response.output_item.added", output_index=index, item={**item, "summary": []})
            for position, summary in enumerate(item["summary"]):
                add(
                    "response.reasoning_summary_part.added",
                    **at,
                    summary_index=position,
                    part={"type": "summary_text", "text": ""},
                )
                for piece in split_pieces(summary["text"]):
                    add(
                        "response.reasoning_summary_text.delta",
                        **at,
                        summary_index=position,
                        delta=piece,
                    )
                add(
                    "response.reasoning_summary_text.done",
                    **at,
                    summary_index=position,
                    text=summary["text"],
                )
                add(
                    "response.reasoning_summary_part.done",
                    **at,
                    summary_index=position,
                    part=summary,
                )
        add("response.output_item.done", output_index=index, item=item)
    add(f"response.{reply.status}", response=reply.response(reply.status))
    return [sse_event(event["type"], event) for event in events]


async def stream_responses(
    reply: ResponsesReply,
    latency_s: float,
    state: SimulatorState | None = None,
    error_after: int | None = None,
    error_type: str | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streamed Responses reply.

    `latency_s` (seconds) is spread over the delta events; with `error_after`, that many events
    are sent and then a `response.failed` event whose error code is `error_type` (default
    `server_error`). Aborted streams are counted in `state`."""
    events = responses_stream_events(reply)
    failed = reply.response("failed")
    failed["error"] = {
        "code": error_type or "server_error",
        "message": "Simulated failure mid-stream.",
    }
    error = sse_event(
        "response.failed",
        {"type": "response.failed", "sequence_number": error_after or 0, "response": failed},
    )
    paced = {i for i, e in enumerate(events) if b".delta\n" in e}
    async for event in _paced(events, paced, latency_s, state, error_after, error):
        yield event


# --------------------------------------------------------------------------- embeddings


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector derived from the text's hash."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values += [byte / 127.5 - 1.0 for byte in digest]
        counter += 1
    values = values[:dimensions]
    norm = sum(value * value for value in values) ** 0.5 or 1.0
    return [round(value / norm, 6) for value in values]


# OpenAI's API reference (Create embeddings, `input`): no empty string, and at most 2048
# inputs in an array.
MAX_EMBEDDING_INPUTS = 2048


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, list) and len(raw) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(
            f"'input' holds {len(raw)} inputs; at most {MAX_EMBEDDING_INPUTS} are allowed.",
            "input",
        )
    if raw == "" or (isinstance(raw, list) and "" in raw):
        raise BadRequest("'input' cannot be an empty string.", "input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        return raw
    if isinstance(raw, list) and raw and all(_token_ids(item) for item in raw):
        return [" ".join(map(str, item)) for item in raw]  # several pre-tokenized inputs
    if isinstance(raw, list) and _token_ids(raw):
        return [" ".join(map(str, raw))]  # one pre-tokenized input
    raise BadRequest(
        "'input' must be a string, a non-empty array of strings, an array of token ids or "
        "an array of such arrays.",
        "input",
    )


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    )


def _encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def build_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """The Embeddings API answer to `body`: one deterministic vector of `dimensions`
    floats (default 8) per input, as floats or little-endian float32 base64, and word-count
    usage.

    `dimensions` and `encoding_format` are `parameters.check`'s to judge, before this.

    Raises:
        BadRequest: no model, or an input that is neither a string nor a list of strings, of
            token ids or of lists of token ids."""
    model = _require_model(body)
    inputs = _embedding_inputs(body)
    dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    encoding_format = body.get("encoding_format") or "float"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _encode_embedding(embedding_vector(text, dimensions), encoding_format),
        }
        for index, text in enumerate(inputs)
    ]
    tokens = sum(count_words(text) for text in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --------------------------------------------------------------------------- app

# An error writer: (status, message, param=None, headers=None) -> the API's error response.
ErrorWriter = Callable[..., Response]
_Reply = TypeVar("_Reply")


@dataclass
class Call:
    """A model request being answered as a stream: its JSON body and the mid-stream fault
    injected into it (`stream_error`: the events before the error, the error's type;
    both None without one)."""

    body: dict[str, Any]
    stream_error: tuple[int | None, str | None] = (None, None)


class Simulator:
    """The routes, bound to one state (one simulator per app)."""

    def __init__(self, latency_ms: float = 0) -> None:
        self.state = SimulatorState(latency_ms=latency_ms)

    @property
    def latency_s(self) -> float:
        """The base latency of every reply, in seconds."""
        return self.state.latency_ms / 1000

    async def _fault_response(
        self,
        request: Request,
        model: str | None,
        error: ErrorWriter,
        streaming: bool = False,
    ) -> Response | Fault | None:
        """The response of the next injected fault matching `model`, if any; for a
        mid-stream fault on a streaming request, the fault itself."""
        fault = self.state.take_fault(model, streaming)
        if fault is None:
            return None
        if fault.stream_error_after is not None:
            return fault
        if fault.hang:
            await self._hang(request)
            return error(503, "The simulated hang was released.")
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        if fault.should_retry is not None:
            headers["x-should-retry"] = "true" if fault.should_retry else "false"
        return error(
            fault.status, f"Simulated fault: HTTP {fault.status}.", headers=headers or None
        )

    async def _hang(self, request: Request) -> None:
        release = self.state.release_hangs
        deadline = time.monotonic() + HANG_SECONDS
        # Wake up regularly to notice a client that gave up, so hung handlers don't pile up.
        while time.monotonic() < deadline and not release.is_set():
            try:
                async with asyncio.timeout(0.25):
                    await release.wait()
            except TimeoutError:
                if await request.is_disconnected():
                    return

    async def _pause(self) -> None:
        if self.state.latency_ms > 0:
            await asyncio.sleep(self.latency_s)

    async def _serve(
        self,
        request: Request,
        route: str,
        error: ErrorWriter,
        build: Callable[[dict[str, Any]], _Reply],
        complete: Callable[[_Reply], Any],
        stream: Callable[[_Reply, Call], AsyncIterator[bytes]] | None = None,
    ) -> Response:
        """What every model route does: read the JSON object body, count the call under
        `route` and its model, answer the next injected fault for that model in the
        route's error format (`error`), judge the parameters (`parameters.check`), `build` the
        reply (a `BadRequest` of either becomes a 400),
        then answer it whole (`complete`, after the configured latency) or, when the body
        asks for `stream` and the route streams, as the events of `stream`."""
        try:
            body = await _read_object(request)
            model = body.get("model") if isinstance(body.get("model"), str) else None
            self.state.record(route, model)
            streaming = stream is not None and body.get("stream") is True
            fault = await self._fault_response(request, model, error, streaming)
            if isinstance(fault, Response):
                return fault
            parameters.check(route, body, _betas(request))
            reply = build(body)
        except BadRequest as exc:
            if exc.details is not None:
                return error(400, str(exc), exc.param, code=exc.code, details=exc.details)
            return error(400, str(exc), exc.param, code=exc.code)
        if stream is not None and streaming:
            call = Call(body)
            if fault is not None:
                call.stream_error = (fault.stream_error_after, fault.error_type)
            return StreamingResponse(stream(reply, call), media_type="text/event-stream")
        await self._pause()
        return _json(complete(reply))

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: OpenAI Chat Completions, JSON or SSE (`stream`),
        after any injected fault; invalid bodies get OpenAI's 400 error."""

        def stream(reply: OpenAIReply, call: Call) -> AsyncIterator[bytes]:
            options = call.body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return stream_openai(
                reply, include_usage, self.latency_s, self.state, *call.stream_error
            )

        return await self._serve(
            request,
            "/v1/chat/completions",
            openai_error,
            lambda body: build_openai_reply(body, self.state.prompt_cache),
            OpenAIReply.completion,
            stream,
        )

    async def messages(self, request: Request) -> Response:
        """POST /v1/messages: Anthropic Messages, JSON or SSE (`stream`), after any injected
        fault; invalid bodies get Anthropic's 400 error."""
        return await self._serve(
            request,
            "/v1/messages",
            anthropic_error,
            lambda body: build_anthropic_reply(body, self.state.prompt_cache),
            AnthropicReply.complete,
            lambda reply, call: stream_anthropic(
                reply, self.latency_s, self.state, *call.stream_error
            ),
        )

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's count_tokens: the input tokens a Messages call with this body would
        report (one simulated token a word), without `max_tokens`."""

        def count(body: dict[str, Any]) -> int:
            _validate_anthropic(body)
            return prompt_words(body["messages"], body.get("system"))

        return await self._serve(
            request,
            "/v1/messages/count_tokens",
            anthropic_error,
            count,
            lambda counted: {"input_tokens": counted},
        )

    async def input_tokens(self, request: Request) -> Response:
        """OpenAI's Responses input token count: the `input_tokens` a Responses call with
        this body would report (one simulated token a word); the commonest parameters the
        endpoint does not take (`stream`, `store`, `background`, `max_output_tokens`,
        sampling, `metadata`) get a 400 naming them, as the real API answers (the gateway
        refuses the whole list before they would reach it)."""

        def count(body: dict[str, Any]) -> int:
            for name in _NOT_COUNTED:
                if name in body:
                    raise BadRequest(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
            return build_responses_reply(body).input_tokens

        return await self._serve(
            request,
            "/v1/responses/input_tokens",
            openai_error,
            count,
            lambda counted: {"object": "response.input_tokens", "input_tokens": counted},
        )

    async def responses(self, request: Request) -> Response:
        """POST /v1/responses: OpenAI Responses, JSON or SSE (`stream`), stateless; invalid
        bodies get OpenAI's 400 error."""
        return await self._serve(
            request,
            "/v1/responses",
            openai_error,
            lambda body: build_responses_reply(body, self.state.prompt_cache),
            lambda reply: reply.response(reply.status),
            lambda reply, call: stream_responses(
                reply, self.latency_s, self.state, *call.stream_error
            ),
        )

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings: OpenAI Embeddings; invalid bodies get OpenAI's 400 error."""
        return await self._serve(
            request, "/v1/embeddings", openai_error, build_embeddings, lambda result: result
        )

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the simulated models, as OpenAI lists models."""
        self.state.record("/v1/models", None)
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "switchyard-simulator",
                    }
                    for name in SIMULATED_MODELS
                ],
            }
        )

    # ---- control API

    async def add_faults(self, request: Request) -> Response:
        """POST /_sim/faults: queue `count` copies of the fault in the body (`status`,
        `retry_after` seconds, `should_retry`, `hang`, `model`, `stream_error_after`,
        `error_type`); answers 201 with `faults_pending`, or 400 for a bad fault."""
        try:
            body = await _read_object(request)
            fault, count = _parse_fault(body)
        except BadRequest as exc:
            return openai_error(400, str(exc), exc.param, code=exc.code)
        self.state.faults.extend(Fault(**vars(fault)) for _ in range(count))
        return _json({"faults_pending": len(self.state.faults)}, 201)

    async def clear_faults(self, request: Request) -> Response:
        """DELETE /_sim/faults: drop pending faults and release hanging requests."""
        self.state.clear_faults()
        return _json({"faults_pending": 0})

    async def set_latency(self, request: Request) -> Response:
        """PUT /_sim/latency: set the base latency from `{"latency_ms": n}` (n >= 0
        milliseconds); 400 otherwise."""
        try:
            body = await _read_object(request)
        except BadRequest as exc:
            return openai_error(400, str(exc))
        latency = body.get("latency_ms")
        if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
            return openai_error(
                400, "'latency_ms' must be a number >= 0.", "latency_ms", code="invalid_value"
            )
        self.state.latency_ms = float(latency)
        return _json({"latency_ms": self.state.latency_ms})

    async def stats(self, request: Request) -> Response:
        """GET /_sim/stats: the counters of `SimulatorState.stats`."""
        return _json(self.state.stats())

    async def reset(self, request: Request) -> Response:
        """POST /_sim/reset: clear faults, prompt cache and counters; answers the (zeroed) stats."""
        self.state.reset()
        return _json(self.state.stats())


def _parse_fault(body: dict[str, Any]) -> tuple[Fault, int]:
    status = body.get("status", 500)
    count = body.get("count", 1)
    retry_after = body.get("retry_after")
    model = body.get("model")
    stream_error_after = body.get("stream_error_after")
    if stream_error_after is not None and (
        not isinstance(stream_error_after, int)
        or isinstance(stream_error_after, bool)
        or stream_error_after < 0
    ):
        raise BadRequest(
            "'stream_error_after' must be an integer >= 0, or null.",
            "stream_error_after",
            "invalid_value",
        )
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise BadRequest(
            "'status' must be an HTTP error status (400-599).", "status", "invalid_value"
        )
    if not isinstance(count, int) or count < 1:
        raise BadRequest("'count' must be a positive integer.", "count", "invalid_value")
    if retry_after is not None and (not isinstance(retry_after, int | float) or retry_after < 0):
        raise BadRequest(
            "'retry_after' must be a number of seconds >= 0, or null.",
            "retry_after",
            "invalid_value",
        )
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string or null.", "model", "invalid_type")
    error_type = body.get("error_type")
    if error_type is not None and not isinstance(error_type, str):
        raise BadRequest("'error_type' must be a string or null.", "error_type", "invalid_type")
    should_retry = body.get("should_retry")
    if should_retry is not None and not isinstance(should_retry, bool):
        raise BadRequest(
            "'should_retry' must be true, false or null.", "should_retry", "invalid_type"
        )
    return Fault(
        status=status,
        retry_after=retry_after,
        should_retry=should_retry,
        hang=bool(body.get("hang", False)),
        model=model,
        stream_error_after=stream_error_after,
        error_type=error_type,
    ), count


async def _metrics(_: Request) -> Response:
    """Prometheus exposition of the simulator process (so a scrape config can include it),
    without the services' metric families its process may have registered by importing
    them (`OwnFamilies`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    from switchyard.common.metrics import OwnFamilies

    own = OwnFamilies(REGISTRY, "simulator")
    return Response(generate_latest(own), media_type=CONTENT_TYPE_LATEST)


# What each simulator route is for, in its OpenAPI document.
_SUMMARIES = {
    "/v1/chat/completions": "OpenAI Chat Completions (JSON or SSE streaming)",
    "/v1/messages": "Anthropic Messages (JSON or SSE streaming)",
    "/v1/messages/count_tokens": "Anthropic token counting",
    "/v1/responses": "OpenAI Responses (JSON or SSE streaming; stateless)",
    "/v1/responses/input_tokens": "OpenAI Responses input token counting",
    "/v1/embeddings": "OpenAI Embeddings",
    "/v1/models": "The simulated models",
    "/_sim/faults": "Inject faults (POST) or clear them (DELETE)",
    "/_sim/latency": "Change the base latency of every reply",
    "/_sim/stats": "Calls served, by route and model; faults served",
    "/_sim/reset": "Clear faults and counters",
    "/livez": "Liveness: the process is up",
    "/readyz": "Readiness: the simulator answers",
}


async def _livez(_: Request) -> Response:
    return _json({"status": "ok"})


async def _readyz(_: Request) -> Response:
    # Nothing to depend on: ready as soon as it listens.
    return _json({"status": "ok", "checks": {}})


def simulator_openapi(routes: list[Route]) -> dict[str, Any]:
    """A minimal OpenAPI 3.1 document of the simulator's routes (bodies are the providers')."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.path in ("/metrics",) or not route.methods:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            tag = "control" if route.path.startswith("/_sim") else "provider"
            if route.path in ("/livez", "/readyz"):
                tag = "operations"
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": _SUMMARIES.get(route.path, route.path),
                "tags": [tag],
                "responses": {"200": {"description": "Success"}},
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchyard provider simulator",
            "version": "1.0.0",
            "description": "Speaks the OpenAI and Anthropic wire protocols; "
            "`/_sim/*` injects faults and latency.",
        },
        "paths": paths,
    }


class _Faults(ClientDisconnectGuard):
    """`ClientDisconnectGuard` answering a fault of the simulator itself as the API called
    answers one: Anthropic's 500 (`api_error`) under `/v1/messages`, OpenAI's elsewhere."""

    def answer(self, scope: Scope, error: APIError) -> Response:
        """The answer to a fault of the request in `scope` (the simulator has no database:
        every `error` is a 500 of its own)."""
        message = "The simulator failed to answer this request."
        if str(scope.get("path", "")).startswith("/v1/messages"):
            return anthropic_error(500, message)
        return openai_error(500, message)


def create_simulator_app(latency_ms: float = 0) -> Starlette:
    """The simulator as a Starlette app: the provider routes, the `/_sim/` control API,
    `/metrics`, `/livez`, `/readyz`, `/openapi.json` and `/docs`. `latency_ms` is the initial
    base latency of every reply, in milliseconds."""
    from switchyard.common.docs import install_docs

    simulator = Simulator(latency_ms)
    routes = [
        Route("/v1/chat/completions", simulator.chat_completions, methods=["POST"]),
        Route("/v1/messages", simulator.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", simulator.count_tokens, methods=["POST"]),
        Route("/v1/responses", simulator.responses, methods=["POST"]),
        Route("/v1/responses/input_tokens", simulator.input_tokens, methods=["POST"]),
        Route("/v1/embeddings", simulator.embeddings, methods=["POST"]),
        Route("/v1/models", simulator.models, methods=["GET"]),
        Route("/_sim/faults", simulator.add_faults, methods=["POST"]),
        Route("/_sim/faults", simulator.clear_faults, methods=["DELETE"]),
        Route("/_sim/latency", simulator.set_latency, methods=["PUT"]),
        Route("/_sim/stats", simulator.stats, methods=["GET"]),
        Route("/_sim/reset", simulator.reset, methods=["POST"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/livez", _livez, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
    ]
    spec = simulator_openapi(routes)

    async def openapi(_: Request) -> Response:
        return _json(spec)

    routes.append(Route("/openapi.json", openapi, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        simulator.state.clear_faults()  # releases hanging requests

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = simulator
    install_docs(app, "Switchyard provider simulator")
    # A client hanging up mid-request is one INFO line, not a traceback.
    app.add_middleware(_Faults)
    return app
