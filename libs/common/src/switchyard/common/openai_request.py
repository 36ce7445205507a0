"""OpenAI's rules for the tool calls of a conversation, judged once for every part of
Switchyard that must refuse as OpenAI refuses: the provider simulator (standing in for
OpenAI) and the inference service's translations of Chat Completions and Responses
requests for a deployment of another API, which would otherwise refuse the same fault
under its own field names (Anthropic's `tool_use` ids, `messages.2`).

- Chat Completions: a `tool` message answers a call of the assistant message before it
  (or before the tool messages answering it), and every call is answered before the next
  other message (`tool_message_fault`).
- Responses: every `function_call` of the input has its `function_call_output`, and every
  output answers an earlier call (`function_call_fault`).

Each returns OpenAI's sentence for the first fault (the OpenAI API's own wording), or
None; the caller words the error in its own type and notation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ToolMessageFault", "function_call_fault", "tool_message_fault"]


@dataclass(frozen=True)
class ToolMessageFault:
    """A Chat Completions conversation's tool messages that do not answer their calls:
    OpenAI's `message`, and the field at fault, `messages[index].field` (`role` or
    `tool_call_id`)."""

    message: str
    index: int
    field: str


def tool_message_fault(messages: Sequence[Any]) -> ToolMessageFault | None:
    """The first fault of the tool messages of Chat Completions `messages` (the request's
    list; entries that are not objects are skipped: their shape is judged elsewhere), or
    None when every call is answered and every tool message answers one."""
    calls: list[Any] = []
    pending: list[Any] = []
    asked_at = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if not calls:
                return ToolMessageFault(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    index,
                    "role",
                )
            if call_id not in calls:
                return ToolMessageFault(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    index,
                    "tool_call_id",
                )
            pending = [pending_id for pending_id in pending if pending_id != call_id]
            continue
        if pending:
            break
        tool_calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        calls = [
            call.get("id")
            for call in (tool_calls if isinstance(tool_calls, list) else ())
            if isinstance(call, dict)
        ]
        pending, asked_at = list(calls), index
    if pending:
        return ToolMessageFault(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(str(call_id) for call_id in pending)}",
            asked_at,
            "role",
        )
    return None


def function_call_fault(items: Sequence[Any]) -> str | None:
    """OpenAI's sentence for the first `function_call` of Responses input `items` without
    its `function_call_output`, or output without an earlier call, or None. Items that are
    not objects, or whose `call_id` is not a string, are skipped: their shape is judged
    elsewhere."""
    calls: list[str] = []
    answered: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("call_id"), str):
            continue
        call_id = item["call_id"]
        if item.get("type") == "function_call":
            calls.append(call_id)
        elif item.get("type") == "function_call_output":
            if call_id not in calls:
                return f"No tool call found for function call output with call_id {call_id}."
            answered.add(call_id)
    for call_id in calls:
        if call_id not in answered:
            return f"No tool output found for function call {call_id}."
    return None
