"""Turns a stored request body and reply into what the request log shows: a list of turns
(role and parts), each part plain text, a tool call, a tool result, an image or other
content — never HTML. Reads OpenAI Chat Completions and Embeddings bodies and Anthropic
Messages bodies, and their replies (`chat.completion`, Anthropic `message`, embeddings
lists), whatever the API the client called. Unknown shapes fall back to their JSON text:
a stored body is whatever JSON the client sent, so every reader checks a value's type
(list, object, string) before it iterates it or looks inside it, and any JSON renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from switchyard.gateway.console.views import cut, indented_json

# What the request page shows of one request at most: a stored request may hold a million
# short messages, content blocks or tools, each a Python object to build and a template
# fragment to render on the event loop (330,000 messages took 3 to 5 s).
MAX_SHOWN_TURNS = 500
MAX_SHOWN_PARTS = 500
MAX_SHOWN_TOOLS = 500


@dataclass(frozen=True)
class Part:
    """One piece of a turn. `kind`: text, thinking, tool_call, tool_result, image or
    other; `text` is shown as plain text; `name` and `ref` label tool calls and results."""

    kind: str
    text: str = ""
    name: str | None = None
    ref: str | None = None


@dataclass
class Turn:
    """One message of a conversation as the console shows it: its role and its parts."""

    role: str
    parts: list[Part] = field(default_factory=list)


# Longest string (a tool call's arguments...) shown indented when it is JSON: one longer
# is cut by `shown` at a part's length anyway, and is shown as it was written.
INDENTED_CHARS = 20_000


def _json_text(value: Any) -> str:
    """`value` as indented JSON text; a string holding JSON (a tool call's arguments) as
    that JSON indented, unless it is longer than INDENTED_CHARS or not JSON (nesting too
    deep to read included), which is shown as it was written."""
    if isinstance(value, str):
        if len(value) > INDENTED_CHARS:
            return value
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return cast(str, value)
    return indented_json(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for optional nested fields)."""
    return value if isinstance(value, dict) else {}


def _other(value: Any) -> Part:
    return Part("other", _json_text(value))


def _image_part(block: dict[str, Any]) -> Part:
    source = block.get("image_url") or block.get("source") or {}
    where = source.get("url") if isinstance(source, dict) else source
    if isinstance(where, str) and where:
        if where.startswith("data:"):
            where = where.split(",", 1)[0] + ",…"
        return Part("image", where)
    media_type = _str(_dict(source).get("media_type"))
    return Part("image", media_type or "image")


def _document_part(block: dict[str, Any]) -> Part:
    source = block.get("source")
    label = _str(block.get("title")) or _str(_dict(source).get("url"))
    if label is None:
        label = _str(_dict(source).get("type")) or (
            _json_text(source) if source is not None else ""
        )
    return Part("other", f"document: {label}")


def _block_parts(block: Any) -> list[Part]:
    """Parts of one content block (OpenAI content part or Anthropic content block)."""
    if isinstance(block, str):
        return [Part("text", block)]
    if not isinstance(block, dict):
        return [_other(block)]
    kind = block.get("type")
    if kind in ("text", "input_text", "output_text") and isinstance(block.get("text"), str):
        return [Part("text", block["text"])]
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return [Part("thinking", block["thinking"])]
    if kind == "redacted_thinking":
        return [Part("thinking", "(redacted thinking)")]
    if kind in ("image_url", "image", "input_image"):
        return [_image_part(block)]
    if kind == "document":
        return [_document_part(block)]
    if kind in ("tool_use", "server_tool_use"):
        return [
            Part(
                "tool_call",
                _json_text(block.get("input", {})),
                name=_str(block.get("name")),
                ref=_str(block.get("id")),
            )
        ]
    if kind == "tool_result":
        texts = [part.text for part in _content_parts(block.get("content"))]
        return [Part("tool_result", "\n".join(texts), ref=_str(block.get("tool_use_id")))]
    return [_other(block)]


def _content_parts(content: Any) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", content)]
    if isinstance(content, list):
        return [part for block in content for part in _block_parts(block)]
    return [_other(content)]


def _tool_call_parts(calls: Any) -> list[Part]:
    """An OpenAI message's `tool_calls`: each a call with its function's name and
    arguments; a call (or a list) of another shape as its JSON text."""
    if calls is None:
        return []
    if not isinstance(calls, list):
        return [_other(calls)]
    parts = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            parts.append(_other(call))
            continue
        parts.append(
            Part(
                "tool_call",
                _json_text(function.get("arguments", "")),
                name=_str(function.get("name")),
                ref=_str(call.get("id")) if isinstance(call, dict) else None,
            )
        )
    return parts


def _message_turn(message: Any) -> Turn:
    if not isinstance(message, dict):
        return Turn("unknown", [_other(message)])
    role = _str(message.get("role")) or "unknown"
    parts = _content_parts(message.get("content"))
    if role == "tool":
        text = "\n".join(part.text for part in parts)
        parts = [Part("tool_result", text, ref=_str(message.get("tool_call_id")))]
    parts += _tool_call_parts(message.get("tool_calls"))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        parts.append(
            Part(
                "tool_call", _json_text(legacy.get("arguments", "")), name=_str(legacy.get("name"))
            )
        )
    elif legacy is not None:
        parts.append(_other(legacy))
    if isinstance(message.get("refusal"), str):
        parts.append(Part("text", message["refusal"]))
    return Turn(role, parts)


def iter_request_turns(body: Any) -> Iterator[Turn]:
    """The conversation a request sent, turn by turn as they are read (system prompt,
    messages, or embeddings input): a page showing the first few builds only those."""
    if not isinstance(body, dict):
        return
    if "system" in body:
        yield Turn("system", _content_parts(body["system"]))
    messages = body.get("messages")
    if isinstance(messages, list):
        yield from (_message_turn(message) for message in messages)
    elif messages is not None:
        yield Turn("messages", [_other(messages)])
    if "input" in body and "messages" not in body:
        value = body["input"]
        items = value if isinstance(value, list) else [value]
        yield Turn("input", [Part("text", _json_text(item)) for item in items])


def request_turns(body: Any) -> list[Turn]:
    """The conversation a request sent: system prompt, messages, or embeddings input."""
    return list(iter_request_turns(body))


def request_turn_count(body: Any) -> int:
    """How many turns `request_turns(body)` has, without building them."""
    if not isinstance(body, dict):
        return 0
    messages = body.get("messages")
    count = int("system" in body)
    if isinstance(messages, list):
        count += len(messages)
    elif messages is not None:
        count += 1
    return count + int("input" in body and "messages" not in body)


def response_turns(response: Any) -> list[Turn]:
    """What the reply said: each choice's message, an Anthropic message's content
    blocks, or how many embedding vectors came back."""
    if not isinstance(response, dict):
        return []
    choices = response.get("choices")
    if isinstance(choices, list):
        return [
            _message_turn(choice["message"])
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict)
            else Turn("unknown", [_other(choice)])
            for choice in choices
        ]
    if response.get("type") == "message" or isinstance(response.get("content"), list):
        role = _str(response.get("role")) or "assistant"
        return [Turn(role, _content_parts(response.get("content")))]
    if isinstance(response.get("data"), list):
        return [Turn("embeddings", [Part("other", f"{len(response['data'])} vectors")])]
    return []


def shown(
    turns: Iterable[Turn],
    part_chars: int = 20_000,
    total_chars: int = 200_000,
    *,
    count: int | None = None,
    max_turns: int = MAX_SHOWN_TURNS,
    max_parts: int = MAX_SHOWN_PARTS,
) -> list[Turn]:
    """`turns` as the request page shows them: each part's text cut at `part_chars`, at
    most `max_parts` parts a turn and `max_turns` turns, and the parts after
    `total_chars` in all left out, with a last part or turn saying how many were (a
    stored request may be tens of MB, or a million short messages). `count`: how many
    turns there are, when `turns` is an iterator (else its length)."""
    if count is None and isinstance(turns, list):
        count = len(turns)
    kept: list[Turn] = []
    left = total_chars
    for index, turn in enumerate(turns):
        if left <= 0 or index >= max_turns:
            more = f"{count - index:,}" if count is not None else "More"
            kept.append(Turn("…", [Part("other", f"{more} more turn(s) not shown here")]))
            break
        parts = []
        for part in turn.parts[:max_parts]:
            limit = min(part_chars, max(left, 0))
            if len(part.text) > limit:
                part = replace(part, text=cut(part.text, limit))
            left -= len(part.text)
            parts.append(part)
        if len(turn.parts) > max_parts:
            more_parts = len(turn.parts) - max_parts
            parts.append(Part("other", f"{more_parts:,} more part(s) not shown here"))
        kept.append(Turn(turn.role, parts))
    return kept


def declared_tools(body: Any) -> list[str]:
    """Names of the tools a request offered (OpenAI functions or Anthropic tools); a
    `tools` that is not a list, as its JSON text."""
    tools = body.get("tools") if isinstance(body, dict) else None
    if tools is None:
        return []
    if not isinstance(tools, list):
        return [_json_text(tools)]
    names = []
    for tool in tools[:MAX_SHOWN_TOOLS]:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
    if len(tools) > MAX_SHOWN_TOOLS:
        names.append(f"… {len(tools) - MAX_SHOWN_TOOLS:,} more")
    return names


def parameters(body: Any) -> dict[str, Any]:
    """The request's scalar parameters (temperature, max_tokens, stream, ...)."""
    if not isinstance(body, dict):
        return {}
    skip = {"model", "messages", "system", "tools", "input", "redacted"}
    return {
        name: value
        for name, value in body.items()
        if name not in skip and isinstance(value, str | int | float | bool)
    }


def finish_reasons(response: Any) -> list[str]:
    """Why a stored reply ended: each choice's `finish_reason` (Chat Completions) or the
    `stop_reason` (Messages), as text; empty for a reply of another shape."""
    reply = _dict(response)
    choices = reply.get("choices")
    reasons = [
        _json_text(choice.get("finish_reason"))
        if not isinstance(choice.get("finish_reason"), str)
        else choice["finish_reason"]
        for choice in (choices if isinstance(choices, list) else [])
        if isinstance(choice, dict) and choice.get("finish_reason") is not None
    ]
    stop = reply.get("stop_reason")
    if not reasons and stop:
        reasons = [stop if isinstance(stop, str) else _json_text(stop)]
    return reasons
