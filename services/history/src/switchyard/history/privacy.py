"""Metadata-only storage: what remains of a request body and a reply when a tenant has
asked history not to keep prompt or completion text (`history_tenant_settings`).

What is kept describes the request without its content: the model and scalar parameters
(temperature, max_tokens, stream, ...), how many messages there were and of which roles;
of a reply, its id, model, finish or stop reasons, status and token usage (Chat
Completions' `choices`, Anthropic's `stop_reason`, a Responses `status`, the number of
embeddings). Everything else — message contents and input items (a Responses
conversation's too), tool definitions and calls, system prompts and instructions,
thinking, metadata, end-user identifiers, embeddings input, the stop sequence that
matched — is dropped.
"""

from __future__ import annotations

from typing import Any

REDACTED_MARKER = "redacted"

# Top-level request fields that can hold prompt text or other user content.
_CONTENT_FIELDS = frozenset(
    {
        "messages",
        "input",
        "instructions",
        "prompt",
        "tools",
        "functions",
        "system",
        "response_format",
        "stop",
    }
)
# Scalars that identify the end user rather than describe the request.
_IDENTIFYING_FIELDS = frozenset({"user", "safety_identifier"})


def redact_request_body(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metadata-only form of a request body (see the module docstring); None stays None."""
    if body is None:
        return None
    kept: dict[str, Any] = {
        name: value
        for name, value in body.items()
        if name not in _CONTENT_FIELDS
        and isinstance(value, str | int | float | bool)
        and name not in _IDENTIFYING_FIELDS
    }
    messages = body.get("messages")
    if isinstance(messages, list):
        kept["message_count"] = len(messages)
        kept["message_roles"] = [
            message.get("role") for message in messages if isinstance(message, dict)
        ]
    kept[REDACTED_MARKER] = True
    return kept


def redact_response(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metadata-only form of a reply body (see the module docstring); None stays None."""
    if response is None:
        return None
    kept: dict[str, Any] = {
        name: response[name]
        for name in (
            "id",
            "object",
            "type",
            "role",
            "created",
            "model",
            "usage",
            "system_fingerprint",
            "stop_reason",
            "status",
            "created_at",
            "incomplete_details",
        )
        if name in response
    }
    choices = response.get("choices")
    if isinstance(choices, list):
        kept["choices"] = [
            {"index": choice.get("index"), "finish_reason": choice.get("finish_reason")}
            for choice in choices
            if isinstance(choice, dict)
        ]
    data = response.get("data")
    if isinstance(data, list):  # embeddings: keep how many vectors, not the vectors
        kept["data_count"] = len(data)
    kept[REDACTED_MARKER] = True
    return kept


def redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An event (as JSON-ready dict) without the content of its `data`."""
    data = payload.get("data")
    if not isinstance(data, dict):
        return payload
    data = dict(data)
    if "body" in data:
        data["body"] = redact_request_body(data["body"])
    if "response" in data:
        data["response"] = redact_response(data["response"])
    if data.get("previous_items") is not None:
        data["previous_items"] = None  # a Responses conversation's items: content
    return {**payload, "data": data}
