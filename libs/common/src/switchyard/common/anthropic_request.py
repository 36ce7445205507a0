"""What the Anthropic Messages API takes in a request, and the 400 it answers for anything
else, judged once for every part of Switchyard that must refuse as Anthropic refuses: the
provider simulator (standing in for Anthropic) and the inference service's translation of a
Messages request for a deployment that speaks another API, which would otherwise refuse the
same fault under its own field names, or take it and answer something else.

The parameters (`MessagesParameters`, `CountTokensParameters`) are pydantic `TypedDict`s of
constrained types after the Anthropic API reference ("Messages", "Count tokens"): the message
contents as typed content blocks (`text`, `image`, `document` with its `base64`, `text`,
`content`, `url` and `file` sources, `search_result`, `thinking`, `tool_use`, `tool_result`
and the server tools' blocks), `system` as a string or text blocks, `tools`, `tool_choice`,
`thinking` and `metadata`. The rules across fields follow: no message empty but a final
assistant one, no empty text block, unique tool names, every `tool_use` answered by a
`tool_result` in the next message and every `tool_result` answering one.

`check_messages_request(body)` raises `AnthropicRequestError` for the first rule broken:
its `path` is the field as Anthropic names it (`messages.0.content.1.tool_result.is_error`,
pydantic's location with the block's type, as Anthropic's own validation reports it) and
its `reason` the sentence (`Input should be a valid boolean`); `str()` of it is Anthropic's
message, `path: reason`. Only validation happens: no copy of the body is made or returned.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import ErrorDetails, PydanticCustomError

# pydantic takes TypedDicts from typing_extensions before Python 3.12.
from typing_extensions import TypedDict

__all__ = [
    "AnthropicRequestError",
    "INTERLEAVED_THINKING_BETA",
    "MESSAGES_RULES",
    "CountTokensParameters",
    "MessagesParameters",
    "RULES_ACROSS_FIELDS",
    "check_count_tokens_request",
    "check_messages_request",
    "check_system_message_placement",
    "error_of",
]


# The `anthropic-beta` value under which Anthropic takes a thinking budget at or above
# `max_tokens` (its "Extended thinking" guide, "Interleaved thinking").
INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"


class AnthropicRequestError(ValueError):
    """A request the Anthropic API refuses with 400 `invalid_request_error`. `path` is the
    field at fault as Anthropic names it (`messages.0.content.0.text.text`; empty when the
    message names none), `reason` the sentence; `str()` is Anthropic's message."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


# Strict: a string is not a number, nor "false" a boolean, as Anthropic judges them.
_STRICT = ConfigDict(strict=True)
# The thinking configuration takes no other key (Anthropic answers `Extra inputs are not
# permitted`); a tool or content block may carry fields newer than these types, which the
# API itself judges.
_CLOSED = ConfigDict(strict=True, extra="forbid")

JsonObject = dict[str, Any]
# Anthropic's ids of tool uses (its Messages reference: `^[a-zA-Z0-9_-]+$`).
ToolUseId = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")]


def _range(low: float, high: float) -> AfterValidator:
    """A bound on both sides, refused in Anthropic's words (`range: 0..1`)."""

    def within(value: float) -> float:
        if not low <= value <= high:
            raise PydanticCustomError("range", "range: {low}..{high}", {"low": low, "high": high})
        return value

    return AfterValidator(within)


def _has_non_whitespace(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("whitespace", "each stop sequence must contain non-whitespace")
    return value


def _string_or_blocks(value: Any) -> Any:
    # A string is a whole content (judged by the rules across fields); anything else must be
    # a list of blocks. Judging `str | list[...]` as a union would report both members'
    # errors under pydantic's member names (`content.str`), which Anthropic never shows.
    return [] if isinstance(value, str) else value


# --------------------------------------------------------------------------- content blocks


@with_config(_STRICT)
class _CacheControl(TypedDict, total=False):
    type: Required[Literal["ephemeral"]]
    ttl: Literal["5m", "1h"]


CacheControl = _CacheControl | None


@with_config(_STRICT)
class _TextBlock(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]
    cache_control: CacheControl
    citations: list[JsonObject] | None


@with_config(_STRICT)
class _Base64ImageSource(TypedDict, total=False):
    type: Required[Literal["base64"]]
    media_type: Required[Literal["image/jpeg", "image/png", "image/gif", "image/webp"]]
    data: Required[str]


@with_config(_STRICT)
class _UrlSource(TypedDict, total=False):
    type: Required[Literal["url"]]
    url: Required[str]


@with_config(_STRICT)
class _FileSource(TypedDict, total=False):
    type: Required[Literal["file"]]
    file_id: Required[str]


ImageSource = Annotated[_Base64ImageSource | _UrlSource | _FileSource, Field(discriminator="type")]


@with_config(_STRICT)
class _ImageBlock(TypedDict, total=False):
    type: Required[Literal["image"]]
    source: Required[ImageSource]
    cache_control: CacheControl


@with_config(_STRICT)
class _Base64PdfSource(TypedDict, total=False):
    type: Required[Literal["base64"]]
    media_type: Required[Literal["application/pdf"]]
    data: Required[str]


@with_config(_STRICT)
class _PlainTextSource(TypedDict, total=False):
    type: Required[Literal["text"]]
    media_type: Required[Literal["text/plain"]]
    data: Required[str]


TextOrImageBlock = Annotated[_TextBlock | _ImageBlock, Field(discriminator="type")]


@with_config(_STRICT)
class _ContentSource(TypedDict, total=False):
    type: Required[Literal["content"]]
    content: Required[Annotated[list[TextOrImageBlock], BeforeValidator(_string_or_blocks)]]


DocumentSource = Annotated[
    _Base64PdfSource | _PlainTextSource | _ContentSource | _UrlSource | _FileSource,
    Field(discriminator="type"),
]


@with_config(_STRICT)
class _Citations(TypedDict, total=False):
    enabled: bool


@with_config(_STRICT)
class _DocumentBlock(TypedDict, total=False):
    type: Required[Literal["document"]]
    source: Required[DocumentSource]
    title: str | None
    context: str | None
    citations: _Citations | None
    cache_control: CacheControl


@with_config(_STRICT)
class _SearchResultBlock(TypedDict, total=False):
    type: Required[Literal["search_result"]]
    source: Required[str]
    title: Required[str]
    content: Required[list[_TextBlock]]
    citations: _Citations | None
    cache_control: CacheControl


@with_config(_STRICT)
class _ThinkingBlock(TypedDict, total=False):
    type: Required[Literal["thinking"]]
    thinking: Required[str]
    signature: Required[str]


@with_config(_STRICT)
class _RedactedThinkingBlock(TypedDict, total=False):
    type: Required[Literal["redacted_thinking"]]
    data: Required[str]


@with_config(_STRICT)
class _ToolUseBlock(TypedDict, total=False):
    type: Required[Literal["tool_use"]]
    id: Required[ToolUseId]
    name: Required[Annotated[str, Field(min_length=1)]]
    input: Required[JsonObject]
    cache_control: CacheControl


@with_config(_STRICT)
class _ToolReferenceBlock(TypedDict, total=False):
    type: Required[Literal["tool_reference"]]
    tool_name: Required[str]
    cache_control: CacheControl


@with_config(_STRICT)
class _BrowserStateBlock(TypedDict, total=False):
    type: Required[Literal["browser_state"]]
    tabs: Required[list[JsonObject]]
    cache_control: CacheControl


ToolResultContent = Annotated[
    list[
        Annotated[
            _TextBlock
            | _ImageBlock
            | _DocumentBlock
            | _SearchResultBlock
            | _ToolReferenceBlock
            | _BrowserStateBlock,
            Field(discriminator="type"),
        ]
    ],
    BeforeValidator(_string_or_blocks),
]


@with_config(_STRICT)
class _ToolResultBlock(TypedDict, total=False):
    type: Required[Literal["tool_result"]]
    tool_use_id: Required[ToolUseId]
    content: ToolResultContent
    is_error: bool
    cache_control: CacheControl


@with_config(_STRICT)
class _ServerToolUseBlock(TypedDict, total=False):
    type: Required[Literal["server_tool_use", "mcp_tool_use"]]
    id: Required[str]
    name: Required[str]
    input: Required[JsonObject]
    cache_control: CacheControl


@with_config(_STRICT)
class _ServerToolResultBlock(TypedDict, total=False):
    # The results of server tools are sent back as the API returned them; their contents
    # are the API's own to judge.
    type: Required[
        Literal[
            "web_search_tool_result",
            "web_fetch_tool_result",
            "code_execution_tool_result",
            "bash_code_execution_tool_result",
            "text_editor_code_execution_tool_result",
            "tool_search_tool_result",
            "mcp_tool_result",
            "container_upload",
        ]
    ]
    cache_control: CacheControl


ContentBlock = Annotated[
    _TextBlock
    | _ImageBlock
    | _DocumentBlock
    | _SearchResultBlock
    | _ThinkingBlock
    | _RedactedThinkingBlock
    | _ToolUseBlock
    | _ToolResultBlock
    | _ServerToolUseBlock
    | _ServerToolResultBlock,
    Field(discriminator="type"),
]


@with_config(_STRICT)
class _Message(TypedDict, total=False):
    # The role's values are the caller's to judge: the simulator and the translation also
    # take a `system` message, as some clients send one (the simulator where Anthropic's
    # placement rules allow it: `check_system_message_placement`).
    role: Required[str]
    content: Required[Annotated[list[ContentBlock], BeforeValidator(_string_or_blocks)]]


def _some_messages(value: list[Any]) -> list[Any]:
    if not value:
        raise PydanticCustomError("too_short", "at least one message is required")
    return value


AnthropicMessages = Annotated[list[_Message], AfterValidator(_some_messages)]
System = Annotated[list[_TextBlock], BeforeValidator(_string_or_blocks)]

# --------------------------------------------------------------------------- parameters


@with_config(_CLOSED)
class _ThinkingEnabled(TypedDict, total=False):
    type: Required[Literal["enabled"]]
    budget_tokens: Required[Annotated[int, Field(ge=1024)]]
    display: Literal["summarized", "omitted"] | None


@with_config(_CLOSED)
class _ThinkingDisabled(TypedDict, total=False):
    type: Required[Literal["disabled"]]


@with_config(_CLOSED)
class _ThinkingAdaptive(TypedDict, total=False):
    type: Required[Literal["adaptive"]]
    display: Literal["summarized", "omitted"] | None


@with_config(_CLOSED)
class _ThinkingBetweenTools(TypedDict, total=False):
    type: Required[Literal["between_tools"]]


AnthropicThinking = Annotated[
    _ThinkingEnabled | _ThinkingDisabled | _ThinkingAdaptive | _ThinkingBetweenTools,
    Field(discriminator="type"),
]


@with_config(_STRICT)
class _Tool(TypedDict, total=False):
    # Client tools (`input_schema`) and server tools (`type`, e.g. `web_search_20250305`).
    type: str | None
    # Required of client tools (`_client_tools_named`); some server tools have none.
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]
    description: str
    input_schema: JsonObject
    strict: bool
    cache_control: CacheControl


@with_config(_STRICT)
class _ToolChoice(TypedDict, total=False):
    type: Required[Literal["auto", "any", "tool", "none"]]
    name: str
    disable_parallel_tool_use: bool


@with_config(_STRICT)
class _Metadata(TypedDict, total=False):
    user_id: Annotated[str, Field(max_length=256)] | None


@with_config(_STRICT)
class _OutputFormat(TypedDict, total=False):
    type: Required[Literal["json_schema"]]
    schema: Required[JsonObject]


@with_config(_STRICT)
class _OutputConfig(TypedDict, total=False):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None
    format: _OutputFormat | None


AnthropicModel = Annotated[str, Field(min_length=1)]


@with_config(_STRICT)
class CountTokensParameters(TypedDict, total=False):
    """`POST /v1/messages/count_tokens` (Anthropic API reference, "Count tokens")."""

    model: Required[AnthropicModel]
    messages: Required[AnthropicMessages]
    system: System
    thinking: AnthropicThinking
    tools: list[_Tool]
    output_config: _OutputConfig
    tool_choice: _ToolChoice


@with_config(_STRICT)
class MessagesParameters(TypedDict, total=False):
    """`POST /v1/messages` (Anthropic API reference, "Messages"), in the order Anthropic
    reports them."""

    model: Required[AnthropicModel]
    messages: Required[AnthropicMessages]
    system: System
    thinking: AnthropicThinking
    # 0 warms the prompt cache without generating (`MESSAGES_RULES` bound what goes with it).
    max_tokens: Required[Annotated[int, Field(ge=0)]]
    metadata: _Metadata
    stop_sequences: list[Annotated[str, AfterValidator(_has_non_whitespace)]]
    temperature: Annotated[float, _range(0, 1)]
    output_config: _OutputConfig
    tool_choice: _ToolChoice
    tools: list[_Tool]
    top_k: Annotated[int, Field(ge=0)]
    top_p: Annotated[float, _range(0, 1)]
    stream: bool


# --------------------------------------------------------------------------- error wording

# Anthropic's wording where it is not pydantic's own.
_MESSAGES = {
    "list_type": "Input should be a valid array",
    "dict_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "typed_dict_type": "Input should be an object",
}


def error_of(error: ErrorDetails) -> AnthropicRequestError:
    """The `AnthropicRequestError` Anthropic answers for one pydantic `error` of a
    parameter: the dotted field path (`thinking.enabled.budget_tokens`) and the sentence
    (`Input should be greater than or equal to 1024`)."""
    path = ".".join(str(part) for part in error["loc"])
    return AnthropicRequestError(path, _MESSAGES.get(error["type"], error["msg"]))


# --------------------------------------------------------------------------- rules across fields


def _messages_not_empty(body: dict[str, Any]) -> None:
    messages = body["messages"]
    for index, message in enumerate(messages):
        content = message["content"]
        last_assistant = index == len(messages) - 1 and message["role"] == "assistant"
        if isinstance(content, str) and content and not content.strip() and not last_assistant:
            raise AnthropicRequestError(
                "messages", "text content blocks must contain non-whitespace text"
            )
        if not content and not last_assistant:
            raise AnthropicRequestError(
                f"messages.{index}",
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        for block in content if isinstance(content, list) else ():
            if block["type"] == "text" and not block["text"]:
                raise AnthropicRequestError("messages", "text content blocks must be non-empty")
            if block["type"] == "text" and not block["text"].strip() and not last_assistant:
                raise AnthropicRequestError(
                    "messages", "text content blocks must contain non-whitespace text"
                )


def _tool_use_ids_unique(body: dict[str, Any]) -> None:
    seen: set[str] = set()
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        for position, block in enumerate(content if isinstance(content, list) else ()):
            if block["type"] == "tool_use":
                if block["id"] in seen:
                    raise AnthropicRequestError(
                        f"messages.{index}.content.{position}", "`tool_use` ids must be unique"
                    )
                seen.add(block["id"])


def _blocks_of(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message["content"]
    return (
        [block for block in content if block["type"] == kind] if isinstance(content, list) else []
    )


def _tool_uses_answered(body: dict[str, Any]) -> None:
    # Anthropic's rule: the tool uses of an assistant message are answered by tool results
    # in the next message, and a tool result answers a tool use of the message before it.
    messages = body["messages"]
    for index, message in enumerate(messages):
        asked = [block["id"] for block in _blocks_of(message, "tool_use")]
        answered = set()
        if index + 1 < len(messages):
            answered = {
                block["tool_use_id"] for block in _blocks_of(messages[index + 1], "tool_result")
            }
        missing = [tool_use_id for tool_use_id in asked if tool_use_id not in answered]
        if missing and index + 1 < len(messages):
            raise AnthropicRequestError(
                f"messages.{index + 1}",
                f"`tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message.",
            )
        previous = (
            {block["id"] for block in _blocks_of(messages[index - 1], "tool_use")}
            if index
            else set()
        )
        content = message["content"]
        for position, block in enumerate(content if isinstance(content, list) else ()):
            if block["type"] == "tool_result" and block["tool_use_id"] not in previous:
                raise AnthropicRequestError(
                    f"messages.{index}.content.{position}",
                    f"unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block['tool_use_id']}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.",
                )


def _client_tools_named(body: dict[str, Any]) -> None:
    names: set[str] = set()
    for index, tool in enumerate(body.get("tools") or ()):
        for required in ("name", "input_schema"):
            if tool.get("type") in (None, "custom") and required not in tool:
                raise AnthropicRequestError(f"tools.{index}.{required}", "Field required")
        name = tool.get("name")
        if name in names:
            raise AnthropicRequestError("tools", "Tool names must be unique.")
        if name is not None:
            names.add(name)


def _tool_choice_names_a_tool(body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    if choice["type"] == "tool" and "name" not in choice:
        raise AnthropicRequestError("tool_choice.tool.name", "Field required")
    tools = body.get("tools") or []
    if choice["type"] in ("any", "tool") and not tools:
        raise AnthropicRequestError(
            "tool_choice", "tool_choice may only be specified while providing tools."
        )
    if choice["type"] == "tool" and choice["name"] not in {tool.get("name") for tool in tools}:
        raise AnthropicRequestError(
            "tool_choice.name", f"Tool '{choice['name']}' not found in provided tools"
        )


def check_system_message_placement(body: dict[str, Any]) -> None:
    """Judge where the `role: "system"` messages of `body`'s `messages` (a body whose
    types are valid) are, by Anthropic's placement rules for mid-conversation system
    messages (Claude Opus 4.8 and later, on Anthropic's API; other models refuse any):
    each right after a user message, and the last message or followed by an assistant
    message.

    Not one of `RULES_ACROSS_FIELDS`: the translation of a Messages request for an
    OpenAI-protocol deployment sends a system message where it is, as Chat Completions
    takes one anywhere; the provider simulator, standing in for Anthropic, applies it.

    Raises:
        AnthropicRequestError: the first system message placed otherwise.
    """
    messages = body["messages"]
    for index, message in enumerate(messages):
        if message["role"] != "system":
            continue
        after_user = index > 0 and messages[index - 1]["role"] == "user"
        following = messages[index + 1]["role"] if index + 1 < len(messages) else None
        if not after_user or following not in (None, "assistant"):
            raise AnthropicRequestError(
                f"messages.{index}",
                "a system message must come right after a user message, and be the last "
                "message or be followed by an assistant message",
            )


# Each takes a body whose types are valid and raises AnthropicRequestError.
RULES_ACROSS_FIELDS = (
    _messages_not_empty,
    _tool_use_ids_unique,
    _tool_uses_answered,
    _client_tools_named,
    _tool_choice_names_a_tool,
)


def _prewarm_generates_nothing(body: dict[str, Any]) -> None:
    """`max_tokens: 0` writes the prompt cache and generates nothing (Anthropic's "Prompt
    caching", pre-warming the cache), so it cannot stream, think or follow an output
    format."""
    if body.get("max_tokens") != 0:
        return
    thinking = body.get("thinking")
    output_config = body.get("output_config")
    if body.get("stream") is True:
        conflict = "streaming"
    elif isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        conflict = "thinking"
    elif isinstance(output_config, dict) and output_config.get("format") is not None:
        conflict = "output_config.format"
    else:
        return
    raise AnthropicRequestError(
        "max_tokens",
        f"`max_tokens: 0` (pre-warming the prompt cache) cannot be used with {conflict}",
    )


# Each takes a valid `POST /v1/messages` body and raises AnthropicRequestError.
MESSAGES_RULES = (_prewarm_generates_nothing,)
_MESSAGES_ADAPTER: TypeAdapter[Any] = TypeAdapter(MessagesParameters)
_COUNT_TOKENS_ADAPTER: TypeAdapter[Any] = TypeAdapter(CountTokensParameters)


def _check(adapter: TypeAdapter[Any], body: dict[str, Any]) -> None:
    try:
        adapter.validate_python(body)
    except ValidationError as exc:
        raise error_of(exc.errors(include_url=False)[0]) from None
    for rule in RULES_ACROSS_FIELDS:
        rule(body)


def check_messages_request(body: dict[str, Any]) -> None:
    """Judge `body`, the JSON object of a `POST /v1/messages` request, as the Anthropic API
    judges it: every parameter's type and range, every content block's, then the rules
    across fields (module docstring). Keys it does not know are left to the caller.

    Raises:
        AnthropicRequestError: the first rule broken, with Anthropic's path and sentence.
    """
    _check(_MESSAGES_ADAPTER, body)
    for rule in MESSAGES_RULES:
        rule(body)


def check_count_tokens_request(body: dict[str, Any]) -> None:
    """`check_messages_request` for `POST /v1/messages/count_tokens`, which takes no
    `max_tokens` nor sampling parameters.

    Raises:
        AnthropicRequestError: the first rule broken, with Anthropic's path and sentence.
    """
    _check(_COUNT_TOKENS_ADAPTER, body)
