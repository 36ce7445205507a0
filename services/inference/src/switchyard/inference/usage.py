"""Token usage read from an upstream's own reply, in `TokenUsage`'s units (see its
docstring in `switchyard.common.events`): input counts every input token, cached ones
included; cache reads and writes and reasoning tokens are parts of input and output.

- OpenAI (`usage` of a chat completion, its stream's last chunk, or an embeddings list):
  `prompt_tokens` already counts cached tokens, of which `prompt_tokens_details.cached_tokens`
  were read from the cache; OpenAI reports no cache writes.
  `completion_tokens_details.reasoning_tokens` is the reasoning part of the output.
- Anthropic (`usage` of a message, of `message_start` and `message_delta`): `input_tokens`
  excludes the cache; `cache_read_input_tokens` and `cache_creation_input_tokens` are
  added to it, `cache_creation.ephemeral_1h_input_tokens` of the writes kept an hour.
  `output_tokens_details.thinking_tokens` is the reasoning part.
- OpenAI's Responses API (`usage` of a response): `input_tokens` counts cached tokens, of
  which `input_tokens_details.cached_tokens` were read from the cache and
  `cache_write_tokens` written to it; `output_tokens_details.reasoning_tokens` is the
  reasoning part.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from switchyard.common.events import MAX_TOKEN_COUNT, ClientAPI, TokenUsage


def _count(value: Any) -> int:
    """A count an upstream reported: a positive integer, at most MAX_TOKEN_COUNT (an absurd
    count is read as the most a count may say, never failing the reply); else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_TOKEN_COUNT)
    return 0


def _sum(*counts: int) -> int:
    return min(sum(counts), MAX_TOKEN_COUNT)


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return _count(details.get(name)) if isinstance(details, dict) else 0


def openai_usage(usage: Any) -> TokenUsage:
    """TokenUsage of an OpenAI Chat Completions `usage` object (absent or malformed:
    zeros): `prompt_tokens` counts cached tokens too, `prompt_tokens_details.cached_tokens`
    of them read from the cache and `cache_write_tokens` written to it."""
    if not isinstance(usage, dict):
        return TokenUsage()
    output = _count(usage.get("completion_tokens"))
    return TokenUsage(
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=output,
        cache_read_input_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        cache_creation_input_tokens=_detail(usage, "prompt_tokens_details", "cache_write_tokens"),
        reasoning_tokens=min(
            output, _detail(usage, "completion_tokens_details", "reasoning_tokens")
        ),
    )


def anthropic_usage(usage: Any) -> TokenUsage:
    """TokenUsage of an Anthropic `usage` object (absent or malformed: zeros)."""
    if not isinstance(usage, dict):
        return TokenUsage()
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    output = _count(usage.get("output_tokens"))
    return TokenUsage(
        input_tokens=_sum(_count(usage.get("input_tokens")), cache_read, cache_write),
        output_tokens=output,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        # Anthropic's breakdown of the writes by how long they are kept.
        cache_creation_1h_input_tokens=min(
            cache_write, _detail(usage, "cache_creation", "ephemeral_1h_input_tokens")
        ),
        reasoning_tokens=min(output, _detail(usage, "output_tokens_details", "thinking_tokens")),
    )


def add_usage(first: TokenUsage, second: TokenUsage) -> TokenUsage:
    """The tokens of two upstream calls together."""
    return TokenUsage(
        input_tokens=_sum(first.input_tokens, second.input_tokens),
        output_tokens=_sum(first.output_tokens, second.output_tokens),
        cache_read_input_tokens=_sum(first.cache_read_input_tokens, second.cache_read_input_tokens),
        cache_creation_input_tokens=_sum(
            first.cache_creation_input_tokens, second.cache_creation_input_tokens
        ),
        cache_creation_1h_input_tokens=_sum(
            first.cache_creation_1h_input_tokens, second.cache_creation_1h_input_tokens
        ),
        reasoning_tokens=_sum(first.reasoning_tokens, second.reasoning_tokens),
    )


def responses_usage(usage: Any) -> TokenUsage:
    """TokenUsage of a Responses API `usage` object (absent or malformed: zeros):
    `input_tokens` counts cached tokens too (`input_tokens_details.cached_tokens` of them
    read from the cache, `cache_write_tokens` written to it), reasoning is a part of
    `output_tokens`."""
    if not isinstance(usage, dict):
        return TokenUsage()
    output = _count(usage.get("output_tokens"))
    return TokenUsage(
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=output,
        cache_read_input_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
        cache_creation_input_tokens=_detail(usage, "input_tokens_details", "cache_write_tokens"),
        reasoning_tokens=min(output, _detail(usage, "output_tokens_details", "reasoning_tokens")),
    )


# A run of white space: BPE tokenizers (o200k, Claude's) take one as a token or a few,
# whatever its length, so it counts as one character here.
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def _chars(text: str) -> int:
    """Characters of `text` as the 4-characters-a-token estimate reads them: a run of
    white space as one. Counted whole, 400,000 spaces of padding made 100,000 tokens,
    billed for a request cut short, where the gateway's count reserved 3,000."""
    if "  " not in text and "\n\n" not in text and "\t" not in text and "\r" not in text:
        return len(text)  # (a search in C: most texts hold no such run)
    return len(_WHITESPACE_RUN.sub(" ", text))


def _text_length(content: Any) -> int:
    """Characters of a message's `content` (a string, or parts with `text`), as `_chars`
    reads them."""
    if isinstance(content, str):
        return _chars(content)
    if isinstance(content, list):
        return sum(
            _chars(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


# The APIs whose calls are billed by their tokens (token counting is free).
BILLED_APIS = frozenset(
    {
        ClientAPI.OPENAI_CHAT_COMPLETIONS,
        ClientAPI.ANTHROPIC_MESSAGES,
        ClientAPI.OPENAI_RESPONSES,
        ClientAPI.OPENAI_EMBEDDINGS,
    }
)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size of a client's request `body` (4 characters a token, plus a few
    per message or item), for a call the upstream reported no usage of (stopped before
    it, or a server that ignores `stream_options.include_usage`): Chat Completions' and
    Anthropic's `messages` and `system`, the Responses API's `instructions` and `input`
    items, embeddings' `input` (strings, or token ids counted one each)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_length(m.get("content")) for m in messages if isinstance(m, dict))
        chars += _text_length(body.get("system"))
        return math.ceil(chars / 4) + 3 * len(messages)
    given = body.get("input")
    chars = _text_length(body.get("instructions"))
    if isinstance(given, str):
        return math.ceil((_chars(given) + chars) / 4)
    if not isinstance(given, list):
        return math.ceil(chars / 4)
    tokens = 0
    for item in given:
        if isinstance(item, str):
            tokens += math.ceil(_chars(item) / 4)
        elif isinstance(item, list):  # an embedding input of token ids
            tokens += len(item)
        elif isinstance(item, dict):  # a Responses item: a message, a call or its output
            chars += _text_length(item.get("content")) + _text_length(item.get("output"))
            arguments = item.get("arguments")
            chars += len(arguments) if isinstance(arguments, str) else 0
            tokens += 3
        else:  # a token id
            tokens += 1
    return tokens + math.ceil(chars / 4)


# Reply fields whose text a model generated (the signature of a thinking block, ids and
# the usage itself are not counted).
_GENERATED_TEXT = frozenset(
    {"text", "content", "arguments", "thinking", "reasoning_content", "refusal", "input"}
)


def _generated_chars(value: Any, key: str | None = None) -> int:
    """Characters of generated text in `value`, found under the field `key`."""
    if isinstance(value, str):
        return len(value) if key in _GENERATED_TEXT else 0
    if isinstance(value, list):
        return sum(_generated_chars(item) for item in value)
    if isinstance(value, dict):
        if key == "input":  # a tool call's arguments, as Anthropic gives them: an object
            return len(orjson.dumps(value))
        return sum(_generated_chars(item, name) for name, item in value.items() if name != "usage")
    return 0


def delta_chars(delta: Any) -> int:
    """Characters of generated text in the `delta` of one client stream event that is a
    content delta: a Responses `*.delta` event's string, or the `text`, `thinking` or
    `partial_json` (a tool call's arguments) of a Messages `content_block_delta`'s object;
    0 for anything else (a signature, a citation)."""
    if isinstance(delta, str):
        return len(delta)
    if isinstance(delta, dict):
        return sum(
            len(value)
            for name in ("text", "thinking", "partial_json")
            if isinstance(value := delta.get(name), str)
        )
    return 0


def estimate_streamed_tokens(chars: int, deltas: int) -> int:
    """The output tokens of a stream whose upstream reported none, from the `chars` of
    generated text its `deltas` content deltas carried: 4 characters a token, as
    `estimate_output_tokens` counts a whole reply, and never fewer than a token a delta."""
    return max(deltas, math.ceil(chars / 4))


def estimate_output_tokens(reply: dict[str, Any]) -> int:
    """A rough size of what a model generated in a whole (not streamed) `reply` of any
    API (4 characters a token): the text, thinking, refusals and tool call arguments of
    Chat Completions' `choices`, Anthropic's `content` blocks and the Responses API's
    `output` items, for a reply whose server reported no usage."""
    return math.ceil(_generated_chars(reply) / 4)
