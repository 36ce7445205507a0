"""Turns a stored request body and reply into what the request log shows: a list of turns
(role and parts), each part plain text, a tool call, a tool result, an image or other
content — never HTML. Reads OpenAI Chat Completions and Embeddings bodies and Anthropic
Messages bodies, and their replies (`chat.completion`, Anthropic `message`, embeddings
lists), whatever the API the client called. Unknown shapes fall back to their JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast


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


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return cast(str, value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _block_parts(block: Any) -> list[Part]:
    """Parts of one content block (OpenAI content part or Anthropic content block)."""
    if isinstance(block, str):
        return [Part("text", block)]
    if not isinstance(block, dict):
        return [Part("other", _json_text(block))]
    kind = block.get("type")
    if kind in ("text", "input_text", "output_text"):
        return [Part("text", str(block.get("text", "")))]
    if kind == "thinking":
        return [Part("thinking", str(block.get("thinking", "")))]
    if kind == "redacted_thinking":
        return [Part("thinking", "(redacted thinking)")]
    if kind in ("image_url", "image", "input_image"):
        source = block.get("image_url") or block.get("source") or {}
        where = source.get("url") if isinstance(source, dict) else source
        if isinstance(where, str) and where.startswith("data:"):
            where = where.split(",", 1)[0] + ",…"
        return [Part("image", str(where or source.get("media_type", "") or "image"))]
    if kind == "document":
        source = block.get("source") or {}
        label = block.get("title") or (source.get("url") if isinstance(source, dict) else None)
        return [Part("other", f"document: {label or source.get('type', '')}")]
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
        content = block.get("content")
        texts = [part.text for part in _content_parts(content)] if content is not None else []
        return [Part("tool_result", "\n".join(texts), ref=_str(block.get("tool_use_id")))]
    return [Part("other", _json_text(block))]


def _content_parts(content: Any) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", content)]
    if isinstance(content, list):
        return [part for block in content for part in _block_parts(block)]
    return [Part("other", _json_text(content))]


def _message_turn(message: Any) -> Turn:
    if not isinstance(message, dict):
        return Turn("unknown", [Part("other", _json_text(message))])
    role = str(message.get("role") or "unknown")
    parts = _content_parts(message.get("content"))
    if role == "tool":
        text = "\n".join(part.text for part in parts)
        parts = [Part("tool_result", text, ref=_str(message.get("tool_call_id")))]
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict):
            function = call.get("function") or {}
            parts.append(
                Part(
                    "tool_call",
                    _json_text(function.get("arguments", "")),
                    name=_str(function.get("name")),
                    ref=_str(call.get("id")),
                )
            )
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        parts.append(
            Part(
                "tool_call", _json_text(legacy.get("arguments", "")), name=_str(legacy.get("name"))
            )
        )
    if isinstance(message.get("refusal"), str):
        parts.append(Part("text", message["refusal"]))
    return Turn(role, parts)


def request_turns(body: dict[str, Any] | None) -> list[Turn]:
    """The conversation a request sent: system prompt, messages, or embeddings input."""
    if not isinstance(body, dict):
        return []
    turns: list[Turn] = []
    if "system" in body:
        turns.append(Turn("system", _content_parts(body["system"])))
    for message in body.get("messages") or []:
        turns.append(_message_turn(message))
    if "input" in body and "messages" not in body:
        value = body["input"]
        items = value if isinstance(value, list) else [value]
        turns.append(Turn("input", [Part("text", _json_text(item)) for item in items]))
    return turns


def response_turns(response: dict[str, Any] | None) -> list[Turn]:
    """What the reply said: each choice's message, an Anthropic message's content
    blocks, or how many embedding vectors came back."""
    if not isinstance(response, dict):
        return []
    if isinstance(response.get("choices"), list):
        turns = []
        for choice in response["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                turns.append(_message_turn(choice["message"]))
        return turns
    if response.get("type") == "message" or isinstance(response.get("content"), list):
        return [Turn(str(response.get("role") or "assistant"), _content_parts(response["content"]))]
    if isinstance(response.get("data"), list):
        return [Turn("embeddings", [Part("other", f"{len(response['data'])} vectors")])]
    return []


def declared_tools(body: dict[str, Any] | None) -> list[str]:
    """Names of the tools a request offered (OpenAI functions or Anthropic tools)."""
    names = []
    for tool in (body or {}).get("tools") or []:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
    return names


def parameters(body: dict[str, Any] | None) -> dict[str, Any]:
    """The request's scalar parameters (temperature, max_tokens, stream, ...)."""
    skip = {"model", "messages", "system", "tools", "input", "redacted"}
    return {
        name: value
        for name, value in (body or {}).items()
        if name not in skip and isinstance(value, str | int | float | bool)
    }
