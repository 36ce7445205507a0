"""One adapter per (client API, deployment protocol): it builds the upstream request from
the client's body and turns the upstream's reply or stream into the client's shapes.

The choice is made once per attempt (`adapter_for`):
- same protocol: pass-through. The body goes upstream as received with only `model`
  replaced by the deployment's (and, for a Chat Completions stream, `include_usage`
  merged into `stream_options` so usage can be recorded; the usage chunk the client did
  not ask for is then not relayed). The reply, and every stream event (unknown fields and
  event types included), reach the client as the upstream sent them, with the public
  model name as `model`. Allowed client headers (`anthropic-version`, `anthropic-beta`
  towards Anthropic; `openai-beta` towards OpenAI) are forwarded.
- other protocol: translated once each way by `switchyard.inference.translate`.

OpenAI's Responses API (`openai.responses`) has three: passed through to OpenAI-protocol
deployments that offer it (`responses_api: true` in the routing), translated to Chat
Completions for the other OpenAI-protocol ones, and to Messages for Anthropic ones
(`switchyard.inference.translate_responses`). Its adapters are made per request: every
reply is named with the response id Switchyard gave the request, and
`previous_response_id`, `background`, `store` and `metadata` are served by Switchyard,
never by the upstream. Its input token count (`openai.responses.input_tokens`) is
passed through to the same deployments, counted by an Anthropic deployment's
count_tokens on the translated request, and estimated here for the others.

Adding a client API means adding its adapters here: a pass-through one for the protocol
that serves it natively and translating ones for the others; nothing else in the service
knows the shapes.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import structlog
from typing_extensions import override

from switchyard.common.events import ChatRequested, ClientAPI, StreamEvent, TokenUsage
from switchyard.common.responses import response_id, usage_object
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS, Deployment
from switchyard.inference.errors import ProviderError, invalid_request
from switchyard.inference.tokens import (
    estimate_chat_input_tokens,
    estimate_input_tokens,
    estimate_responses_input_tokens,
)
from switchyard.inference.translate import (
    TRANSLATED_THINKING_SIGNATURE,
    AnthropicToolIds,
    ChatChunksToMessageEvents,
    CompletionAccumulator,
    MessageAccumulator,
    MessageEventsToChatChunks,
    ToolCallIndexes,
    TranslationError,
    chat_completion_to_message,
    chat_request_to_messages,
    message_to_chat_completion,
    messages_request_to_chat,
    messages_usage_from_chat,
    reasoning_signature,
    thinking_enabled,
    tool_use_ids,
    without_translated_thinking,
)
from switchyard.inference.translate_responses import (
    ChatChunksToResponseEvents,
    MessageEventsToResponseEvents,
    ResponseAccumulator,
    ResponseContext,
    chat_completion_to_response,
    is_preamble,
    message_to_response,
    passthrough_body,
    responses_request_to_chat,
    responses_request_to_messages,
)
from switchyard.inference.upstream import (
    SSE,
    credentials_refused,
    invalid_reply,
    responses_code_status,
)
from switchyard.inference.usage import (
    anthropic_usage,
    delta_chars,
    estimate_prompt_tokens,
    estimate_streamed_tokens,
    openai_usage,
    responses_usage,
)

log = structlog.get_logger("switchyard.inference.adapters")

ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
# What a request translated to Anthropic's Messages API takes of the client's headers:
# its betas (a client of another API may ask for one, e.g. a longer context window); the
# version is the upstream client's own, for the body the translation builds.
TRANSLATED_ANTHROPIC_HEADERS = ("anthropic-beta",)


def _event(name: str | None, data: dict[str, Any]) -> StreamEvent:
    # Built from JSON just parsed or shaped here: nothing to validate, once per event.
    return StreamEvent.model_construct(event=name, data=data)


OPENAI_HEADERS = ("openai-beta",)


@dataclass(frozen=True)
class UpstreamCall:
    """What to send upstream: the API it is in, the path, the JSON body, the headers.

    `local`, when set, answers the request without calling the deployment: a blocking
    function (run in a worker thread) returning the client's reply, e.g. a token count
    estimated here for a deployment that cannot count tokens."""

    api: ClientAPI
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    local: Callable[[], dict[str, Any]] | None = None


class StreamTranslation(Protocol):
    """Turns one upstream stream into the client's stream events."""

    def feed(self, sse: SSE) -> list[StreamEvent]:
        """The client events for one upstream event (possibly none)."""
        ...

    def finish(self) -> list[StreamEvent]:
        """The client events that close the stream once the upstream's has ended."""
        ...

    def release(self) -> list[StreamEvent]:
        """The client events held back so far (a translated tool call not yet opened,
        text waiting for a call's arguments), the stream left open: sent when the
        upstream's stream fails, so that the client and the failure's record keep what
        it sent."""
        ...

    def usage(self) -> TokenUsage:
        """The tokens the upstream reported so far."""
        ...


class Accumulator(Protocol):
    """Assembles the events of one stream in the client's API (their JSON `data`) into
    the reply the same request would have got unstreamed. `deltas` counts the content
    deltas added and `chars` the characters of generated text they carried: the
    output-token estimate of a stream stopped before its usage (`estimate_streamed_tokens`)."""

    deltas: int
    chars: int

    def add(self, data: dict[str, Any]) -> None:
        """Take the next stream event's `data` (in the client's API)."""
        ...

    def response(self) -> dict[str, Any]:
        """The reply the events added so far assemble to, in the client's API."""
        ...


class Adapter(Protocol):
    """How a request of one client API is served by a deployment of one protocol."""

    api: ClientAPI

    def request(
        self,
        body: dict[str, Any],
        headers: Mapping[str, str],
        deployment: Deployment,
        stream: bool,
    ) -> UpstreamCall:
        """The upstream request. Raises ProviderError (400, naming the client's parameter
        in its API's words) for what the deployment's protocol cannot express (code
        `unsupported_parameter`: another deployment may take it) and for what a
        translation renames or reshapes and the client's API itself refuses (OpenAI's
        code for it, e.g. `integer_below_min_value`)."""
        ...

    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        """The client's reply (with the public `model`) and the usage, from the
        upstream's JSON reply. Raises ProviderError for a reply of the wrong shape."""
        ...

    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        """The translation of the upstream's stream for the client's request `body`,
        naming the public `model` in its events. Raises ProviderError (400, `stream`)
        for an API that is never streamed."""
        ...

    def accumulator(self) -> Accumulator:
        """Assembles the client's stream events into the client's reply."""
        ...

    def is_preamble(self, event: StreamEvent) -> bool:
        """Whether a client stream event only opens the stream (no content yet): such
        events are held back, so a failure before any content can still be retried or
        fall back without the client seeing two beginnings."""
        ...


def _forwarded(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


def check_forwarded_headers(headers: Mapping[str, str]) -> None:
    """Raises the 400 naming the header (`param`) when one of a request's provider
    `headers` (`FORWARDED_HEADERS`, whichever the deployment's adapter sends on) has a
    value beyond printable ASCII. HTTP carries such a byte only as opaque `obs-text`,
    which the client's framework decoded as Latin-1: openai's SDK refuses to send it and
    anthropic's re-encodes it as UTF-8 (other bytes than the client's). Checked for every
    header and every deployment alike, so the answer does not depend on which deployment
    of the model is tried first; no beta or version name has a use for such a character."""
    for name in sorted(headers):
        if not _HEADER_VALUE.fullmatch(headers[name]):
            raise invalid_request(
                f"The '{name}' header's value has a character HTTP headers cannot carry: "
                "only printable ASCII is allowed.",
                param=name,
            )


# A header value the upstream receives byte for byte as the client sent it: visible
# ASCII, spaces and tabs.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def anthropic_betas(headers: Mapping[str, str]) -> frozenset[str]:
    """The values of a request's `anthropic-beta` header (comma-separated, Anthropic's
    "Beta headers"), as a set; empty when it has none."""
    value = headers.get("anthropic-beta") or ""
    return frozenset(beta.strip() for beta in value.split(",") if beta.strip())


def _translated(build: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`build(*args, **kwargs)`, a TranslationError raised as the 400 the client gets (its
    message, `param` and code). Any other error a translation raises comes from a shape
    of the client's body it did not expect (a number where text belongs...): a 400 too,
    never a 500 for the client's own input, logged so that the check naming the field
    can be added."""
    try:
        return build(*args, **kwargs)
    except TranslationError as exc:
        raise invalid_request(
            exc.message, param=exc.param, code=exc.code, details=exc.details
        ) from exc
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        log.warning("request body of an unexpected shape", error=repr(exc), exc_info=True)
        raise invalid_request(
            "The request has a field of a type or shape this model's API cannot take "
            "(for example a number where text belongs).",
            code="invalid_type",
        ) from exc


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chat_preamble(event: StreamEvent) -> bool:
    data = event.data
    if data.get("usage"):
        return False
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("finish_reason"):
            return False
        for key, value in (choice.get("delta") or {}).items():
            if key != "role" and value:
                return False
    return True


def _messages_preamble(event: StreamEvent) -> bool:
    kind = event.data.get("type")
    if kind in ("message_start", "ping"):
        return True
    if kind == "content_block_start":
        block = event.data.get("content_block") or {}
        return block.get("type") in ("text", "thinking") and not (
            block.get("text") or block.get("thinking")
        )
    return False


# --------------------------------------------------------------------------- streams


class _ChatPassThroughStream:
    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self._usage = TokenUsage()
        self._indexes: dict[Any, ToolCallIndexes] = {}  # by choice index

    def feed(self, sse: SSE) -> list[StreamEvent]:
        data = sse.data
        if "model" in data:
            data["model"] = self.model
        for choice in data.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if isinstance(delta, dict) and isinstance(calls, list) and calls:
                # A server that leaves `index` out (Gemini's) gets one: the client's API
                # requires it (the SDKs' stream readers refuse a call without one).
                indexes = self._indexes.setdefault(choice.get("index"), ToolCallIndexes())
                delta["tool_calls"] = indexes.indexed(
                    [call for call in calls if isinstance(call, dict)]
                )
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage = openai_usage(usage)
        if not self.include_usage:
            if usage is not None and not data.get("choices"):
                return []  # the usage chunk the client did not ask for
            data.pop("usage", None)
        return [_event(sse.event, data)]

    def finish(self) -> list[StreamEvent]:
        return []

    def release(self) -> list[StreamEvent]:
        return []

    def usage(self) -> TokenUsage:
        return self._usage


class _MessagesUsage:
    """Anthropic usage of a stream: `message_start` gives the first counts, each
    `message_delta` cumulative totals that overwrite them."""

    def __init__(self) -> None:
        self.native: dict[str, Any] = {}

    def track(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self.native = dict(message["usage"])
        elif kind == "message_delta":
            for name, value in (data.get("usage") or {}).items():
                if value is not None:
                    self.native[name] = value

    def usage(self) -> TokenUsage:
        return anthropic_usage(self.native)


class _MessagesPassThroughStream:
    def __init__(self, model: str) -> None:
        self.model = model
        self._usage = _MessagesUsage()

    def feed(self, sse: SSE) -> list[StreamEvent]:
        data = sse.data
        self._usage.track(data)
        if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
            data["message"] = {**data["message"], "model": self.model}
        return [_event(sse.event or data.get("type"), data)]

    def finish(self) -> list[StreamEvent]:
        return []

    def release(self) -> list[StreamEvent]:
        return []

    def usage(self) -> TokenUsage:
        return self._usage.usage()


class _ChatFromMessagesStream:
    """Anthropic upstream events -> Chat Completions chunks."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._converter = MessageEventsToChatChunks(model, include_usage=include_usage)
        self._usage = _MessagesUsage()

    def feed(self, sse: SSE) -> list[StreamEvent]:
        self._usage.track(sse.data)
        return [_event(None, chunk) for chunk in self._converter.feed(sse.data)]

    def finish(self) -> list[StreamEvent]:
        return []

    def release(self) -> list[StreamEvent]:
        return []

    def usage(self) -> TokenUsage:
        return self._usage.usage()


class _UsageEstimate:
    """The usage of a translated stream whose upstream reported none (a server that
    ignores `stream_options.include_usage`): the client is told, and billed, the estimate
    inference bills a stream stopped before its usage by (`estimate_prompt_tokens` of
    the client's `body`; the text of the content deltas the client got, 4 characters a
    token and at least a token a delta, `estimate_streamed_tokens`), never 0 tokens."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.deltas = 0
        self.chars = 0
        self.given: TokenUsage | None = None

    def count(self, events: list[dict[str, Any]], delta_types: tuple[str, ...]) -> None:
        """Count the content deltas among the client's `events`, and their text."""
        for event in events:
            if event.get("type") in delta_types:
                self.deltas += 1
                self.chars += delta_chars(event.get("delta"))

    def usage(self) -> TokenUsage:
        """The estimate, as given to the client (and kept for `usage()`)."""
        self.given = TokenUsage(
            input_tokens=estimate_prompt_tokens(self._body),
            output_tokens=estimate_streamed_tokens(self.chars, self.deltas),
        )
        return self.given


# The Messages events that are content deltas, as `MessageAccumulator` counts them.
_MESSAGES_DELTAS = ("content_block_delta",)
# The Responses events that are content deltas.
_RESPONSES_DELTAS = (
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
)


class _MessagesFromChatStream:
    """Chat Completions upstream chunks -> Anthropic events."""

    def __init__(
        self,
        model: str,
        tool_ids: AnthropicToolIds,
        thinking: bool,
        body: dict[str, Any],
        signature: str = TRANSLATED_THINKING_SIGNATURE,
    ) -> None:
        self._converter = ChatChunksToMessageEvents(
            model, tool_ids, thinking=thinking, signature=signature
        )
        self._usage = TokenUsage()
        self._estimate = _UsageEstimate(body)

    def feed(self, sse: SSE) -> list[StreamEvent]:
        usage = sse.data.get("usage")
        if isinstance(usage, dict):
            self._usage = openai_usage(usage)
        events = self._converter.feed(sse.data)
        self._estimate.count(events, _MESSAGES_DELTAS)
        return [_event(e["type"], e) for e in events]

    def finish(self) -> list[StreamEvent]:
        events = self._converter.finish()
        if not self._usage.total_tokens:
            self._estimate.count(events, _MESSAGES_DELTAS)  # a thinking block's signature
            estimate = self._estimate.usage()
            for event in events:
                if event["type"] == "message_delta":
                    event["usage"] = messages_usage_from_chat(
                        {
                            "prompt_tokens": estimate.input_tokens,
                            "completion_tokens": estimate.output_tokens,
                        }
                    )
        return [_event(e["type"], e) for e in events]

    def release(self) -> list[StreamEvent]:
        events = self._converter.release()
        self._estimate.count(events, _MESSAGES_DELTAS)
        return [_event(e["type"], e) for e in events]

    def usage(self) -> TokenUsage:
        if not self._usage.total_tokens and self._estimate.given is not None:
            return self._estimate.given
        return self._usage


# Google's documented value for a function call whose thought signature is not at hand
# ("Thought signatures": a conversation moved from another model, or whose signatures a
# client could not keep): Gemini 3 refuses with 400 a tool loop whose calls lack one.
GEMINI_SKIP_SIGNATURE = "skip_thought_signature_validator"


def with_gemini_signatures(payload: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """A Chat Completions request translated from another API (`payload`, changed in
    place and returned), for a `gemini` deployment: every assistant tool call without
    `extra_content.google.thought_signature` gets `GEMINI_SKIP_SIGNATURE`. Anthropic's
    and the Responses API's clients have no place to keep Gemini's signatures, so their
    tool loops would otherwise be refused from the second turn on. Other deployments'
    requests are returned as they are."""
    if deployment.provider != "gemini":
        return payload
    for message in payload.get("messages") or ():
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or ():
            extra = call.setdefault("extra_content", {})
            if isinstance(extra, dict):
                google = extra.setdefault("google", {})
                if isinstance(google, dict):
                    google.setdefault("thought_signature", GEMINI_SKIP_SIGNATURE)
    return payload


def reasoning_origin(deployment: Deployment) -> str:
    """Where `deployment`'s reasoning text comes from, for `reasoning_signature`: the host
    and port of its base URL, lower-cased (two deployments of one server share it), or
    its provider kind when it has none."""
    if not deployment.base_url:
        return deployment.provider
    return urllib.parse.urlsplit(deployment.base_url).netloc.lower() or deployment.provider


def with_estimated_usage(
    reply: dict[str, Any], api: ClientAPI, usage: TokenUsage
) -> dict[str, Any]:
    """A translated whole `reply` in the client's `api` whose upstream reported no usage,
    telling the client the estimate `usage` it is billed by (as a translated stream's
    last event does): Chat Completions' `usage`, Anthropic's `usage`, the Responses API's
    `usage`. `reply` is changed in place and returned."""
    if api is ClientAPI.OPENAI_CHAT_COMPLETIONS:
        reply["usage"] = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
    elif api is ClientAPI.ANTHROPIC_MESSAGES:
        reply["usage"] = messages_usage_from_chat(
            {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens}
        )
    elif api is ClientAPI.OPENAI_RESPONSES:
        reply["usage"] = usage_object(usage)
    return reply


# --------------------------------------------------------------------------- adapters


# The most of an upstream's own error message a reply's failure quotes, in characters.
QUOTED_ERROR_CHARS = 1000


def _require(native: dict[str, Any], field: str, kind: type, model: str) -> None:
    """Raises unless the upstream's reply `native` holds `field` of type `kind`: the 502 of
    an error object answered with status 200 (some OpenAI-compatible servers and proxies
    answer so), quoting its message; else the invalid-reply 502."""
    if isinstance(native.get(field), kind):
        return
    error = native.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if field not in native and isinstance(message, str) and message:
        raise ProviderError(
            502,
            None,
            f"The upstream answered with an error, with status 200: {message[:QUOTED_ERROR_CHARS]}",
            retryable=True,
            kind="upstream_error",
        )
    raise invalid_reply(model)  # renamed after the deployment by the caller


class ChatPassThrough(Adapter):
    """Chat Completions to an OpenAI-protocol deployment."""

    api = ClientAPI.OPENAI_CHAT_COMPLETIONS

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = {**body, "model": deployment.model}
        if stream:
            payload["stream"] = True
            options = body.get("stream_options")
            payload["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return UpstreamCall(
            ClientAPI.OPENAI_CHAT_COMPLETIONS,
            "/chat/completions",
            payload,
            _forwarded(headers, OPENAI_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "choices", list, model)
        native["model"] = model
        return native, openai_usage(native.get("usage"))

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _ChatPassThroughStream(model, _wants_usage(body))

    @override
    def accumulator(self) -> Accumulator:
        return CompletionAccumulator()

    @override
    def is_preamble(self, event: StreamEvent) -> bool:
        return _chat_preamble(event)


class ChatViaMessages(ChatPassThrough):
    """Chat Completions to an Anthropic-protocol deployment (translated)."""

    def __init__(self, default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS) -> None:
        self.default_max_tokens = default_max_tokens

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = _translated(
            chat_request_to_messages,
            body,
            default_max_tokens=deployment.default_max_tokens or self.default_max_tokens,
            mid_conversation_system_messages=deployment.mid_conversation_system_messages,
            thinking_type=deployment.thinking_type or "enabled",
        )
        payload["model"] = deployment.model
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        return UpstreamCall(
            ClientAPI.ANTHROPIC_MESSAGES,
            "/v1/messages",
            payload,
            _forwarded(headers, TRANSLATED_ANTHROPIC_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "content", list, model)
        return message_to_chat_completion(native, model), anthropic_usage(native.get("usage"))

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _ChatFromMessagesStream(model, _wants_usage(body))


class MessagesPassThrough(Adapter):
    """Anthropic Messages to an Anthropic-protocol deployment."""

    api = ClientAPI.ANTHROPIC_MESSAGES

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        # Thinking made from another server's reasoning goes to no Anthropic model.
        payload = {**without_translated_thinking(body), "model": deployment.model}
        if stream:
            payload["stream"] = True
        return UpstreamCall(
            ClientAPI.ANTHROPIC_MESSAGES,
            "/v1/messages",
            payload,
            _forwarded(headers, ANTHROPIC_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "content", list, model)
        native["model"] = model
        return native, anthropic_usage(native.get("usage"))

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _MessagesPassThroughStream(model)

    @override
    def accumulator(self) -> Accumulator:
        return MessageAccumulator()

    @override
    def is_preamble(self, event: StreamEvent) -> bool:
        return _messages_preamble(event)


class MessagesViaChat(MessagesPassThrough):
    """Anthropic Messages to an OpenAI-protocol deployment (translated). `taken`: the
    `tool_use` ids of the request's conversation, which the reply's tool calls must not
    reuse (`AnthropicToolIds`); `thinking`: the request enabled thinking, so the server's
    reasoning text reaches the client as thinking blocks."""

    def __init__(
        self,
        taken: frozenset[str] = frozenset(),
        *,
        thinking: bool = False,
        origin: str | None = None,
    ) -> None:
        self._taken = taken
        self._thinking = thinking
        # Thinking blocks made from the deployment's reasoning are signed for its origin,
        # so they go back to it (and to no other server) as `reasoning_content`.
        self._signature = reasoning_signature(origin)

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = _translated(
            messages_request_to_chat,
            body,
            anthropic_betas(headers),
            reasoning_origin=reasoning_origin(deployment),
        )
        with_gemini_signatures(payload, deployment)
        payload["model"] = deployment.model
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        else:
            payload.pop("stream", None)
            payload.pop("stream_options", None)
        return UpstreamCall(ClientAPI.OPENAI_CHAT_COMPLETIONS, "/chat/completions", payload, {})

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "choices", list, model)
        message = chat_completion_to_message(
            native,
            model,
            AnthropicToolIds(self._taken),
            thinking=self._thinking,
            signature=self._signature,
        )
        return message, openai_usage(native.get("usage"))

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _MessagesFromChatStream(
            model, AnthropicToolIds(self._taken), self._thinking, body, self._signature
        )


class _NotStreamed(Adapter):
    """What every adapter of an API that is never streamed shares: asking for a stream is
    a 400 naming `stream`, and no event is a preamble."""

    not_streamed = "This API is not streamed."

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        raise invalid_request(self.not_streamed, param="stream")

    @override
    def is_preamble(self, event: StreamEvent) -> bool:
        return False


class _NotStreamedPassThrough(_NotStreamed):
    """A pass-through of an API that is never streamed: the body goes to the upstream's
    `path` as received, with only `model` replaced by the deployment's, and the client
    headers named in `forwarded_headers`."""

    path: str
    forwarded_headers: tuple[str, ...]

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        return UpstreamCall(
            self.api,
            self.path,
            {**body, "model": deployment.model},
            _forwarded(headers, self.forwarded_headers),
        )


class EmbeddingsPassThrough(_NotStreamedPassThrough):
    """Embeddings to an OpenAI-protocol deployment (never streamed)."""

    api = ClientAPI.OPENAI_EMBEDDINGS
    not_streamed = "Embeddings are not streamed."
    path = "/embeddings"
    forwarded_headers = OPENAI_HEADERS

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "data", list, model)
        native["model"] = model
        return native, openai_usage(native.get("usage"))

    @override
    def accumulator(self) -> Accumulator:
        return CompletionAccumulator()


class CountTokensPassThrough(_NotStreamedPassThrough):
    """Anthropic's count_tokens to an Anthropic-protocol deployment (its own count; the
    upstream client maps the path for Vertex AI and Bedrock). Nothing is billed."""

    api = ClientAPI.ANTHROPIC_COUNT_TOKENS
    not_streamed = "Token counts are not streamed."
    path = "/v1/messages/count_tokens"
    forwarded_headers = ANTHROPIC_HEADERS

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        # Counted as the message would be sent (`MessagesPassThrough`).
        return super().request(without_translated_thinking(body), headers, deployment, stream)

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "input_tokens", int, model)
        return native, TokenUsage()

    @override
    def accumulator(self) -> Accumulator:
        return MessageAccumulator()


class CountTokensEstimate(CountTokensPassThrough):
    """Anthropic's count_tokens for an OpenAI-protocol deployment, which has no such
    endpoint: estimated here with a tokenizer (`switchyard.inference.tokens`), without
    calling the deployment. The reply's `upstream_api` is then None, which the gateway
    tells the client (`x-switchyard-token-count: estimate`). A body `/v1/messages` would
    refuse for this deployment (a bad role or content, a feature translation cannot carry)
    is refused here too, with the same 400: a count is only worth what it counts."""

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        # The same checks as a message to this deployment. count_tokens takes no
        # max_tokens: one no thinking budget reaches stands in for it.
        _translated(messages_request_to_chat, {**body, "max_tokens": 2**31 - 1})

        def estimate() -> dict[str, Any]:
            return {"input_tokens": estimate_input_tokens(body)}

        return UpstreamCall(ClientAPI.ANTHROPIC_COUNT_TOKENS, "", {}, {}, local=estimate)


# Fields of an Anthropic Messages body that its count_tokens takes
# (https://docs.anthropic.com/en/api/messages-count-tokens); the others (`max_tokens`,
# sampling, `stream`, `metadata`...) it refuses.
_COUNT_TOKENS_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
)


def input_tokens_object(count: int) -> dict[str, Any]:
    """OpenAI's answer to `POST /v1/responses/input_tokens`
    (https://platform.openai.com/docs/api-reference/responses/input-tokens)."""
    return {"object": "response.input_tokens", "input_tokens": count}


class InputTokensPassThrough(_NotStreamed):
    """OpenAI's Responses input token count to an OpenAI-protocol deployment that counts
    it (`responses_api` and `responses_input_tokens`): its own count
    (`POST /responses/input_tokens`), the body as `POST /responses` would send it (the
    previous conversation's items before `input`, `passthrough_body`). Nothing is
    billed."""

    api = ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS
    not_streamed = "Token counts are not streamed."

    def __init__(self, request: ChatRequested) -> None:
        self.previous_items = request.data.previous_items

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        return UpstreamCall(
            ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS,
            "/responses/input_tokens",
            passthrough_body(body, self.previous_items, deployment.model),
            _forwarded(headers, OPENAI_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "input_tokens", int, model)
        return input_tokens_object(native["input_tokens"]), TokenUsage()

    @override
    def accumulator(self) -> Accumulator:
        return CompletionAccumulator()


class InputTokensViaMessages(InputTokensPassThrough):
    """OpenAI's Responses input token count for an Anthropic-protocol deployment: the
    request translated as `POST /v1/responses` would be (`responses_request_to_messages`,
    refusing what it refuses), and counted by the deployment's own count_tokens (the
    upstream client maps the path for Vertex AI and Bedrock)."""

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        if body.get("input") is None and not self.previous_items:
            # OpenAI's count takes no `input`; Anthropic's counts messages, so at least one.
            raise invalid_request(
                "'input' is required by this model: its deployment speaks Anthropic's "
                "Messages API, which counts only a conversation of at least one message.",
                param="input",
                code="unsupported_parameter",
            )
        message = _translated(
            responses_request_to_messages,
            body,
            self.previous_items,
            mid_conversation_system_messages=deployment.mid_conversation_system_messages,
            thinking_type=deployment.thinking_type or "enabled",
        )
        payload = {name: message[name] for name in _COUNT_TOKENS_FIELDS if name in message}
        payload["model"] = deployment.model
        return UpstreamCall(
            ClientAPI.ANTHROPIC_COUNT_TOKENS,
            CountTokensPassThrough.path,
            payload,
            _forwarded(headers, TRANSLATED_ANTHROPIC_HEADERS),
        )


class InputTokensEstimate(InputTokensPassThrough):
    """OpenAI's Responses input token count for an OpenAI-protocol deployment without a
    counting endpoint, estimated here with a tokenizer without calling it (`upstream_api`
    None: the gateway answers `x-switchyard-token-count: estimate`). What is counted is
    what `POST /v1/responses` would send: to a Chat-Completions-only deployment the
    translated request (`responses_request_to_chat`, refusing what it refuses), to one
    offering the Responses API without `responses_input_tokens` the body it would pass
    through (built-in tools and all)."""

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        count: Callable[[], int]
        if deployment.responses_api:
            native = passthrough_body(body, self.previous_items, deployment.model)
            count = partial(estimate_responses_input_tokens, native)
        else:
            payload = _translated(
                responses_request_to_chat, body, self.previous_items, counting=True
            )
            count = partial(estimate_chat_input_tokens, payload)

        def estimate() -> dict[str, Any]:
            return input_tokens_object(count())

        return UpstreamCall(ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS, "", {}, {}, local=estimate)


# --------------------------------------------------------------------------- Responses API


def response_context(request: ChatRequested) -> ResponseContext:
    """What every reply to a Responses request echoes: its body, the response id (from the
    request id and the time the gateway accepted it), and the public model name."""
    return ResponseContext(
        body=request.data.body,
        response_id=response_id(request.request_id, request.time),
        created_at=request.time,
        model=request.data.model,
    )


def _as_switchyards(response: dict[str, Any], ctx: ResponseContext) -> None:
    """An upstream's response renamed as the client's: Switchyard's id (retrieving and
    chaining go through Switchyard) and creation time (when the gateway accepted it, as
    its id says and as a queued background response showed it: the upstream's is when
    inference reached it), the public model, and the parameters Switchyard served
    instead of the upstream."""
    response["id"] = ctx.response_id
    response["created_at"] = int(ctx.created_at.timestamp())
    response["model"] = ctx.model
    response["previous_response_id"] = ctx.body.get("previous_response_id")
    response["background"] = ctx.body.get("background") is True


def response_failed(response: dict[str, Any], deployment_protocol: str = "openai") -> ProviderError:
    """The ProviderError of an upstream response that ended `failed` (its `error` has a
    `code` and `message`), with the status its code stands for (`responses_code_status`:
    429 for a rate limit, 400 for an invalid prompt or image, else 500)."""
    error: Any = response.get("error") if isinstance(response.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    status = responses_code_status(code)
    message = error.get("message") if isinstance(error.get("message"), str) else None
    if code == "invalid_api_key":  # Switchyard's key refused: as its status says it
        return credentials_refused(None, 401, message or "", None, in_stream=True)
    return ProviderError(
        status,
        None,
        message or "The upstream response failed.",
        code=code,
        kind="upstream_error",
        vendor=deployment_protocol,
        retryable=status >= 500 or status == 429,
        unhealthy=status >= 500,
    )


class _ResponsesPassThroughStream:
    """The upstream's Responses events as it sent them, renamed (`_as_switchyards`); a
    `response.failed` ends the request as a failure (the gateway writes the client's
    failure events, so a stream never shows two)."""

    def __init__(self, ctx: ResponseContext) -> None:
        self.ctx = ctx
        self._usage = TokenUsage()

    def feed(self, sse: SSE) -> list[StreamEvent]:
        data = sse.data
        kind = data.get("type") or sse.event
        response = data.get("response")
        if isinstance(response, dict):
            if kind == "response.failed":
                raise response_failed(response)
            _as_switchyards(response, self.ctx)
            if isinstance(response.get("usage"), dict):
                self._usage = responses_usage(response["usage"])
        return [_event(sse.event or kind, data)]

    def finish(self) -> list[StreamEvent]:
        return []

    def release(self) -> list[StreamEvent]:
        return []

    def usage(self) -> TokenUsage:
        return self._usage


class _ResponsesFromChatStream:
    """Chat Completions upstream chunks -> Responses events."""

    def __init__(self, ctx: ResponseContext) -> None:
        self._usage = TokenUsage()
        self._estimate = _UsageEstimate(ctx.body)
        self._converter = ChatChunksToResponseEvents(ctx, lambda: self._usage)

    def feed(self, sse: SSE) -> list[StreamEvent]:
        usage = sse.data.get("usage")
        if isinstance(usage, dict):
            self._usage = openai_usage(usage)
        events = self._converter.feed(sse.data)
        self._estimate.count(events, _RESPONSES_DELTAS)
        return [_event(e["type"], e) for e in events]

    def finish(self) -> list[StreamEvent]:
        events = self._converter.finish()
        if not self._usage.total_tokens:
            self._estimate.count(events, _RESPONSES_DELTAS)  # text and calls held till now
            estimate = usage_object(self._estimate.usage())
            for event in events:
                response = event.get("response")
                if event["type"] in _RESPONSE_ENDS and isinstance(response, dict):
                    response["usage"] = estimate
        return [_event(e["type"], e) for e in events]

    def release(self) -> list[StreamEvent]:
        events = self._converter.release()
        self._estimate.count(events, _RESPONSES_DELTAS)
        return [_event(e["type"], e) for e in events]

    def usage(self) -> TokenUsage:
        if not self._usage.total_tokens and self._estimate.given is not None:
            return self._estimate.given
        return self._usage


# The events that end a Responses stream with the response and its usage.
_RESPONSE_ENDS = ("response.completed", "response.incomplete")


class _ResponsesFromMessagesStream:
    """Anthropic upstream events -> Responses events."""

    def __init__(self, ctx: ResponseContext) -> None:
        self._usage = _MessagesUsage()
        self._converter = MessageEventsToResponseEvents(ctx, self._usage.usage)

    def feed(self, sse: SSE) -> list[StreamEvent]:
        self._usage.track(sse.data)
        return [_event(e["type"], e) for e in self._converter.feed(sse.data)]

    def finish(self) -> list[StreamEvent]:
        return [_event(e["type"], e) for e in self._converter.finish()]

    def release(self) -> list[StreamEvent]:
        return []

    def usage(self) -> TokenUsage:
        return self._usage.usage()


class ResponsesPassThrough(Adapter):
    """Responses to an OpenAI-protocol deployment offering the Responses API."""

    api = ClientAPI.OPENAI_RESPONSES

    def __init__(self, request: ChatRequested) -> None:
        self.ctx = response_context(request)
        self.previous_items = request.data.previous_items

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = passthrough_body(body, self.previous_items, deployment.model)
        if stream:
            payload["stream"] = True
        return UpstreamCall(
            ClientAPI.OPENAI_RESPONSES,
            "/responses",
            payload,
            _forwarded(headers, OPENAI_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "output", list, model)
        if native.get("status") == "failed":
            raise response_failed(native)
        _as_switchyards(native, self.ctx)
        return native, responses_usage(native.get("usage"))

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _ResponsesPassThroughStream(self.ctx)

    @override
    def accumulator(self) -> Accumulator:
        return ResponseAccumulator()

    @override
    def is_preamble(self, event: StreamEvent) -> bool:
        return is_preamble(event.data)


class ResponsesViaChat(ResponsesPassThrough):
    """Responses to an OpenAI-protocol deployment offering Chat Completions only
    (translated). `origin`: the deployment's (`reasoning_origin`), whose reasoning text
    becomes reasoning items signed for it, which go back to it."""

    def __init__(self, request: ChatRequested, origin: str | None = None) -> None:
        super().__init__(request)
        self.ctx = dataclasses.replace(self.ctx, reasoning_signature=reasoning_signature(origin))

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = _translated(
            responses_request_to_chat,
            body,
            self.previous_items,
            reasoning_origin=reasoning_origin(deployment),
        )
        with_gemini_signatures(payload, deployment)
        payload["model"] = deployment.model
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        else:
            payload.pop("stream", None)
            payload.pop("stream_options", None)
        return UpstreamCall(ClientAPI.OPENAI_CHAT_COMPLETIONS, "/chat/completions", payload, {})

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "choices", list, model)
        usage = openai_usage(native.get("usage"))
        return chat_completion_to_response(native, self.ctx, usage), usage

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _ResponsesFromChatStream(self.ctx)


class ResponsesViaMessages(ResponsesPassThrough):
    """Responses to an Anthropic-protocol deployment (translated)."""

    def __init__(
        self, request: ChatRequested, default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS
    ) -> None:
        super().__init__(request)
        self.default_max_tokens = default_max_tokens

    @override
    def request(
        self, body: dict[str, Any], headers: Mapping[str, str], deployment: Deployment, stream: bool
    ) -> UpstreamCall:
        payload = _translated(
            responses_request_to_messages,
            body,
            self.previous_items,
            default_max_tokens=deployment.default_max_tokens or self.default_max_tokens,
            mid_conversation_system_messages=deployment.mid_conversation_system_messages,
            thinking_type=deployment.thinking_type or "enabled",
        )
        payload["model"] = deployment.model
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        return UpstreamCall(
            ClientAPI.ANTHROPIC_MESSAGES,
            "/v1/messages",
            payload,
            _forwarded(headers, TRANSLATED_ANTHROPIC_HEADERS),
        )

    @override
    def reply(self, native: dict[str, Any], model: str) -> tuple[dict[str, Any], TokenUsage]:
        _require(native, "content", list, model)
        usage = anthropic_usage(native.get("usage"))
        return message_to_response(native, self.ctx, usage), usage

    @override
    def stream(self, body: dict[str, Any], model: str) -> StreamTranslation:
        return _ResponsesFromMessagesStream(self.ctx)


# Each client API by the route a client calls it on: what a refusal names.
API_ROUTES = {
    ClientAPI.OPENAI_CHAT_COMPLETIONS: "POST /v1/chat/completions",
    ClientAPI.OPENAI_EMBEDDINGS: "POST /v1/embeddings",
    ClientAPI.OPENAI_RESPONSES: "POST /v1/responses",
    ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS: "POST /v1/responses/input_tokens",
    ClientAPI.ANTHROPIC_MESSAGES: "POST /v1/messages",
    ClientAPI.ANTHROPIC_COUNT_TOKENS: "POST /v1/messages/count_tokens",
}


def unsupported_api(api: ClientAPI, deployment: Deployment) -> ProviderError:
    """Another deployment of the model may offer it: retryable, not unhealthy. The message
    names the route the client called and the kind of provider, not the deployment (an
    operator's name, which clients have no use for)."""
    return ProviderError(
        400,
        None,
        f"This model does not offer {API_ROUTES.get(api, api.value)}: its deployment "
        f"({deployment.provider}) has no such API. Use a model that offers it.",
        code="unsupported_operation",
        retryable=True,
        retry_same=False,
        unhealthy=False,
    )


@dataclass(frozen=True)
class Adapters:
    """The adapter table: client API x deployment protocol."""

    anthropic_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS

    def adapter_for(
        self, api: ClientAPI, deployment: Deployment, request: ChatRequested | None = None
    ) -> Adapter:
        """The adapter serving `api` on `deployment` (Responses adapters need the
        `request` they serve); raises ProviderError when the deployment's protocol
        cannot serve that API at all."""
        protocol = deployment.protocol
        if api is ClientAPI.OPENAI_RESPONSES and request is not None:
            if protocol == "anthropic":
                return ResponsesViaMessages(request, self.anthropic_max_tokens)
            if deployment.responses_api:
                return ResponsesPassThrough(request)
            return ResponsesViaChat(request, reasoning_origin(deployment))
        if api is ClientAPI.OPENAI_CHAT_COMPLETIONS:
            if protocol == "anthropic":
                return ChatViaMessages(self.anthropic_max_tokens)
            return ChatPassThrough()
        if api is ClientAPI.ANTHROPIC_MESSAGES:
            if protocol == "anthropic":
                return MessagesPassThrough()
            if request is None:
                return MessagesViaChat()
            body = request.data.body
            return MessagesViaChat(
                frozenset(tool_use_ids(body)),
                thinking=thinking_enabled(body),
                origin=reasoning_origin(deployment),
            )
        if api is ClientAPI.OPENAI_EMBEDDINGS and protocol == "openai":
            return EmbeddingsPassThrough()
        if api is ClientAPI.ANTHROPIC_COUNT_TOKENS:
            if protocol == "anthropic":
                return CountTokensPassThrough()
            return CountTokensEstimate()
        if api is ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS and request is not None:
            if protocol == "anthropic":
                return InputTokensViaMessages(request)
            if deployment.responses_api and deployment.responses_input_tokens:
                return InputTokensPassThrough(request)
            return InputTokensEstimate(request)
        raise unsupported_api(api, deployment)
