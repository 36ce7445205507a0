"""What a request may use at most, before it runs: its prompt tokens (counted with the
`o200k_base` BPE of OpenAI's current models, from the `bpe-openai` package, which ships
its vocabulary so no network is needed), its output cap (`max_tokens`,
`max_completion_tokens` or `max_output_tokens`, else the most of the model's default from
the price table and the `max_tokens` inference sends its Anthropic-protocol deployments
for a request without a cap, thinking budget included: `Deployment.uncapped_max_tokens`),
and the price of both. Reservations use these; the usage event settles them.

The counter reads every text of the request wherever the API puts it (Chat Completions'
`messages`, Anthropic's `system` and `messages`, the Responses API's `instructions` and
`input`, embeddings' `input`; tool definitions and structured outputs' JSON schemas as
their JSON text, property names included) so it is right for both APIs and for the
native bodies of the version 2 contract. Roles, ids and other short identifiers are
counted too, which makes the estimate a little high: safe for a reservation. Token ids
(embeddings' `input` as arrays of integers) count one token each, and a request asking
for `n` completions reserves the output cap `n` times.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from switchyard.common.governance import choices, output_cap
from switchyard.common.pricing import Price, PriceTable
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS, Deployment
from switchyard.common.tokenizer import SCHEMA_FIELDS, TokenCounter, encoding, json_text

# Per message: the tokens chat formats add around each message (OpenAI's cookbook: 3-4).
MESSAGE_OVERHEAD = 4
# An image part: a low-detail image costs 85 tokens at OpenAI; larger ones are settled.
IMAGE_TOKENS = 85
TEXT_FIELDS = ("messages", "system", "input", "instructions", "prompt")
# Definitions the model reads as JSON: tool definitions and structured outputs' schemas
# (`tokenizer.SCHEMA_FIELDS`). A schema is mostly property names and types, so these
# count as their compact JSON text, keys included, not as the strings they hold.
JSON_FIELDS = ("tools", "functions", *SCHEMA_FIELDS)
# Providers (`Deployment.provider`) whose prompt cache is written only where a request
# marks it with `cache_control` (Anthropic's Messages API, on Anthropic, Bedrock and
# Vertex AI); the others' caches are written on their own.
MARKED_CACHE_PROVIDERS = frozenset({"anthropic", "bedrock", "vertex"})
# Characters of a request's texts counted exactly (about a tenth of a second of CPU), the
# rest estimated: a reservation is settled by the real usage anyway.
EXACT_CHARS = 1_000_000
# Up to this many characters (a few milliseconds to count), a request's estimate is made
# on the event loop; a larger one in a worker thread, so that no request holds the others.
INLINE_CHARS = 32_000


def warm_up() -> None:
    """Load the tokenizer now, so the first request does not pay for it."""
    encoding().encode_ordinary("warm up")


@dataclass
class _Parts:
    """What a request's text fields hold besides strings: image parts, token ids
    (OpenAI's Completions and Embeddings take `input` as arrays of token ids), and
    Anthropic's prompt-caching markers (`cache_control`; `one_hour`: one kept an hour)."""

    images: int = 0
    token_ids: int = 0
    cache_marks: bool = False
    one_hour: bool = False

    def mark(self, cache_control: Any) -> None:
        """Note a `cache_control` marker (Anthropic's `{"type": "ephemeral", "ttl": ...}`)."""
        if isinstance(cache_control, dict):
            self.cache_marks = True
            self.one_hour = self.one_hour or cache_control.get("ttl") == "1h"


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
            parts.mark(value.get("cache_control"))  # an image block may be cached too
            return
        for key, item in value.items():
            if key == "cache_control":
                parts.mark(item)
            if key in ("type", "cache_control", "id", "tool_call_id", "tool_use_id"):
                continue
            _texts(item, out, parts)


def _prompt(body: dict[str, Any]) -> tuple[list[str], int, _Parts]:
    """A request body's texts, the tokens of the rest of its prompt (each token id it
    sends as one token, an image part as IMAGE_TOKENS, and each message's overhead), and
    what else its parts hold (its prompt-caching markers: in its texts, on its tools, or
    at its top level, Anthropic's automatic caching)."""
    texts: list[str] = []
    parts = _Parts()
    for name in TEXT_FIELDS:
        value = body.get(name)
        if value is not None:
            _texts(value, texts, parts)
    for name in JSON_FIELDS:
        value = body.get(name)
        if value is not None:
            texts.append(json_text(value))
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            parts.mark(tool.get("cache_control"))
    parts.mark(body.get("cache_control"))
    messages = body.get("messages")
    overhead = MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0
    return texts, parts.token_ids + overhead + parts.images * IMAGE_TOKENS, parts


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of a request body's texts: what counting its tokens costs (about 9
    million a second)."""
    return sum(len(text) for text in _prompt(body)[0])


def prompt_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request body (any of the supported APIs): its texts encoded, the
    first EXACT_CHARS characters exactly and the rest from samples of it
    (`tokenizer.TokenCounter`), plus the rest of the prompt (`_prompt`). Blocking: up to
    about a tenth of a second of CPU for the largest bodies."""
    return _prompt_tokens(body)[0]


def _prompt_tokens(body: dict[str, Any]) -> tuple[int, _Parts]:
    texts, counted, parts = _prompt(body)
    counter = TokenCounter(exact_chars=EXACT_CHARS)
    # All at once: the rest past the exact budget is sampled across every text.
    return counted + counter.count_all(texts), parts


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The reasoning effort an OpenAI client asks for: Chat Completions'
    `reasoning_effort`, the Responses API's `reasoning.effort`; None without one."""
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(reasoning := body.get("reasoning"), dict):
        effort = reasoning.get("effort")
    return effort if isinstance(effort, str) else None


def uncapped_output(
    model: str,
    body: dict[str, Any],
    prices: PriceTable,
    deployments: Sequence[Deployment],
    anthropic_default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
) -> int:
    """The most output tokens a request to `model` that sets no cap may produce on any of
    `deployments`: the price table's `max_output_tokens` of each (found by deployment,
    upstream model, then public model; DEFAULT_MAX_OUTPUT_TOKENS where none says: what a
    deployment of OpenAI's protocol, sent no cap, is reckoned to stop at), or the
    `max_tokens` inference sends an Anthropic-protocol one (its `default_max_tokens`,
    else `anthropic_default_max_tokens`, raised above a reasoning effort's thinking
    budget), whichever is largest."""
    effort = reasoning_effort(body)
    limits = [
        prices.max_output_tokens(
            model, deployment=d.name, upstream_model=d.model, provider=d.provider
        )
        for d in deployments
    ] or [prices.max_output_tokens(model)]
    sent = (d.uncapped_max_tokens(effort, anthropic_default_max_tokens) for d in deployments)
    return max([*limits, *(n for n in sent if n is not None)])


@dataclass(frozen=True)
class Estimate:
    """The most a request can use: tokens (input + output) and US dollars."""

    tokens: int
    cost_usd: float


def estimate(
    model: str,
    body: dict[str, Any],
    prices: PriceTable,
    *,
    embeddings: bool,
    deployments: Sequence[Deployment] = (),
    anthropic_default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
) -> Estimate:
    """The reservation for one request to `model`, served by one of `deployments` (its
    route's), whose output without a cap of its own is `uncapped_output` (given
    inference's `anthropic_default_max_tokens`): priced as inference will price it
    (`PriceTable.price` with the deployment,
    its upstream model and provider), at the dearest of them, since any may serve it; the
    public model's own price when none is given. Its input is priced at the dearest rate
    it can be billed at (`Price.most`): a prompt-cache write's where the request may
    write one (it carries `cache_control` markers, or its provider caches on its own),
    an hour's write's where a marker asks for `ttl: "1h"`. Blocking (`prompt_tokens`):
    see `estimate_without_blocking`."""
    prompt, parts = _prompt_tokens(body)
    output = (
        0
        if embeddings
        else output_cap(
            body,
            uncapped_output(model, body, prices, deployments, anthropic_default_max_tokens),
        )
        * choices(body)
    )
    candidates: list[tuple[Price | None, str | None]] = [
        (
            prices.price(model, deployment=d.name, upstream_model=d.model, provider=d.provider),
            d.provider,
        )
        for d in deployments
    ] or [(prices.price(model), None)]
    cost = max(
        (
            price.most(
                prompt,
                output,
                # Anthropic writes to its cache only where a request marks it; other
                # providers cache on their own.
                cache_write=parts.cache_marks or provider not in MARKED_CACHE_PROVIDERS,
                one_hour=parts.one_hour,
            )
            for price, provider in candidates
            if price is not None
        ),
        default=0.0,
    )
    return Estimate(tokens=prompt + output, cost_usd=cost)


async def estimate_without_blocking(
    model: str,
    body: dict[str, Any],
    prices: PriceTable,
    *,
    embeddings: bool,
    deployments: Sequence[Deployment] = (),
    anthropic_default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
) -> Estimate:
    """`estimate`, on the event loop for a body of up to INLINE_CHARS characters of text,
    in a worker thread for a larger one (counting a 40 MB body's tokens on the loop held
    every other request for seconds)."""
    run = functools.partial(
        estimate,
        model,
        body,
        prices,
        embeddings=embeddings,
        deployments=deployments,
        anthropic_default_max_tokens=anthropic_default_max_tokens,
    )
    if prompt_chars(body) <= INLINE_CHARS:
        return run()
    return await asyncio.to_thread(run)
