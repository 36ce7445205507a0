"""An upstream's refusal of a translated request, put in the client's terms.

A translation renames fields (a Messages request's `max_tokens` reaches an OpenAI
deployment as `max_completion_tokens`), so the upstream's refusal names a field the
client never sent. For the fields a translation renames (the tables of
docs/protocols.md), `in_client_terms` gives `param` the client's name and adds to the
message which of the client's fields the upstream's name stands for; the upstream's own
words are kept as they are (they may quote the client's data, or say that the
deployment does not take the renamed field at all, which is the operator's to fix). A
field sent under its own name with the same meaning (`temperature`, `tool_choice`, ...:
`SAME_NAMED`) keeps its `param`; a `param` naming anything else is dropped: it names a
field of the translated request.

Messages and input items are not renamed: a translation adds and merges messages (a
system prompt becomes the first, a Responses function call joins the assistant message
before it), so `messages[1]` upstream is not the client's `input[1]`. Below a renamed
field, `param` keeps its path only where both shapes are one (`stop[1]` is
`stop_sequences[1]`); elsewhere it names the client's field itself
(`response_format.json_schema.schema` is a Responses client's `text.format`, whose schema
sits elsewhere).
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
        "verbosity": "text.verbosity",
    },
    (_CHAT, _MESSAGES): {
        "max_tokens": "max_completion_tokens",
        "stop_sequences": "stop",
        "output_config.format": "response_format",
        "output_config.effort": "reasoning_effort",
        "thinking": "reasoning_effort",
        "metadata.user_id": "user",
        "tool_choice.disable_parallel_tool_use": "parallel_tool_calls",
    },
    (_RESPONSES, _MESSAGES): {
        "max_tokens": "max_output_tokens",
        "output_config.format": "text.format",
        "output_config.effort": "reasoning.effort",
        "thinking": "reasoning.effort",
        "metadata.user_id": "user",
        "tool_choice.disable_parallel_tool_use": "parallel_tool_calls",
    },
}


# (client API, upstream API) -> the fields a translation sends under the same name, with
# the same meaning: a refusal naming one names the client's own field.
_SAME_IN_BOTH = ("temperature", "top_p", "tool_choice")
SAME_NAMED: dict[tuple[ClientAPI, ClientAPI], tuple[str, ...]] = {
    (_MESSAGES, _CHAT): _SAME_IN_BOTH,
    (_RESPONSES, _CHAT): (
        *_SAME_IN_BOTH,
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
    ),
    (_CHAT, _MESSAGES): _SAME_IN_BOTH,
    (_RESPONSES, _MESSAGES): _SAME_IN_BOTH,
}


def _renames(client: ClientAPI, upstream: ClientAPI, body: Mapping[str, Any]) -> dict[str, str]:
    # Only a field the client sent: one of the same name the translation made (a
    # `tool_choice` from `parallel_tool_calls` alone) is not the client's.
    names = {name: name for name in SAME_NAMED.get((client, upstream), ()) if name in body}
    # Nor is a renamed field the client did not send (a deployment's `default_max_tokens`
    # is no `max_completion_tokens` of the client's).
    names.update(
        (name, client_name)
        for name, client_name in RENAMED.get((client, upstream), {}).items()
        if client_name.split(".", 1)[0] in body
    )
    if (client, upstream) == (_CHAT, _MESSAGES) and "max_tokens" in body:
        # A Chat client may cap with either name: the one it sent.
        names["max_tokens"] = "max_tokens"
    if (client, upstream) == (_MESSAGES, _CHAT) and "effort" in (body.get("output_config") or {}):
        names["reasoning_effort"] = "output_config.effort"  # wins over `thinking`
    if upstream is _MESSAGES and body.get("safety_identifier"):
        names["metadata.user_id"] = "safety_identifier"  # wins over `user`
    return names


# Renamed fields of the same shape on both sides: a path below one maps one for one.
_SAME_SHAPE = frozenset({"stop", "stop_sequences"})
_API_NAMES = {_CHAT: "OpenAI's Chat Completions", _MESSAGES: "Anthropic's Messages API"}


def _client_param(param: str, names: Mapping[str, str]) -> str | None:
    # The longest name first: `tool_choice.disable_parallel_tool_use` before `tool_choice`.
    for upstream_name, client_name in sorted(names.items(), key=lambda item: -len(item[0])):
        if param == upstream_name:
            return client_name
        for separator in (".", "["):
            if param.startswith(upstream_name + separator):
                if upstream_name in _SAME_SHAPE:
                    return client_name + param[len(upstream_name) :]
                return client_name
    return None


# Anthropic's refusals carry no `param`; an `invalid_request_error` about one field starts
# with its path (`max_tokens: 999999 > 64000, which is the maximum ...`,
# `thinking.budget_tokens: Input should be ...`, `messages.0.content: ...`).
_MESSAGES_FIELD_PREFIX = re.compile(r"([a-z_]+(?:\.[a-z0-9_]+)*): ")


def _messages_error_field(message: str) -> str | None:
    """The request field an Anthropic refusal's `message` starts by naming, its array
    positions in OpenAI's notation (`stop_sequences.0` is `stop_sequences[0]`), or None."""
    found = _MESSAGES_FIELD_PREFIX.match(message)
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", found.group(1)) if found else None


def _distinctive(name: str) -> bool:
    return "_" in name or "." in name


def in_client_terms(
    error: ProviderError, client: ClientAPI, upstream: ClientAPI, body: Mapping[str, Any]
) -> ProviderError:
    """`error`, an upstream's refusal of a request of the `client` API translated to the
    `upstream` API from the client's `body`, changed in place: `param` the client's field
    where the translation renamed it (for Anthropic, whose errors have no `param`, the
    field its message starts with), else None; when the message names a renamed field
    (a distinctive name: with an underscore or a dot; only the one `param` names, when
    it names one), a sentence added saying which of the client's fields it is. Returns
    the error."""
    names = _renames(client, upstream, body)
    upstream_param = error.param
    if upstream_param is None and upstream is _MESSAGES:
        upstream_param = _messages_error_field(error.message)
    error.param = _client_param(upstream_param, names) if upstream_param else None
    if error.param is not None and upstream_param is not None:
        # The field the refusal is about: only it is explained, whatever else the
        # message quotes (a property of the client's schema may share a field's name).
        names = {
            name: client_name
            for name, client_name in names.items()
            if _client_param(upstream_param, {name: client_name}) is not None
        }
    named = [
        f"'{upstream_name}' is your '{client_name}'"
        for upstream_name, client_name in names.items()
        if upstream_name != client_name
        and _distinctive(upstream_name)
        and re.search(rf"(?<![\w.]){re.escape(upstream_name)}(?!\w)", error.message)
    ]
    if named:
        api = _API_NAMES.get(upstream, upstream.value)
        error.message = (
            f"{error.message.rstrip()} (Here {', and '.join(named)}: the model's deployment "
            f"speaks {api}.)"
        )
        error.args = (error.message,)
    return error
