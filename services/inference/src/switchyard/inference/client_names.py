"""An upstream's refusal of a translated request, put in the client's terms.

A translation renames fields (a Messages request's `max_tokens` reaches an OpenAI
deployment as `max_completion_tokens`), so the upstream's refusal names a field the
client never sent: `param` and the message say `max_completion_tokens`. For the fields
a translation renames (the tables of docs/protocols.md), `in_client_terms` gives the
error the client's name in `param` and in its message; a `param` naming anything else
is dropped, since it names a field of the translated request only.

Messages and input items are not renamed: a translation adds and merges messages (a
system prompt becomes the first, a Responses function call joins the assistant message
before it), so `messages[1]` upstream is not the client's `input[1]`.

Only distinctive names are rewritten in messages (with an underscore or a dot, such as
`max_completion_tokens` or `output_config.format`): plain words such as `stop` or
`user` are left as the upstream wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from switchyard.common.events import ClientAPI
from switchyard.inference.errors import ProviderError

_CHAT = ClientAPI.OPENAI_CHAT_COMPLETIONS
_MESSAGES = ClientAPI.ANTHROPIC_MESSAGES
_RESPONSES = ClientAPI.OPENAI_RESPONSES

# (client API, upstream API) -> {upstream field: the client's field}.
RENAMED: dict[tuple[ClientAPI, ClientAPI], dict[str, str]] = {
    (_MESSAGES, _CHAT): {
        "max_completion_tokens": "max_tokens",
        "stop": "stop_sequences",
        "response_format": "output_config.format",
        "reasoning_effort": "thinking",
        "user": "metadata.user_id",
        "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    },
    (_RESPONSES, _CHAT): {
        "max_completion_tokens": "max_output_tokens",
        "response_format": "text.format",
        "reasoning_effort": "reasoning.effort",
    },
    (_CHAT, _MESSAGES): {
        "max_tokens": "max_completion_tokens",
        "stop_sequences": "stop",
        "output_config.format": "response_format",
        "thinking": "reasoning_effort",
        "metadata.user_id": "user",
    },
    (_RESPONSES, _MESSAGES): {
        "max_tokens": "max_output_tokens",
        "output_config.format": "text.format",
        "thinking": "reasoning.effort",
    },
}


def _renames(client: ClientAPI, upstream: ClientAPI, body: Mapping[str, Any]) -> dict[str, str]:
    names = dict(RENAMED.get((client, upstream), {}))
    if (client, upstream) == (_CHAT, _MESSAGES) and "max_tokens" in body:
        # A Chat client may cap with either name: the one it sent.
        names["max_tokens"] = "max_tokens"
    if (client, upstream) == (_MESSAGES, _CHAT) and "effort" in (body.get("output_config") or {}):
        names["reasoning_effort"] = "output_config.effort"  # wins over `thinking`
    return names


def _client_param(param: str, names: Mapping[str, str]) -> str | None:
    for upstream_name, client_name in names.items():
        if param == upstream_name:
            return client_name
        for separator in (".", "["):
            if param.startswith(upstream_name + separator):
                return client_name + param[len(upstream_name) :]
    return None


def _distinctive(name: str) -> bool:
    return "_" in name or "." in name


def in_client_terms(
    error: ProviderError, client: ClientAPI, upstream: ClientAPI, body: Mapping[str, Any]
) -> ProviderError:
    """`error`, an upstream's refusal of a request of the `client` API translated to the
    `upstream` API from the client's `body`, changed in place: `param` renamed to the
    client's field when the translation renamed it, else None; distinctive renamed
    field names in the message replaced by the client's. Returns the error."""
    names = _renames(client, upstream, body)
    error.param = _client_param(error.param, names) if error.param else None
    message = error.message
    for upstream_name, client_name in names.items():
        if upstream_name != client_name and _distinctive(upstream_name):
            message = re.sub(rf"(?<![\w.]){re.escape(upstream_name)}(?!\w)", client_name, message)
    if message != error.message:
        error.message = message
        error.args = (message,)
    return error
