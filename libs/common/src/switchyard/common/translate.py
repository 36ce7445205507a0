"""Translation between OpenAI's Chat Completions and Anthropic's Messages shapes.

Pure functions and small stateful stream converters over plain dicts (what `orjson`
gives), never SDK models: they run on every request that crosses APIs, so they must not
parse or validate anything twice. Used in two places:

- the inference service, to call Anthropic deployments with an OpenAI-format request
  (`openai_request_to_anthropic`, `anthropic_response_to_openai`,
  `AnthropicToOpenAIStream`);
- the gateway's `/v1/messages`, to accept Anthropic-format requests, send them through
  the pipeline in OpenAI format, and answer in Anthropic's shape
  (`anthropic_request_to_openai`, `openai_response_to_anthropic`,
  `OpenAIToAnthropicStream`, `anthropic_sse`).

`CompletionAccumulator` assembles a streamed reply (OpenAI chunks) into the complete
`chat.completion` object, e.g. for history.

What has no equivalent on the other side is dropped rather than refused when it only
tunes generation (OpenAI's `seed`, `logit_bias`, penalties; Anthropic's `top_k`,
`thinking`), and refused with `TranslationError` when dropping it would silently change
the answer (`n > 1`, audio input, server-side tools, custom tools).
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson

__all__ = [
    "DEFAULT_ANTHROPIC_MAX_TOKENS",
    "AnthropicToOpenAIStream",
    "CompletionAccumulator",
    "OpenAIToAnthropicStream",
    "TranslationError",
    "anthropic_request_to_openai",
    "anthropic_response_to_openai",
    "anthropic_sse",
    "anthropic_stop_reason",
    "openai_finish_reason",
    "openai_request_to_anthropic",
    "openai_response_to_anthropic",
]

# Anthropic requires max_tokens; OpenAI requests often leave it out.
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096

_FINISH_BY_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON_BY_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class TranslationError(ValueError):
    """A request that cannot be expressed in the other API; the client should get 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def openai_finish_reason(stop_reason: str | None) -> str | None:
    """OpenAI's `finish_reason` for an Anthropic `stop_reason`."""
    if stop_reason is None:
        return None
    return _FINISH_BY_STOP_REASON.get(stop_reason, "stop")


def anthropic_stop_reason(finish_reason: str | None) -> str | None:
    """Anthropic's `stop_reason` for an OpenAI `finish_reason`."""
    if finish_reason is None:
        return None
    return _STOP_REASON_BY_FINISH.get(finish_reason, "end_turn")


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments (a JSON string in OpenAI) as Anthropic's `input` object."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text_of(content: Any) -> str:
    """The text of a string or a list of text parts/blocks (other parts are ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            value = part.get("refusal") if kind == "refusal" else part.get("text")
            if kind in ("text", "refusal") and isinstance(value, str):
                texts.append(value)
    return "".join(texts)


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# =========================================================================== requests


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI Chat Completions request."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            messages.append({"role": "system", "content": text})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be an array.", "messages")
    for index, message in enumerate(raw_messages):
        messages.extend(_anthropic_message_to_openai(message, index))

    result: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        result["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        result["stop"] = list(body["stop_sequences"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            result[name] = body[name]
    if body.get("stream"):
        result["stream"] = True
        # The Anthropic stream ends with usage; ask for it.
        result["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        result["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        result["tools"] = [_anthropic_tool_to_openai(tool, i) for i, tool in enumerate(tools)]
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, dict):
        choice = _anthropic_tool_choice_to_openai(tool_choice)
        if choice is not None:
            result["tool_choice"] = choice
        if tool_choice.get("disable_parallel_tool_use") and tools:
            result["parallel_tool_calls"] = False
    return result


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise TranslationError("System blocks must be text blocks.", f"system.{index}")
            texts.append(block.get("text") or "")
        return "\n\n".join(text for text in texts if text)
    raise TranslationError("'system' must be a string or an array of text blocks.", "system")


def _anthropic_image_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError("Image blocks need a 'source'.", where)
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        raise TranslationError(
            f"Image source type {source.get('type')!r} cannot be sent to this model.", where
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _anthropic_document_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media_type = source.get("media_type", "application/pdf")
        return {
            "type": "file",
            "file": {
                "filename": block.get("title") or "document.pdf",
                "file_data": f"data:{media_type};base64,{source.get('data', '')}",
            },
        }
    if isinstance(source, dict) and source.get("type") == "text":
        return {"type": "text", "text": source.get("data", "")}
    raise TranslationError("This document source cannot be sent to this model.", where)


def _tool_result_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for index, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif isinstance(block, dict) and block.get("type") == "image":
                # Tool messages take text only in OpenAI: describe rather than drop silently.
                parts.append({"type": "text", "text": "[image]"})
            else:
                raise TranslationError(
                    "Tool results may contain text and images only.", f"{where}.content.{index}"
                )
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts
    raise TranslationError("Tool result content must be a string or blocks.", where)


def _anthropic_message_to_openai(message: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise TranslationError("Each message must be an object.", where)
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise TranslationError("Message roles must be 'user' or 'assistant'.", f"{where}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError("Message content must be a string or an array.", f"{where}.content")

    if role == "assistant":
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for position, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": block.get("id") or _new_id("call_"),
                        "type": "function",
                        "function": {
                            "name": block.get("name", ""),
                            "arguments": _json_dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # OpenAI has no way to send reasoning back
            else:
                raise TranslationError(
                    f"Assistant content blocks of type {kind!r} cannot be sent to this model.",
                    f"{where}.content.{position}",
                )
        result: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if tool_calls:
            result["tool_calls"] = tool_calls
        elif result["content"] is None:
            result["content"] = ""
        return [result]

    # user: tool results become tool messages (first, right after the assistant's calls)
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        block_where = f"{where}.content.{position}"
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_anthropic_image_to_openai(block, block_where))
        elif kind == "document":
            parts.append(_anthropic_document_to_openai(block, block_where))
        elif kind == "tool_result":
            result_content = _tool_result_content(block.get("content"), block_where)
            if block.get("is_error") and isinstance(result_content, str):
                result_content = f"Error: {result_content}" if result_content else "Error"
            tool_messages.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": result_content,
                }
            )
        else:
            raise TranslationError(
                f"User content blocks of type {kind!r} cannot be sent to this model.",
                block_where,
            )
    messages = tool_messages
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            messages.append({"role": "user", "content": parts[0]["text"]})
        else:
            messages.append({"role": "user", "content": parts})
    elif not tool_messages:
        messages.append({"role": "user", "content": ""})
    return messages


def _anthropic_tool_to_openai(tool: Any, index: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(
            f"Server tools ({kind!r}) cannot be used with this model.", f"tools.{index}"
        )
    function: dict[str, Any] = {
        "name": tool.get("name", ""),
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _anthropic_tool_choice_to_openai(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise TranslationError(f"Unknown tool_choice type {kind!r}.", "tool_choice")


def openai_request_to_anthropic(
    body: dict[str, Any], *, default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS
) -> dict[str, Any]:
    """An OpenAI Chat Completions request as an Anthropic Messages request.

    System and developer messages, wherever they are, become the top-level `system`
    (joined by blank lines); consecutive messages of the same role are merged, as
    Anthropic requires alternating turns; tool messages become `tool_result` blocks.
    `temperature` is clamped to Anthropic's 0..1 range."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("'n' greater than 1 is not supported by this model.", "n")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be an array.", "messages")

    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(raw_messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise TranslationError("Each message must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system_parts.append(text)
            continue
        if role == "user":
            blocks = _openai_user_blocks(message.get("content"), where)
            turn_role = "user"
        elif role == "assistant":
            blocks = _openai_assistant_blocks(message, where)
            turn_role = "assistant"
        elif role == "tool":
            blocks = [_openai_tool_result_block(message, where)]
            turn_role = "user"
        else:
            raise TranslationError(f"Message role {role!r} is not supported.", f"{where}.role")
        if not blocks:
            continue  # Anthropic refuses empty turns
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})

    for turn in turns:
        # Tool results must open a user turn; a plain string is the compact form.
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
        if len(turn["content"]) == 1 and turn["content"][0].get("type") == "text":
            turn["content"] = turn["content"][0]["text"]

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    result: dict[str, Any] = {
        "model": body.get("model"),
        "messages": turns,
        "max_tokens": max_tokens if max_tokens is not None else default_max_tokens,
    }
    if system_parts:
        result["system"] = "\n\n".join(system_parts)
    stop = body.get("stop")
    if isinstance(stop, str):
        result["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        result["stop_sequences"] = list(stop)
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        result["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if body.get("top_p") is not None:
        result["top_p"] = body["top_p"]
    if body.get("user"):
        result["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        result["stream"] = True

    tools = body.get("tools")
    if tools:
        result["tools"] = [_openai_tool_to_anthropic(tool, i) for i, tool in enumerate(tools)]
        choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
            if choice["type"] == "none":
                choice.pop("disable_parallel_tool_use")
        if choice is not None:
            result["tool_choice"] = choice

    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            result["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return result


def _parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL, or None."""
    if not url.startswith("data:"):
        return None
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64":
        data = base64.b64encode(data.encode()).decode()
    return media_type or "application/octet-stream", data


def _openai_user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("Message content must be a string or an array.", f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        part_where = f"{where}.content.{position}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise TranslationError("image_url needs a 'url'.", part_where)
            data_url = _parse_data_url(url)
            if data_url is not None:
                source = {"type": "base64", "media_type": data_url[0], "data": data_url[1]}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
        elif kind == "file":
            file = part.get("file") or {}
            data_url = _parse_data_url(file.get("file_data") or "")
            if data_url is None:
                raise TranslationError(
                    "Only inline files (file_data) can be sent to this model.", part_where
                )
            blocks.append(
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": data_url[0], "data": data_url[1]},
                }
            )
        else:
            raise TranslationError(
                f"Content parts of type {kind!r} cannot be sent to this model.", part_where
            )
    return blocks


def _openai_assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls = [*calls, {"id": None, "type": "function", "function": legacy}]
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise TranslationError(
                "Only function tool calls can be sent to this model.",
                f"{where}.tool_calls.{position}",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    return blocks


def _openai_tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id") or "",
    }
    if isinstance(content, str):
        result["content"] = content
    elif isinstance(content, list):
        result["content"] = [
            {"type": "text", "text": _text_of([part])}
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
    elif content is not None:
        raise TranslationError("Tool message content must be text.", f"{where}.content")
    return result


def _openai_tool_to_anthropic(tool: Any, index: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise TranslationError("Only function tools can be used with this model.", f"tools.{index}")
    function = tool.get("function") or {}
    result: dict[str, Any] = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        result["description"] = function["description"]
    if function.get("strict") is not None:
        result["strict"] = function["strict"]
    return result


def _openai_tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    raise TranslationError("This tool_choice cannot be used with this model.", "tool_choice")


# =========================================================================== responses


def _openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI usage from Anthropic usage (prompt tokens include cache reads and writes)."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_read + cache_write
    completion = usage.get("output_tokens") or 0
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read:
        result["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return result


def _anthropic_usage(usage: Any) -> dict[str, Any]:
    """Anthropic usage from OpenAI usage (cached prompt tokens as cache reads)."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = usage.get("prompt_tokens") or 0
    result: dict[str, Any] = {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    if cached:
        result["cache_read_input_tokens"] = cached
    return result


def anthropic_response_to_openai(message: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic `message` as an OpenAI `chat.completion` for the public `model`."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": _json_dumps(block.get("input") or {}),
                    },
                }
            )
    content = "".join(texts)
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": message.get("id") or _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": openai_finish_reason(message.get("stop_reason")) or "stop",
            }
        ],
        "usage": _openai_usage(message.get("usage")),
    }


def openai_response_to_anthropic(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI `chat.completion` (its first choice) as an Anthropic `message`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    refusal = message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason = anthropic_stop_reason(choice.get("finish_reason")) or "end_turn"
    if not text and isinstance(refusal, str) and refusal:
        stop_reason = "refusal"
    return {
        "id": completion.get("id") or _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _anthropic_usage(completion.get("usage")),
    }


# =========================================================================== streaming


def anthropic_sse(event: dict[str, Any]) -> bytes:
    """One Anthropic stream event as a Server-Sent Event (`event:` line and `data:` line)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class OpenAIToAnthropicStream:
    """Turns OpenAI `chat.completion.chunk` dicts into Anthropic stream events.

    `feed(chunk)` returns the events the chunk produces (the first call also returns
    `message_start`); `finish()` closes the stream with `message_delta` (stop reason and
    usage) and `message_stop`. Usage comes from the final usage chunk
    (`stream_options.include_usage`) or from `finish(input_tokens=, output_tokens=)`,
    which wins. Only the first choice is translated (Anthropic has no `n`)."""

    def __init__(self, model: str, *, message_id: str | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.message_id = message_id
        self.input_tokens = input_tokens
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.stop_reason: str | None = None
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # ("text", index) or ("tool", tool index)
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_call index -> block index

    def _start(self, chunk: dict[str, Any] | None) -> list[dict[str, Any]]:
        self._started = True
        if self.message_id is None:
            chunk_id = chunk.get("id") if chunk else None
            self.message_id = chunk_id if isinstance(chunk_id, str) else _new_id("msg_")
        return [
            {
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
                },
            }
        ]

    def _close_block(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        kind, key = self._open
        index = key if kind == "text" else self._tool_blocks[key]
        self._open = None
        return [{"type": "content_block_stop", "index": index}]

    def _open_block(self, block: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        events = self._close_block()
        index = self._next_index
        self._next_index += 1
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        return index, events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if self._finished:
            return []
        events = [] if self._started else self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            anthropic_usage = _anthropic_usage(usage)
            self.input_tokens = anthropic_usage["input_tokens"]
            self.output_tokens = anthropic_usage["output_tokens"]
            self.cache_read_tokens = anthropic_usage.get("cache_read_input_tokens", 0)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._open is None or self._open[0] != "text":
                    index, opened = self._open_block({"type": "text", "text": ""})
                    events += opened
                    self._open = ("text", index)
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": self._open[1],
                        "delta": {"type": "text_delta", "text": text},
                    }
                )
            for call in delta.get("tool_calls") or ():
                events += self._tool_delta(call)
            finish = choice.get("finish_reason")
            if finish:
                self.stop_reason = anthropic_stop_reason(finish)
                events += self._close_block()
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = call.get("index", 0)
        function = call.get("function") or {}
        if key not in self._tool_blocks:
            index, events = self._open_block(
                {
                    "type": "tool_use",
                    "id": call.get("id") or _new_id("toolu_"),
                    "name": function.get("name") or "",
                    "input": {},
                }
            )
            self._tool_blocks[key] = index
            self._open = ("tool", key)
        # Arguments of a call whose block is no longer open (interleaved parallel calls)
        # still go to the block they belong to: Anthropic blocks cannot be reopened.
        arguments = function.get("arguments")
        if arguments:
            events.append(
                {
                    "type": "content_block_delta",
                    "index": self._tool_blocks[key],
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }
            )
        return events

    def finish(
        self, *, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> list[dict[str, Any]]:
        if self._finished:
            return []
        events = [] if self._started else self._start(None)
        events += self._close_block()
        self._finished = True
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.cache_read_tokens:
            usage["cache_read_input_tokens"] = self.cache_read_tokens
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
                "usage": usage,
            }
        )
        events.append({"type": "message_stop"})
        return events


class AnthropicToOpenAIStream:
    """Turns Anthropic stream events (dicts) into OpenAI `chat.completion.chunk` dicts.

    The first chunk carries the assistant role; text deltas become `content`, tool-use
    blocks become `tool_calls` (id and name first, then argument pieces); `message_delta`
    gives the chunk with `finish_reason`; with `include_usage`, `message_stop` gives the
    final usage chunk with empty `choices`. `error` events raise nothing here: the caller
    handles them. Token counts so far are in `input_tokens` / `output_tokens`."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self._tool_index_by_block: dict[int, int] = {}
        self._started = False

    @property
    def input_tokens(self) -> int:
        return _openai_usage(self.usage)["prompt_tokens"]

    @property
    def output_tokens(self) -> int:
        return self.usage.get("output_tokens") or 0

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def _role_chunk(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if isinstance(message.get("id"), str):
                self.id = message["id"]
            self.usage = dict(message.get("usage") or {})
            return self._role_chunk()
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            chunks = self._role_chunk()
            if block.get("type") == "text" and block.get("text"):
                chunks.append(self._chunk({"content": block["text"]}))
            elif block.get("type") == "tool_use":
                tool_index = len(self._tool_index_by_block)
                self._tool_index_by_block[event.get("index", 0)] = tool_index
                arguments = _json_dumps(block["input"]) if block.get("input") else ""
                chunks.append(
                    self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": tool_index,
                                    "id": block.get("id", ""),
                                    "type": "function",
                                    "function": {
                                        "name": block.get("name", ""),
                                        "arguments": arguments,
                                    },
                                }
                            ]
                        }
                    )
                )
            return chunks
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            chunks = self._role_chunk()
            if delta_type == "text_delta" and delta.get("text"):
                chunks.append(self._chunk({"content": delta["text"]}))
            elif delta_type == "input_json_delta" and delta.get("partial_json"):
                tool_index = self._tool_index_by_block.get(event.get("index", 0))
                if tool_index is not None:
                    chunks.append(
                        self._chunk(
                            {
                                "tool_calls": [
                                    {
                                        "index": tool_index,
                                        "function": {"arguments": delta["partial_json"]},
                                    }
                                ]
                            }
                        )
                    )
            return chunks
        if kind == "message_delta":
            usage = event.get("usage") or {}
            for name, value in usage.items():
                if value is not None:
                    self.usage[name] = value  # cumulative totals: overwrite
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason is None:
                return []
            self.finish_reason = openai_finish_reason(stop_reason)
            return [*self._role_chunk(), self._chunk({}, self.finish_reason)]
        if kind == "message_stop" and self.include_usage:
            return [
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _openai_usage(self.usage),
                }
            ]
        return []  # ping, content_block_stop, thinking and citation deltas, unknown types


class CompletionAccumulator:
    """Assembles OpenAI chunks into the `chat.completion` they stream (every choice,
    content, refusal, tool calls, finish reasons, usage)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None
        self.deltas = 0  # content and tool-argument pieces: a token estimate without usage
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        if self.id is None:
            self.id = chunk.get("id")
            self.created = chunk.get("created")
            self.model = chunk.get("model")
        if chunk.get("system_fingerprint"):
            self.system_fingerprint = chunk["system_fingerprint"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = {
                    "role": "assistant",
                    "content": [],
                    "refusal": [],
                    "tool_calls": {},
                    "finish_reason": None,
                }
            delta = choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
                self.deltas += 1
            if delta.get("refusal"):
                state["refusal"].append(delta["refusal"])
                self.deltas += 1
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(state["tool_calls"], call)
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    def _add_tool_call(self, calls: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        state = calls.get(index)
        if state is None:
            state = calls[index] = {"id": None, "type": "function", "name": [], "arguments": []}
        if call.get("id"):
            state["id"] = call["id"]
        if call.get("type"):
            state["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            state["name"].append(function["name"])
        if function.get("arguments"):
            state["arguments"].append(function["arguments"])
            self.deltas += 1

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                "content": "".join(state["content"]) or None,
                "refusal": "".join(state["refusal"]) or None,
            }
            if state["tool_calls"]:
                message["tool_calls"] = [
                    {
                        "id": call["id"] or _new_id("call_"),
                        "type": call["type"],
                        "function": {
                            "name": "".join(call["name"]),
                            "arguments": "".join(call["arguments"]),
                        },
                    }
                    for _, call in sorted(state["tool_calls"].items())
                ]
            elif message["content"] is None and message["refusal"] is None:
                message["content"] = ""
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": state["finish_reason"] or "stop",
                }
            )
        result: dict[str, Any] = {
            "id": self.id or _new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": self.created or int(time.time()),
            "model": self.model,
            "choices": choices,
        }
        if self.system_fingerprint:
            result["system_fingerprint"] = self.system_fingerprint
        if self.usage is not None:
            result["usage"] = self.usage
        return result
