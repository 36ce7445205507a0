"""What a request may use at most, before it runs: its prompt tokens (counted with the
`o200k_base` BPE of OpenAI's current models, from the `bpe-openai` package, which ships
its vocabulary so no network is needed), its output cap (`max_tokens`,
`max_completion_tokens` or `max_output_tokens`, else the model's default from the price
table), and the price of both. Reservations use these; the usage event settles them.

The counter reads every text of the request wherever the API puts it (Chat Completions'
`messages`, Anthropic's `system` and `messages`, the Responses API's `instructions` and
`input`, embeddings' `input`, tool definitions) so it is right for both APIs and for the
native bodies of the version 2 contract. Roles, ids and other short identifiers are
counted too, which makes the estimate a little high: safe for a reservation. Token ids
(embeddings' `input` as arrays of integers) count one token each, and a request asking for
`n` completions reserves the output cap `n` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from switchyard.common.pricing import PriceTable
from switchyard.common.tokenizer import encoding

# Per message: the tokens chat formats add around each message (OpenAI's cookbook: 3-4).
MESSAGE_OVERHEAD = 4
# An image part: a low-detail image costs 85 tokens at OpenAI; larger ones are settled.
IMAGE_TOKENS = 85
TEXT_FIELDS = ("messages", "system", "input", "instructions", "prompt", "tools", "functions")
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def warm_up() -> None:
    """Load the tokenizer now, so the first request does not pay for it."""
    encoding().encode_ordinary("warm up")


@dataclass
class _Parts:
    """What a request's text fields hold besides strings: image parts, and token ids
    (OpenAI's Completions and Embeddings take `input` as arrays of token ids)."""

    images: int = 0
    token_ids: int = 0


def _texts(value: Any, out: list[str], parts: _Parts) -> None:
    """Collect the strings in `value` into `out`; count its image parts and the integers
    it holds (token ids) in `parts`."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        parts.token_ids += 1
    elif isinstance(value, list):
        for item in value:
            _texts(item, out, parts)
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind in ("image_url", "image", "input_image"):
            parts.images += 1
            return
        for key, item in value.items():
            if key in ("type", "cache_control", "id", "tool_call_id", "tool_use_id"):
                continue
            _texts(item, out, parts)


def prompt_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request body (any of the supported APIs): its texts encoded, each
    token id it sends as one token, an image part as IMAGE_TOKENS, and each message's
    overhead."""
    texts: list[str] = []
    parts = _Parts()
    for name in TEXT_FIELDS:
        value = body.get(name)
        if value is not None:
            _texts(value, texts, parts)
    messages = body.get("messages")
    overhead = MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0
    counted = parts.token_ids + overhead + parts.images * IMAGE_TOKENS
    if not texts:
        return counted
    # One text at a time: the batch call starts a thread pool per call, far slower here.
    encode = encoding().encode_ordinary
    return counted + sum(len(encode(text)) for text in texts)


def choices(body: dict[str, Any]) -> int:
    """How many completions the request asks for (Chat Completions' `n`, 1 otherwise):
    each may use the whole output cap."""
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return n
    return 1


def output_cap(body: dict[str, Any], default: int) -> int:
    """The most output tokens the request allows: its own cap, else `default`."""
    for name in OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


@dataclass(frozen=True)
class Estimate:
    """The most a request can use: tokens (input + output) and US dollars."""

    tokens: int
    cost_usd: float


def estimate(model: str, body: dict[str, Any], prices: PriceTable, *, embeddings: bool) -> Estimate:
    """The reservation for one request to `model`."""
    prompt = prompt_tokens(body)
    output = 0 if embeddings else output_cap(body, prices.max_output_tokens(model)) * choices(body)
    price = prices.price(model)
    cost = price.cost(prompt, output) if price is not None else 0.0
    return Estimate(tokens=prompt + output, cost_usd=cost)
